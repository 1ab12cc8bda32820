"""Upstream health (proxy_engine.health): active probes and their thresholds, passive windows and
cooldown on a fake clock, the registry across snapshot swaps and its report, the status hook;
then the engine as a real process with several real upstreams over HTTP/1.1 and HTTP/2."""
import http.client
import json
import socket
import ssl
import threading
import time

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxy_engine.errors import ConnectRefused
from proxy_engine.health import HealthRegistry
from proxy_engine.reload import ConfigWatcher
from proxy_engine.snapshot import parse_snapshot
from proxy_engine.upstream import UpstreamPool
from tests.engine.support import document
from tests.live import (engine_process, free_port, issue_certificate, start_upstream, started_engines, stop_upstream,
                        write_doc)


def checked_doc(revision=1, n=2, check=None, passive=None, host_id=1):
    doc = document(revision=revision)
    host = doc["proxy_hosts"][0]
    host["id"] = host_id
    host["upstreams"] = [{"scheme": "http", "host": f"10.0.3.{i + 1}", "port": 80, "weight": 1} for i in range(n)]
    host["locations"] = []
    host["load_balancing"] = {"policy": "round_robin", "health_check": check, "passive": passive}
    return doc


CHECK = {"path": "/health", "interval": 5.0, "timeout": 1.0, "expect": [200, 299], "healthy": 2, "unhealthy": 2}


class Rig:
    def __init__(self, doc):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)
        self.pool = UpstreamPool(self.reactor)
        self.changes = []
        self.registry = HealthRegistry(self.reactor, self.pool, on_change=lambda: self.changes.append(1))
        self.swap(doc)

    def swap(self, doc):
        self.snapshot = parse_snapshot(doc)
        self.registry.update(self.snapshot)

    def state(self, host):
        return next(s for s in self.registry.states.values() if s.upstream.host == host)

    def answer(self, index, status_line):
        """Complete probe connection `index` and answer it; returns the request the probe sent."""
        _, _, attempt, _, _ = self.reactor.tcpClients[index]
        proto = attempt.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        sent = transport.value()
        proto.dataReceived(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        return sent, transport

    def refuse(self, index):
        self.reactor.tcpClients[index][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def probes(self, host):
        return [i for i, c in enumerate(self.reactor.tcpClients) if c[0] == host]


def test_probes_start_at_once_repeat_every_interval_and_send_a_get_with_host():
    rig = Rig(checked_doc(check=CHECK))
    rig.reactor.advance(0)
    assert sorted(c[0] for c in rig.reactor.tcpClients) == ["10.0.3.1", "10.0.3.2"]
    sent, transport = rig.answer(rig.probes("10.0.3.1")[0], b"HTTP/1.1 200 OK")
    assert sent.startswith(b"GET /health HTTP/1.1\r\nHost: 10.0.3.1:80\r\n") and b"Connection: close" in sent
    assert transport.disconnecting                                  # closed once the status is read ...
    assert rig.pool.idle == {}                                      # ... and never pooled
    rig.reactor.advance(5)
    assert len(rig.probes("10.0.3.1")) == 2


def test_a_non_ascii_check_path_is_sent_percent_encoded():
    from proxy_engine.health import request_target
    assert request_target("/santé?x=1") == b"/sant%C3%A9?x=1"
    rig = Rig(checked_doc(n=1, check={**CHECK, "path": "/état"}))
    rig.reactor.advance(0)
    sent, _ = rig.answer(0, b"HTTP/1.1 200 OK")
    assert sent.startswith(b"GET /%C3%A9tat HTTP/1.1\r\n")


def test_unhealthy_consecutive_failures_take_it_down_and_healthy_successes_bring_it_back():
    rig = Rig(checked_doc(n=1, check=CHECK))
    state = rig.state("10.0.3.1")
    rig.reactor.advance(0)
    assert state.up and state.reason == "not checked yet"        # up until the first result
    rig.answer(rig.probes("10.0.3.1")[-1], b"HTTP/1.1 503 Service Unavailable")
    assert state.up                                                 # 1 of 2 failures
    rig.reactor.advance(5)
    rig.answer(rig.probes("10.0.3.1")[-1], b"HTTP/1.1 200 OK")      # success resets the failure run
    rig.reactor.advance(5)
    rig.refuse(rig.probes("10.0.3.1")[-1])
    assert state.up
    rig.reactor.advance(5)
    rig.answer(rig.probes("10.0.3.1")[-1], b"HTTP/1.1 404 Not Found")
    assert not state.up and rig.changes == [1]
    assert state.since == rig.reactor.seconds() and "status 404" in state.reason
    rig.reactor.advance(5)
    rig.answer(rig.probes("10.0.3.1")[-1], b"HTTP/1.1 204 No Content")
    assert not state.up
    rig.reactor.advance(5)
    rig.answer(rig.probes("10.0.3.1")[-1], b"HTTP/1.1 299 Fine")
    assert state.up and len(rig.changes) == 2
    report = rig.registry.report()["1"]["10.0.3.1:80"]
    assert report == {"state": "up", "since": rig.reactor.seconds(), "reason": "health check passed 2 times"}


def test_a_silent_upstream_fails_the_check_after_its_timeout():
    rig = Rig(checked_doc(check={**CHECK, "unhealthy": 1}))
    state = rig.state("10.0.3.2")
    rig.reactor.advance(0)
    index = rig.probes("10.0.3.2")[0]
    proto = rig.reactor.tcpClients[index][2].buildProtocol(None)
    proto.makeConnection(StringTransport())
    rig.reactor.advance(0.99)
    assert state.up
    rig.reactor.advance(0.02)
    assert not state.up and "no answer within 1s" in state.reason


def test_passive_failures_within_the_window_mark_down_for_the_cooldown():
    rig = Rig(checked_doc(passive={"failures": 3, "window": 10.0, "cooldown": 30.0}))
    state = rig.state("10.0.3.1")
    assert rig.reactor.tcpClients == []                              # passive only: no probes
    state.exchange_failed(ConnectRefused())
    rig.reactor.advance(6)
    state.exchange_failed(ConnectRefused())
    rig.reactor.advance(6)                                           # the first fell out of the window
    state.exchange_failed(ConnectRefused())
    assert state.up
    state.exchange_failed(ConnectRefused())
    assert not state.up and "3 failed requests within 10s: connection refused" in state.reason
    rig.reactor.advance(29.9)
    assert not state.up
    rig.reactor.advance(0.2)
    assert state.up and "cooldown" in state.reason and len(rig.changes) == 2


def test_active_down_stays_down_after_a_passive_cooldown():
    rig = Rig(checked_doc(check={**CHECK, "unhealthy": 1}, passive={"failures": 1, "window": 10, "cooldown": 3}))
    state = rig.state("10.0.3.1")
    rig.reactor.advance(0)
    state.exchange_failed(ConnectRefused())
    assert not state.up
    rig.refuse(rig.probes("10.0.3.1")[-1])
    rig.reactor.advance(3.5)
    assert not state.up


def test_state_survives_a_swap_that_keeps_the_host_and_checks_of_removed_hosts_stop():
    rig = Rig(checked_doc(check={**CHECK, "unhealthy": 1}))
    rig.reactor.advance(0)
    rig.refuse(rig.probes("10.0.3.1")[0])
    state = rig.state("10.0.3.1")
    assert not state.up
    changed = checked_doc(revision=2, check={**CHECK, "unhealthy": 1})
    changed["proxy_hosts"][0]["websockets"] = False                 # another change on the host
    rig.swap(changed)
    assert rig.state("10.0.3.1") is state and not state.up
    before = len(rig.reactor.tcpClients)
    rig.swap(checked_doc(revision=3, n=1, check={**CHECK, "unhealthy": 1}))   # 10.0.3.2 removed
    assert [s.upstream.host for s in rig.registry.states.values()] == ["10.0.3.1"]
    rig.reactor.advance(5)
    assert [c[0] for c in rig.reactor.tcpClients[before:]] == ["10.0.3.1"]
    rig.swap(checked_doc(revision=4, n=1))                           # checks switched off
    assert rig.registry.states == {} and rig.registry.report() == {}
    pending = [c for c in rig.reactor.getDelayedCalls() if c.active()]
    assert all("_run_check" not in repr(c.func) for c in pending)


def test_the_report_names_every_checked_host_and_the_swap_is_idempotent():
    doc = checked_doc(check=CHECK)
    doc["proxy_hosts"].append({**checked_doc(host_id=9, passive={})["proxy_hosts"][0], "domains": ["b.example.test"]})
    doc["proxy_hosts"].append({**checked_doc(host_id=10)["proxy_hosts"][0], "domains": ["c.example.test"]})
    rig = Rig(doc)
    report = rig.registry.report()
    assert set(report) == {"1", "9"} and set(report["9"]) == {"10.0.3.1:80", "10.0.3.2:80"}
    assert report["1"]["10.0.3.1:80"]["state"] == "up"
    states = dict(rig.registry.states)
    rig.registry.update(rig.snapshot)
    assert rig.registry.states == states


def test_a_health_flip_sends_a_status_report_soon_but_not_a_flood():
    from twisted.internet import defer

    reactor = MemoryReactorClock()
    reports = []
    holder = {"doc": checked_doc(check={**CHECK, "unhealthy": 1, "healthy": 1})}
    pool = UpstreamPool(reactor)
    registry = HealthRegistry(reactor, pool)
    watcher = ConfigWatcher(reactor, lambda: holder["doc"], lambda: 1, registry.update,
                            run_in_thread=lambda f, *a: defer.maybeDeferred(f, *a),
                            on_status=lambda *a: reports.append(a), health=registry.report)
    registry.on_change = watcher.health_changed
    watcher.start()
    assert len(reports) == 1 and reports[0][3]["1"]["10.0.3.1:80"]["state"] == "up"
    reactor.advance(2)
    reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    reactor.advance(0)
    assert len(reports) == 2 and reports[-1][3]["1"]["10.0.3.1:80"]["state"] == "down"
    reactor.tcpClients[1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))   # second flip at once
    reactor.advance(0)
    assert len(reports) == 2                                         # waits for the delay
    reactor.advance(1.0)
    assert len(reports) == 3 and reports[-1][3]["1"]["10.0.3.2:80"]["state"] == "down"
    watcher.stop()


# -- the engine as a process, real upstreams -----------------------------------------------------

def engine_doc(revision, ports, check=None, passive=None, policy="round_robin", sticky=None, tls=None):
    host = {
        "id": 1, "domains": ["app.example.test"], "max_body_size": None, "locations": [],
        "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": p, "weight": 1} for p in ports],
        "timeouts": {"connect": 2.0, "response": 5.0},
        "load_balancing": {"policy": policy, "health_check": check, "passive": passive, "sticky": sticky},
    }
    doc = {"revision": revision, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
           "proxy_hosts": [host], "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
           "certificates": []}
    if tls is not None:
        host["ssl"] = {"certificate": "app", "force_https": False, "http2": True, "hsts": False}
        doc["certificates"] = [tls]
    return doc


FAST_CHECK = {"path": "/health", "interval": 0.2, "timeout": 0.5, "expect": [200, 399], "healthy": 1, "unhealthy": 2}


class Backends:
    """Real upstream servers named a, b, c...; each can be stopped and started on its port."""

    def __init__(self, names):
        self.servers = {name: start_upstream(name) for name in names}
        self.ports = {name: s.server_address[1] for name, s in self.servers.items()}

    def stop(self, name):
        stop_upstream(self.servers.pop(name))

    def start(self, name):
        from http.server import ThreadingHTTPServer

        from tests.live import Upstream
        server = ThreadingHTTPServer(("127.0.0.1", self.ports[name]), Upstream)
        server.daemon_threads = True
        server.name = name
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[name] = server

    def close(self):
        for name in list(self.servers):
            self.stop(name)


@pytest.fixture
def backends():
    made = []

    def make(*names):
        b = Backends(names)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def engine(tmp_path):
    yield from started_engines(tmp_path, "--poll-interval", "0.2")


def served_by(engine, n, headers=None, method="GET"):
    names = []
    conn = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=10)
    for _ in range(n):
        response, data = engine.request(method, "/", conn=conn, headers=headers)
        assert response.status == 200, (response.status, data)
        names.append(json.loads(data)["server"])
    conn.close()
    return names


def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_engine_round_robin_skips_a_killed_upstream_after_checks_and_takes_it_back(backends, engine):
    b = backends("a", "b", "c")
    proc = engine(engine_doc(1, b.ports.values(), check=FAST_CHECK))
    assert sorted(served_by(proc, 6)) == ["a", "a", "b", "b", "c", "c"]
    b.stop("b")
    time.sleep(1.0)                                   # two failed checks at 0.2 s
    names = served_by(proc, 12)                       # no errors: b is skipped (or retried elsewhere)
    assert "b" not in names and set(names) == {"a", "c"}
    for _ in range(6):                                # POSTs are never retried: only skipping b saves them
        response, data = proc.request("POST", "/", body=b"x")
        assert response.status == 200, data
    b.start("b")
    until(lambda: "b" in served_by(proc, 3))


def test_engine_passive_marking_and_retry_give_zero_client_errors_with_a_refusing_upstream(backends, engine):
    b = backends("a", "c")
    dead = free_port()
    ports = [b.ports["a"], dead, b.ports["c"]]
    proc = engine(engine_doc(1, ports, passive={"failures": 1, "window": 10.0, "cooldown": 30.0}))
    names = served_by(proc, 9)                        # the refusing one is retried elsewhere, then skipped
    assert set(names) == {"a", "c"}
    for _ in range(6):                                # dead is passively down: not even tried
        response, data = proc.request("POST", "/", body=b"x")
        assert response.status == 200, data


def test_engine_does_not_retry_a_post_and_answers_502_when_all_are_down(backends, engine):
    b = backends("a")
    dead1, dead2 = free_port(), free_port()
    proc = engine(engine_doc(1, [dead1, b.ports["a"]]))
    statuses = [proc.request("POST", "/", body=b"payload")[0].status for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502]   # the refused POSTs were not sent to "a"
    assert [proc.request("GET", "/")[0].status for _ in range(4)] == [200] * 4     # GETs are retried
    write_doc(proc.doc_path, engine_doc(2, [dead1, dead2]))
    until(lambda: proc.request("GET", "/")[0].status == 502)
    response, data = proc.request("POST", "/", body=b"payload")
    assert response.status == 502 and b"connection refused" in data
    response, data = proc.request("GET", "/")         # retried on the other, which refuses too
    assert response.status == 502 and b"connection refused" in data
    write_doc(proc.doc_path, engine_doc(3, [dead1, dead2], check=FAST_CHECK))
    until(lambda: b"no healthy upstream" in proc.request("GET", "/")[1], timeout=10)
    response, data = proc.request("GET", "/", headers={"Accept": "application/json"})
    assert response.status == 502 and json.loads(data)["error"] == "no healthy upstream"


def test_engine_sticky_cookie_pins_a_client(backends, engine):
    b = backends("a", "b", "c")
    proc = engine(engine_doc(1, b.ports.values(), sticky={"cookie": "gh_sticky", "max_age": 0}))
    response, data = proc.request("GET", "/")
    cookie = response.getheader("Set-Cookie")
    assert cookie.startswith("gh_sticky=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    pinned = json.loads(data)["server"]
    value = cookie.split(";")[0]
    assert str(b.ports[pinned]) not in value and "127.0.0.1" not in value
    assert set(served_by(proc, 8, headers={"Cookie": value})) == {pinned}
    assert len(set(served_by(proc, 6))) == 3          # without the cookie: round robin


def test_engine_keeps_health_state_across_a_reload_that_keeps_the_host(backends, engine):
    b = backends("a", "b")
    check = {**FAST_CHECK, "interval": 0.3, "healthy": 50}       # once down, b stays down for 15 s
    proc = engine(engine_doc(1, b.ports.values(), check=check))
    b.stop("b")
    time.sleep(1.2)
    b.start("b")
    assert set(served_by(proc, 6)) == {"a"}
    doc = engine_doc(2, b.ports.values(), check=check)
    doc["proxy_hosts"][0]["websockets"] = True
    doc["proxy_hosts"][0]["domains"].append("www.example.test")
    write_doc(proc.doc_path, doc)
    proc.wait_for(lambda r, d: r.status == 200, host="www.example.test", path="/")
    assert set(served_by(proc, 6)) == {"a"}           # b is still down after the swap


# -- HTTP/2 through TLS (ALPN h2) -------------------------------------------------------------------

def h2_get(port, ca_path, path="/", n=1, headers=()):
    """`n` GETs on one HTTP/2 connection with the h2 library over a real TLS socket."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, ResponseReceived, StreamEnded

    context = ssl.create_default_context(cafile=str(ca_path))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="app.example.test")
    assert sock.selected_alpn_protocol() == "h2"
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    answers = {}
    for _ in range(n):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.example.test"),
                                (b":path", path.encode()), *headers], end_stream=True)
        answers[sid] = {"status": None, "data": b"", "headers": {}, "done": False}
    sock.sendall(conn.data_to_send())
    while not all(a["done"] for a in answers.values()):
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                hs = dict(event.headers)
                answers[event.stream_id]["status"] = int(hs[b":status"])
                answers[event.stream_id]["headers"] = hs
            elif isinstance(event, DataReceived):
                answers[event.stream_id]["data"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                answers[event.stream_id]["done"] = True
        sock.sendall(conn.data_to_send())
    sock.close()
    return list(answers.values())


def test_engine_http2_balances_retries_skips_down_and_pins_sticky(backends, tmp_path):
    pytest.importorskip("trustme")
    tls = issue_certificate(tmp_path, "app", "app.example.test")
    b = backends("a", "b", "c")
    dead = free_port()
    ports = [b.ports["a"], b.ports["b"], dead, b.ports["c"]]
    doc = engine_doc(1, ports, tls=tls, policy="random")          # no checks: the dead one is only retried
    write_doc(tmp_path / "snapshot.json", doc)
    proc = engine_process(tmp_path / "snapshot.json", "--poll-interval", "0.2", https=True)
    https_port = proc.https_port
    try:
        proc.wait_for(lambda r, d: r.status != 503)
        answers = h2_get(https_port, tmp_path / "ca.pem", n=24)    # the dead one is retried elsewhere
        assert [a["status"] for a in answers] == [200] * 24
        assert {json.loads(a["data"])["server"] for a in answers} == {"a", "b", "c"}
        write_doc(tmp_path / "snapshot.json", engine_doc(2, ports, check=FAST_CHECK, tls=tls))
        time.sleep(1.0)
        b.stop("b")
        time.sleep(1.0)
        answers = h2_get(https_port, tmp_path / "ca.pem", n=8)
        assert [a["status"] for a in answers] == [200] * 8
        assert {json.loads(a["data"])["server"] for a in answers} == {"a", "c"}
        sticky = engine_doc(3, ports, check=FAST_CHECK, tls=tls, sticky={"cookie": "pin", "max_age": 60})
        write_doc(tmp_path / "snapshot.json", sticky)
        until(lambda: b"pin=" in h2_get(https_port, tmp_path / "ca.pem")[0]["headers"].get(b"set-cookie", b""))
        first = h2_get(https_port, tmp_path / "ca.pem")[0]
        cookie = first["headers"][b"set-cookie"].split(b";")[0]
        assert b"Max-Age=60" in first["headers"][b"set-cookie"]
        pinned = json.loads(first["data"])["server"]
        answers = h2_get(https_port, tmp_path / "ca.pem", n=6, headers=[(b"cookie", cookie)])
        assert {json.loads(a["data"])["server"] for a in answers} == {pinned}
        assert all(b"set-cookie" not in a["headers"] for a in answers)
        write_doc(tmp_path / "snapshot.json", engine_doc(4, [dead], check=FAST_CHECK, tls=tls))
        until(lambda: h2_get(https_port, tmp_path / "ca.pem")[0]["status"] == 502)
        until(lambda: b"no healthy upstream" in h2_get(https_port, tmp_path / "ca.pem")[0]["data"])
    finally:
        proc.stop()
