"""Real servers on 127.0.0.1 for the traffic-feature end-to-end tests
(tests/e2e/test_traffic_features.py, tests/e2e/test_browser_traffic.py): an upstream that
records every request it receives, an Authelia-like auth service, a kill that also cuts
kept-alive connections, and bounded polling."""
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP_ORIGIN = "https://app.example.test"
SESSION = "authelia_session=good-session-7f3a"
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(400)).encode()


class Recording(BaseHTTPRequestHandler):
    """An upstream that records each request (method, path, headers with repeats) and
    answers by path: /health (the active check), /cached... (cacheable for 5 minutes, with the
    number of requests for that path so far), /text
    (a large text body), anything else JSON naming the server. It announces itself with
    Server and X-Powered-By, which hide_upstream_identity must drop."""

    protocol_version = "HTTP/1.1"
    server_version = "SecretUpstream/1.0"
    sys_version = ""

    def log_message(self, *args):
        pass

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {"method": self.command, "path": self.path, "headers": self.headers, "body": body}
        with self.server.lock:
            (self.server.probes if self.path == "/health" else self.server.seen).append(entry)

    def _send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Powered-By", "PHP/8.3.0")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self):
        self._record()
        if self.path == "/health":
            self._send(200, b"ok", "text/plain")
        elif self.path.startswith("/cached"):
            with self.server.lock:
                serial = len([e for e in self.server.seen if e["path"] == self.path])
            self._send(200, json.dumps({"server": self.server.name, "serial": serial}).encode(),
                       extra=[("Cache-Control", "public, max-age=300")])
        elif self.path.startswith("/text"):
            self._send(200, TEXT, "text/plain; charset=utf-8")
        else:
            self._send(200, json.dumps({"server": self.server.name, "path": self.path}).encode())

    do_GET = do_POST = do_PUT = do_OPTIONS = do_HEAD = _answer


class AuthService(BaseHTTPRequestHandler):
    """An Authelia-like verification endpoint: 200 with Remote-User / Remote-Groups for the
    session cookie it knows, 401 otherwise. Records every verification request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.server.lock:
            self.server.seen.append({"path": self.path, "headers": self.headers})
        if SESSION in (self.headers.get("Cookie") or ""):
            status, body, extra = 200, b"", [("Remote-User", "alice"), ("Remote-Groups", "admins,family")]
        else:
            status, body, extra = 401, b"login required", []
        self.send_response(status)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    """Keeps its open connections, so that `kill` can cut kept-alive ones too (a killed
    upstream must not go on answering on the engine's pooled connections)."""

    daemon_threads = True

    def process_request(self, request, client_address):
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)     # health probes hang up early


def serve(handler, name, port=0):
    server = Server(("127.0.0.1", port), handler)
    server.name = name
    server.lock = threading.Lock()
    server.seen, server.probes, server.connections = [], [], set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def kill(server):
    """Stop a server, close its listening socket (connections to its port are refused) and
    cut its open connections."""
    if not getattr(server, "killed", False):
        server.shutdown()
        server.server_close()
        with server.lock:
            for sock in list(server.connections):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        server.killed = True


def seen(server, prefix="/"):
    with server.lock:
        return [entry for entry in server.seen if entry["path"].startswith(prefix)]


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


def wait_until(condition, timeout, what):
    """Poll `condition()` (bounded); the failure names what was awaited and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
