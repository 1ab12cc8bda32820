"""Blue-green: switching a host's upstream from A to B under load loses no request, requests
in flight finish on the snapshot they started with, and A's connections are drained."""
import http.client
import json
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from proxy_engine.snapshot import parse_snapshot
from tests.engine.support import Harness, document
from tests.live import EngineProcess, Upstream, free_port

GET = b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
A = ("http", "10.0.1.10", 3000)
B_UPSTREAMS = [{"scheme": "http", "host": "10.0.2.10", "port": 3000, "weight": 1}]


def switched_to_b(revision=2):
    return parse_snapshot(document(revision=revision, proxy_hosts=[
        {**document()["proxy_hosts"][0], "upstreams": B_UPSTREAMS, "locations": []}]))


# -- the pool, on a Clock ----------------------------------------------------------------

def test_idle_connections_to_an_upstream_that_left_the_snapshot_are_closed():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    assert len(h.factory.pool.idle[A]) == 1
    h.factory.swap(switched_to_b())
    assert A not in h.factory.pool.idle and ut.disconnecting


def test_a_busy_connection_to_a_removed_upstream_finishes_its_request_then_closes():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    (host, _, _), up, ut = h.connect_upstream()
    assert host == "10.0.1.10"
    h.factory.swap(switched_to_b())
    assert not ut.disconnecting, "a request in flight keeps its connection"
    up.dataReceived(OK)
    assert ct.value().endswith(b"\r\n\r\nhi") and not ct.disconnecting
    assert ut.disconnecting and A not in h.factory.pool.idle
    client.dataReceived(GET)
    assert h.reactor.tcpClients[-1][0] == "10.0.2.10"


def test_connections_to_upstreams_still_served_stay_pooled():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    h.factory.swap(parse_snapshot(document(revision=2)))
    assert len(h.factory.pool.idle[A]) == 1 and not ut.disconnecting


def test_a_late_connection_to_a_removed_upstream_is_not_pooled():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    client.connectionLost(None)
    h.factory.swap(switched_to_b())
    _, _, ut = h.connect_upstream()
    assert ut.disconnecting and A not in h.factory.pool.idle


# -- the real process under load ---------------------------------------------------------

class CountingServer(ThreadingHTTPServer):
    """tests.live.Upstream answers; `/slow` waits for `release`; open connections are counted."""
    daemon_threads = True

    def __init__(self, name):
        super().__init__(("127.0.0.1", 0), SlowUpstream)
        self.name = name
        self.release = threading.Event()
        self.slow_started = threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def process_request_thread(self, request, client_address):
        with self.lock:
            self.open += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open -= 1


class SlowUpstream(Upstream):
    disable_nagle_algorithm = True      # its head and body are two writes

    def do_GET(self):
        if self.path == "/slow":
            self.server.slow_started.set()
            self.server.release.wait(10)
        super().do_GET()


def doc(revision, port):
    return {
        "revision": revision,
        "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
        "proxy_hosts": [{"id": 1, "domains": ["app.example.test"],
                         "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}],
                         "timeouts": {"connect": 2.0, "response": 10.0}, "locations": []}],
        "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [], "certificates": [],
    }


def write_doc(path, document_):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document_))
    tmp.replace(path)


def load(port, stop, results):
    """One keep-alive client: GET until `stop`; appends (status, server) or the exception."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while not stop.is_set():
            try:
                conn.request("GET", "/load", headers={"Host": "app.example.test"})
                response = conn.getresponse()
                body = response.read()
                results.append((response.status, json.loads(body)["server"] if response.status == 200 else body))
            except Exception as exc:        # any failure is a lost request
                results.append(("failed", repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    finally:
        conn.close()


def wait_until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_switching_upstream_a_to_b_under_load_loses_no_request(tmp_path):
    a, b = CountingServer("a"), CountingServer("b")
    path = tmp_path / "snapshot.json"
    write_doc(path, doc(1, a.server_address[1]))
    port = free_port()
    engine = EngineProcess([sys.executable, "-m", "proxy_engine", "--document-file", str(path), "--http-port",
                            str(port), "--bind", "127.0.0.1", "--poll-interval", "0.05"], port)
    stop = threading.Event()
    results = [[] for _ in range(3)]
    loaders = [threading.Thread(target=load, args=(port, stop, r)) for r in results]
    slow = {}
    try:
        engine.wait_for(lambda r, d: r.status == 200)
        for thread in loaders:
            thread.start()
        wait_until(lambda: all(len(r) >= 200 for r in results), "load on A")

        def slow_request():
            slow["answer"] = engine.request("GET", "/slow")
        slow_thread = threading.Thread(target=slow_request)
        slow_thread.start()
        assert a.slow_started.wait(10)

        write_doc(path, doc(2, b.server_address[1]))
        wait_until(lambda: all(any(x[1] == "b" for x in r[-20:]) for r in results), "every client served by B")
        mark = [len(r) for r in results]
        wait_until(lambda: all(len(r) >= m + 200 for r, m in zip(results, mark)), "load on B")
        assert "answer" not in slow, "the request in flight on A must still be waiting for A"
        a.release.set()
        slow_thread.join(10)
        stop.set()
        for thread in loaders:
            thread.join(10)

        response, body = slow["answer"]
        assert response.status == 200 and json.loads(body)["server"] == "a"
        for r in results:
            assert [x for x in r if x[0] != 200] == []
            servers = [x[1] for x in r]
            first_b = servers.index("b")
            assert set(servers[:first_b]) == {"a"} and set(servers[first_b:]) == {"b"}, \
                "once a client has been served by B, A must never answer it again"
        wait_until(lambda: a.open == 0, "the engine to drain its connections to A")
        assert b.open >= 1
    finally:
        stop.set()
        a.release.set()
        engine.stop()
        for server in (a, b):
            server.shutdown()
            server.server_close()
