"""The real `runproxy` reports its status to the database: the host status page goes from
"pending" to "applied" once the engine serves a saved change, and shows the engine's error,
naming the host, when the engine refuses a row."""
import json
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from manager.dashboard.models import HostChange
from manager.hosts.models import EngineNode, ProxyHost
from manager.hosts.revision import current_revision
from tests.live import runproxy, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_for_panel(client, host, text, timeout=15.0):
    deadline = time.monotonic() + timeout
    panel = ""
    while time.monotonic() < deadline:
        panel = client.get(f"/hosts/{host.pk}/status/?panel=status", HTTP_HX_REQUEST="true").content.decode()
        if text in panel:
            return panel
        time.sleep(0.1)
    raise AssertionError(f"the status panel never showed {text!r}; last:\n{panel}")


def test_status_page_follows_the_engine_from_pending_to_applied_and_shows_its_error(client, tmp_path):
    upstream = start_upstream("ok")
    admin = get_user_model().objects.create_user("admin", password="a-long-passphrase-42", is_superuser=True)
    client.force_login(admin)
    first = ProxyHost.objects.create(domains=["app.example.test"], upstreams=[
        {"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}])
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data", poll_interval=0.3)
    try:
        proxy.wait_for(lambda r, b: r.status == 200 and json.loads(b)["server"] == "ok")
        wait_for_panel(client, first, "applied")
        node = EngineNode.live().get()
        assert node.served_revision == current_revision() and not node.last_error

        second = ProxyHost.objects.create(domains=["second.example.test"], upstreams=[
            {"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}])
        assert HostChange.objects.get(proxy_host=second).revision == current_revision()
        # Right after the commit the engine cannot have loaded it yet (it polls every 0.3 s).
        panel = client.get(f"/hosts/{second.pk}/status/?panel=status", HTTP_HX_REQUEST="true").content.decode()
        assert "pending" in panel or "applied" in panel
        wait_for_panel(client, second, "applied")
        proxy.wait_for(lambda r, b: r.status == 200, host="second.example.test")

        second.upstreams = [{"scheme": "http", "host": "127.0.0.1", "port": 70000, "weight": 1}]
        second.save()                      # no full_clean: a row the engine's parser refuses
        panel = wait_for_panel(client, second, "badge err")
        assert "upstreams[0].port" in panel and "did not apply" in panel
        node = EngineNode.live().get()
        assert node.error_hosts == [second.pk] and node.last_error_at is not None
        assert "applied" in client.get(f"/hosts/{first.pk}/status/?panel=status", HTTP_HX_REQUEST="true").content.decode()
        assert proxy.request("GET", "/", host="second.example.test")[0].status == 200   # last good snapshot

        second.upstreams = [{"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}]
        second.save()
        wait_for_panel(client, second, "applied")
        assert not EngineNode.live().get().last_error
    finally:
        proxy.stop()
        stop_upstream(upstream)
    # A worker that stopped cleanly removed its status row: a restarted engine's old worker
    # does not keep the pages "pending" until it counts as gone.
    assert not EngineNode.objects.exists()
