"""runproxy records upstream errors in the database: the request id of a 502 leads to its
cause. An unresolvable upstream answers 502 for its own host and blocks nothing else."""
import json
import re
import time

import pytest
from django.db import connection

from manager.hosts.models import ProxyHost, UpstreamError
from tests.live import free_port, runproxy, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def make_host(domain, host, port):
    proxy = ProxyHost(domains=[domain], upstreams=[{"scheme": "http", "host": host, "port": port, "weight": 1}])
    proxy.full_clean()
    proxy.save()
    return proxy


def recorded(request_id, timeout=10.0):
    """The UpstreamError row of `request_id`, once the engine's sink has flushed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UpstreamError.objects.filter(request_id=request_id).first()
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no UpstreamError recorded for request id {request_id}")


@pytest.fixture
def upstream():
    server = start_upstream("ok")
    yield server
    stop_upstream(server)


def test_502s_are_recorded_with_the_request_id_the_client_saw(upstream, tmp_path):
    refused_port = free_port()
    working = make_host("app.example.test", "127.0.0.1", upstream.server_address[1])
    refused = make_host("refused.example.test", "127.0.0.1", refused_port)
    unknown = make_host("unknown.example.test", "does-not-exist.invalid", 80)
    proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data")
    try:
        proxy.wait_for(lambda r, b: r.status == 200 and json.loads(b)["server"] == "ok")

        response, body = proxy.request("GET", "/x", host="refused.example.test")
        request_id = response.getheader("X-Request-Id")
        assert response.status == 502 and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", request_id)
        assert f"Request id {request_id}".encode() in body and b"connection refused" in body
        assert str(refused_port).encode() not in body and b"127.0.0.1" not in body

        response, body = proxy.request("GET", "/", host="unknown.example.test",
                                       headers={"Accept": "application/json"})
        assert response.status == 502
        answer = json.loads(body)
        assert answer["error"] == "the upstream host name was not found"
        assert answer["request_id"] == response.getheader("X-Request-Id")
        assert b"does-not-exist" not in body

        response, body = proxy.request("GET", "/still-fine")
        assert response.status == 200 and json.loads(body)["path"] == "/still-fine"
        assert response.getheader("X-Request-Id") not in (None, request_id, answer["request_id"])

        row = recorded(request_id)
        assert row.proxy_host == refused and row.status == 502
        assert row.upstream == f"127.0.0.1:{refused_port}"
        assert row.cause == "connection refused by the upstream service" and row.detail
        row = recorded(answer["request_id"])
        assert row.proxy_host == unknown and row.upstream == "does-not-exist.invalid:80"
        assert row.cause == "the upstream host name was not found"
        assert not working.upstream_errors.exists()
    finally:
        proxy.stop()
