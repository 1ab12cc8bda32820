"""The engine as a real process (`python -m proxy_engine`) on real sockets, with real upstreams."""
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "a"

    def log_message(self, *args):
        pass

    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                piece = (f"piece-{i};" * 100).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({
            "server": self.server.name, "path": self.path, "peer_port": self.client_address[1],
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self._send(200, body)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, json.dumps({"length": len(data), "sha": hashlib.sha256(data).hexdigest()}).encode())


def start_upstream(name):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def write_doc(path, doc):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


class Engine:
    def __init__(self, doc_path, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_engine", "--document-file", str(doc_path),
             "--http-port", str(self.port), "--bind", "127.0.0.1", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def request(self, method, path, host="app.example.test", body=None, headers=None, conn=None,
                chunked=False):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})},
                     encode_chunked=chunked)
        response = conn.getresponse()
        data = response.read()
        if own:
            conn.close()
        return response, data

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.request("GET", "/probe")
                if predicate(*last):
                    return last
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"engine never satisfied the condition; last answer {last!r}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read().decode(errors="replace")


@pytest.fixture
def upstreams():
    servers = [start_upstream("a"), start_upstream("b")]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def engine_for(tmp_path):
    engines = []

    def start(doc, *extra):
        path = tmp_path / "snapshot.json"
        write_doc(path, doc)
        engine = Engine(path, *extra)
        engine.doc_path = path
        engines.append(engine)
        engine.wait_for(lambda r, d: r.status != 503)
        return engine

    yield start
    for engine in engines:
        engine.stop()


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


def test_a_redis_message_reloads_without_waiting_for_the_poll(upstreams, engine_for):
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    a, b = upstreams
    engine = engine_for(doc_for(1, a.server_address[1]), "--poll-interval", "60",
                        "--redis-url", "redis://127.0.0.1:6379/0")
    time.sleep(0.5)                       # let the subscriber subscribe
    write_doc(engine.doc_path, doc_for(2, b.server_address[1]))
    started = time.monotonic()
    client.publish("gatehouse:config", b"2")
    engine.wait_for(lambda r, d: r.status == 200 and json.loads(d)["server"] == "b", timeout=5)
    assert time.monotonic() - started < 2.0


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
