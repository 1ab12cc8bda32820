"""The engine as a real process (`python -m proxy_engine`) on real sockets, with real upstreams."""
import hashlib
import http.client
import json
import os
import subprocess
import time

import pytest

from tests.live import RedisServer, free_port, start_upstream, started_engines, stop_upstream, write_doc
from tests.live import engine_process  # noqa: F401 (kept importable from here, where it used to live)


def doc_for(revision, port, extra_hosts=()):
    return {
        "revision": revision,
        "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
        "proxy_hosts": [{
            "id": 1, "domains": ["app.example.test"],
            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}],
            "timeouts": {"connect": 2.0, "response": 5.0}, "max_body_size": None, "locations": [],
        }, *extra_hosts],
        "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [], "certificates": [],
    }


@pytest.fixture
def upstreams():
    servers = [start_upstream("a"), start_upstream("b")]
    yield servers
    for server in servers:
        stop_upstream(server)


@pytest.fixture
def engine_for(tmp_path):
    yield from started_engines(tmp_path)


def test_it_proxies_keeps_alive_streams_and_reloads(upstreams, engine_for):
    a, b = upstreams
    dead = free_port()
    engine = engine_for(doc_for(1, a.server_address[1], extra_hosts=[{
        "id": 2, "domains": ["dead.example.test"],
        "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": dead, "weight": 1}]}]),
        "--poll-interval", "0.2")

    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=10)
    first, data = engine.request("GET", "/one?x=1", conn=conn)
    sock = conn.sock
    seen = json.loads(data)
    assert first.status == 200 and seen["server"] == "a" and seen["path"] == "/one?x=1"
    assert seen["headers"]["host"] == "app.example.test"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    second, data = engine.request("GET", "/two", conn=conn)
    assert conn.sock is sock, "the client connection was not kept alive"
    assert json.loads(data)["peer_port"] == seen["peer_port"], "the upstream connection was not reused"

    response, data = engine.request("GET", "/chunked", conn=conn)
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert data == b"".join((f"piece-{i};" * 100).encode() for i in range(5))

    body = os.urandom(300_000)
    response, data = engine.request("POST", "/upload", body=body, conn=conn)
    assert json.loads(data) == {"length": len(body), "sha": hashlib.sha256(body).hexdigest()}
    response, data = engine.request("POST", "/upload", body=iter([b"abc", b"defg"]), conn=conn,
                                    headers={"Transfer-Encoding": "chunked"}, chunked=True)
    assert json.loads(data)["length"] == 7

    response, data = engine.request("GET", "/", host="dead.example.test")
    assert response.status == 502 and b"connection refused" in data

    write_doc(engine.doc_path, doc_for(2, b.server_address[1]))
    engine.wait_for(lambda r, d: r.status == 200 and json.loads(d)["server"] == "b", timeout=5)
    response, _ = engine.request("GET", "/", host="dead.example.test")
    assert response.status == 404

    broken = doc_for(3, b.server_address[1])
    broken["proxy_hosts"][0]["upstreams"][0]["port"] = 70000
    write_doc(engine.doc_path, broken)
    time.sleep(0.5)
    response, data = engine.request("GET", "/")
    assert response.status == 200 and json.loads(data)["server"] == "b"
    log = engine.stop()
    assert "port: 70000 out of range" in log


def test_a_redis_message_reloads_without_waiting_for_the_poll(upstreams, engine_for, tmp_path):
    import redis

    server = RedisServer(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        a, b = upstreams
        # The poll is a minute away: only the Redis message can bring the change in time.
        engine = engine_for(doc_for(1, a.server_address[1]), "--poll-interval", "60", "--redis-url", server.url)
        deadline = time.monotonic() + 10
        while client.pubsub_numsub("gatehouse:config")[0][1] < 1:
            assert time.monotonic() < deadline, "the engine never subscribed to gatehouse:config"
            time.sleep(0.05)
        write_doc(engine.doc_path, doc_for(2, b.server_address[1]))
        client.publish("gatehouse:config", b"2")
        engine.wait_for(lambda r, d: r.status == 200 and json.loads(d)["server"] == "b", timeout=5)
    finally:
        server.stop()


def test_workers_share_the_port_and_sigterm_stops_them_all(upstreams, engine_for):
    a, _ = upstreams
    engine = engine_for(doc_for(1, a.server_address[1]), "--workers", "2")
    engine.wait_for(lambda r, d: r.status == 200)
    workers = subprocess.run(["pgrep", "-P", str(engine.proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    engine.stop()
    assert engine.proc.returncode == 0
    time.sleep(0.2)
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
