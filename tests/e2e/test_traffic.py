"""The real `runproxy` counts each proxy host's requests and errors and writes them to
`hosts.HostTraffic` (a 1 s bucket here instead of 10 s); the overview charts them."""
import json
import os
import sys
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Sum

from manager.hosts.models import HostTraffic, ProxyHost
from tests.live import EngineProcess, free_port, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_requests_through_the_engine_become_host_traffic_rows(client, tmp_path):
    upstream = start_upstream("ok")
    port = upstream.server_address[1]
    ready = ProxyHost.objects.create(domains=["app.example.test"], upstreams=[
        {"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}])
    counted = ProxyHost.objects.create(domains=["counted.example.test"], upstreams=[
        {"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}])
    broken = ProxyHost.objects.create(domains=["broken.example.test"], upstreams=[
        {"scheme": "http", "host": "127.0.0.1", "port": free_port(), "weight": 1}])
    http_port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
           "GATEHOUSE_DATA_DIR": str(tmp_path / "engine-data"), "REDIS_URL": "",
           "DJANGO_SETTINGS_MODULE": "manager.settings"}
    proxy = EngineProcess([sys.executable, "manage.py", "runproxy", "--http-port", str(http_port),
                           "--https-port", "0", "--bind", "127.0.0.1", "--workers", "1",
                           "--poll-interval", "0.3", "--traffic-interval", "1"], http_port, env)
    try:
        proxy.wait_for(lambda r, b: r.status == 200 and json.loads(b)["server"] == "ok")
        for _ in range(5):
            assert proxy.request("GET", "/x", host="counted.example.test")[0].status == 200
        for _ in range(3):
            assert proxy.request("GET", "/x", host="broken.example.test")[0].status == 502

        def totals(host):
            return HostTraffic.objects.filter(host=host).aggregate(r=Sum("requests"), e=Sum("errors"))

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if totals(counted) == {"r": 5, "e": 0} and totals(broken) == {"r": 3, "e": 3}:
                break
            time.sleep(0.2)
        assert totals(counted) == {"r": 5, "e": 0} and totals(broken) == {"r": 3, "e": 3}
        assert HostTraffic.objects.filter(host=ready).exists()
        assert HostTraffic.objects.filter(host=counted).first().node.endswith(f":{proxy.proc.pid}")

        admin = get_user_model().objects.create_user("admin", password="a-long-passphrase-42", is_superuser=True)
        client.force_login(admin)
        panel = client.get("/?panel=traffic", HTTP_HX_REQUEST="true").content.decode()
        assert "counted.example.test" in panel and "broken.example.test" in panel
    finally:
        proxy.stop()
        stop_upstream(upstream)
