"""The real `runproxy` reports upstream health: a host with active checks and one refusing
upstream shows it "down" (and the live one "up") in `EngineNode.upstream_health` well before
the 30 s heartbeat, and "up" again once it answers."""
import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from django.db import connection

from manager.hosts.models import EngineNode, ProxyHost
from tests.live import Upstream, free_port, runproxy, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def health_of(host, timeout=15.0, predicate=lambda report: True):
    deadline = time.monotonic() + timeout
    report = None
    while time.monotonic() < deadline:
        nodes = list(EngineNode.live())
        if nodes:
            report = (nodes[0].upstream_health or {}).get(str(host.pk))
            if report and predicate(report):
                return report
        time.sleep(0.1)
    raise AssertionError(f"no such health report; last: {report!r}")


def test_runproxy_reports_upstream_health_soon_after_a_flip(tmp_path):
    alive = start_upstream("alive")
    dead_port = free_port()
    host = ProxyHost.objects.create(
        domains=["app.example.test"],
        upstreams=[{"scheme": "http", "host": "127.0.0.1", "port": alive.server_address[1], "weight": 1},
                   {"scheme": "http", "host": "127.0.0.1", "port": dead_port, "weight": 1}],
        health_check={"path": "/health", "interval": 0.2, "timeout": 0.2, "expect": [200, 399], "healthy": 1,
                      "unhealthy": 2})
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data", poll_interval=0.3)
    revived = None
    try:
        proxy.wait_for(lambda r, b: r.status == 200 and json.loads(b)["server"] == "alive")
        started = time.monotonic()
        report = health_of(host, predicate=lambda r: r.get(f"127.0.0.1:{dead_port}", {}).get("state") == "down")
        assert time.monotonic() - started < 10          # a flip is reported at once, not at the 30 s heartbeat
        assert report[f"127.0.0.1:{alive.server_address[1]}"]["state"] == "up"
        assert "connection refused" in report[f"127.0.0.1:{dead_port}"]["reason"]
        assert all(proxy.request("GET", "/")[0].status == 200 for _ in range(6))
        revived = ThreadingHTTPServer(("127.0.0.1", dead_port), Upstream)
        revived.daemon_threads = True
        revived.name = "revived"
        threading.Thread(target=revived.serve_forever, daemon=True).start()
        health_of(host, predicate=lambda r: r.get(f"127.0.0.1:{dead_port}", {}).get("state") == "up")
        proxy.wait_for(lambda r, b: r.status == 200 and json.loads(b)["server"] == "revived")
    finally:
        proxy.stop()
        stop_upstream(alive)
        if revived is not None:
            stop_upstream(revived)
