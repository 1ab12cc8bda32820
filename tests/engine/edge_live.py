"""Real servers for the edge-feature tests (presets, CORS, forward auth): a recording upstream,
an Authelia-like authentication service (plain and TLS), and the engine as a process serving
HTTP and HTTPS (HTTP/2 through ALPN, driven with curl). Everything listens on 127.0.0.1."""
import http.client
import json
import shutil
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from tests.live import engine_process, free_port, issue_certificate, read_body, stop_upstream, write_doc

GOOD_COOKIE = "authelia_session=good"
LOGIN = "https://login.example.test/"


class Recorder(BaseHTTPRequestHandler):
    """Records every request (method, path, headers, body) in `server.seen`; answers JSON."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _record(self):
        body = read_body(self)
        entry = {"method": self.command, "path": self.path, "body": body, "port": self.client_address[1],
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "all": [(k.lower(), v) for k, v in self.headers.items()]}
        with self.server.lock:
            self.server.seen.append(entry)
        return entry

    def _answer(self, status, body=b"", headers=()):
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except ConnectionError:
            self.close_connection = True         # the engine gave up on us (timeout tests)


class UpstreamHandler(Recorder):
    def handle_any(self):
        entry = self._record()
        extra = [("Content-Type", "application/json")]
        if self.path.startswith("/identity"):
            extra += [("X-Powered-By", "PHP/8.2"), ("X-AspNet-Version", "4.0.30319"), ("X-Frame-Options", "DENY")]
        if self.path.startswith("/acao"):
            extra += [("Access-Control-Allow-Origin", "https://evil.example"),
                      ("Access-Control-Allow-Credentials", "true")]
        body = json.dumps({"method": entry["method"], "path": entry["path"], "headers": entry["headers"],
                           "all": entry["all"], "length": len(entry["body"])}).encode()
        self._answer(200, body, extra)

    do_GET = do_POST = do_OPTIONS = do_PUT = do_DELETE = handle_any


class AuthHandler(Recorder):
    """Behaves like Authelia's /api/verify: 200 + Remote-* for a good session cookie (or
    Basic alice:pw), else 401 for XHR/JSON clients and 302 to the portal for browsers."""

    def do_GET(self):
        entry = self._record()
        headers = entry["headers"]
        path = self.path
        if path.startswith("/error"):
            self._answer(500, b"internal error", [("Content-Type", "text/plain")])
            return
        if path.startswith("/big"):
            self._answer(401, b"x" * 200_000, [("Content-Type", "text/plain")])
            return
        if path.startswith("/slow"):
            time.sleep(2.0)
        cookie = headers.get("cookie", "")
        basic = headers.get("authorization", "") == "Basic YWxpY2U6cHc="        # alice:pw
        if GOOD_COOKIE in cookie or basic:
            answer = [("Remote-User", "alice"), ("Remote-Email", "alice@example.test")]
            if "/nogroups" not in path:
                answer.append(("Remote-Groups", "admins,dev"))
            self._answer(200, b"ok", answer)
        elif "json" in headers.get("accept", "") or headers.get("x-requested-with") == "XMLHttpRequest":
            self._answer(401, b'{"status":"Unauthorized"}', [
                ("Content-Type", "application/json"), ("WWW-Authenticate", 'Basic realm="Authorization Required"')])
        else:
            target = headers.get("x-original-url", "")
            body = f'<a href="{LOGIN}?rd={target}">Found</a>'.encode()
            self._answer(302, body, [("Location", f"{LOGIN}?rd={target}"), ("Content-Type", "text/html"),
                                     ("Set-Cookie", "authelia_flow=1; Path=/; HttpOnly"),
                                     ("Set-Cookie", "authelia_rd=2; Path=/"),
                                     ("Remote-User", "should-not-leak")])


def serve(handler, context=None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.seen = []
    server.lock = threading.Lock()
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


NAMES = ("auth.example.test", "nogroups.example.test", "down.example.test", "slow.example.test",
         "error.example.test", "tls.example.test", "cors.example.test", "star.example.test",
         "presets.example.test", "plain.example.test", "both.example.test", "big.example.test")


def host(host_id, name, upstream_port, **options):
    return {"id": host_id, "domains": [name], "max_body_size": None, "locations": [],
            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": upstream_port, "weight": 1}],
            "timeouts": {"connect": 2.0, "response": 10.0},
            "ssl": {"certificate": "edge", "force_https": False, "http2": True, "hsts": False}, **options}


class Edge:
    """The engine process, its upstream and authentication services, and the TLS CA."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.ca = trustme.CA()
        certificate = issue_certificate(tmp, "edge", *NAMES, ca=self.ca)
        self.upstream = serve(UpstreamHandler)
        self.auth = serve(AuthHandler)
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(tls_context)     # trusted by nobody's system roots
        self.tls_auth = serve(AuthHandler, tls_context)
        up = self.upstream.server_address[1]
        auth = f"http://127.0.0.1:{self.auth.server_address[1]}"
        verify = {"response_headers": ["Remote-User", "Remote-Groups"], "timeout": 5.0}
        cors = {"origins": ["https://app.example.test", "http://localhost:3000"], "methods": ["GET", "POST", "PUT"],
                "headers": ["Content-Type", "X-Api-Key"], "expose": ["X-Total-Count"], "credentials": True,
                "max_age": 600}
        self.doc = {
            "revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": ["10.9.0.0/16"]},
            "proxy_hosts": [
                host(1, "auth.example.test", up, forward_auth={"url": f"{auth}/api/verify?rd={LOGIN}", **verify}),
                host(2, "nogroups.example.test", up, forward_auth={"url": f"{auth}/nogroups", **verify}),
                host(3, "down.example.test", up, forward_auth={"url": f"http://127.0.0.1:{free_port()}/v", **verify}),
                host(4, "slow.example.test", up, forward_auth={"url": f"{auth}/slow", **verify, "timeout": 0.5}),
                host(5, "error.example.test", up, forward_auth={"url": f"{auth}/error", **verify}),
                host(6, "tls.example.test", up, forward_auth={
                    "url": f"https://127.0.0.1:{self.tls_auth.server_address[1]}/api/verify", **verify}),
                host(7, "cors.example.test", up, cors=cors),
                host(8, "star.example.test", up, cors={"origins": ["*"], "methods": ["GET"], "max_age": 60}),
                host(9, "presets.example.test", up, security_headers=True, hide_upstream_identity=True),
                host(10, "plain.example.test", up),
                host(11, "both.example.test", up, cors=cors,
                     forward_auth={"url": f"{auth}/api/verify", **verify}),
                host(12, "big.example.test", up, forward_auth={"url": f"{auth}/big", **verify}),
            ],
            "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
            "certificates": [certificate],
        }
        write_doc(tmp / "snapshot.json", self.doc)
        self.engine = engine_process(tmp / "snapshot.json", https=True)
        self.port, self.https_port = self.engine.port, self.engine.https_port
        self.engine.wait_for(lambda r, d: r.status != 503, host="plain.example.test")
        self.upstream.seen.clear()

    def close(self):
        output = self.engine.stop()
        for server in (self.upstream, self.auth, self.tls_auth):
            stop_upstream(server)
        return output

    def reset(self):
        self.upstream.seen.clear()
        self.auth.seen.clear()
        self.tls_auth.seen.clear()

    def request(self, method, path, host, headers=None, body=None, conn=None):
        """(status, headers as a list of (lower-case name, value), body) over HTTP/1.1."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        if own:
            conn.close()
        return response.status, [(k.lower(), v) for k, v in response.getheaders()], data

    def h2(self, method, path, host, headers=(), data=None):
        """(http version, status, headers [(lower-case name, value)], body) with curl --http2."""
        args = ["curl", "-s", "--http2", "--cacert", str(self.tmp / "ca.pem"), "-X", method,
                "--resolve", f"{host}:{self.https_port}:127.0.0.1", "-D", "-", "-o", str(self.tmp / "body"),
                "-w", "%{http_version}"]
        for header in headers:
            args += ["-H", header]
        if data is not None:
            (self.tmp / "upload").write_bytes(data)
            args += ["--data-binary", f"@{self.tmp / 'upload'}", "-H", "Content-Type: application/octet-stream"]
        args.append(f"https://{host}:{self.https_port}{path}")
        result = subprocess.run(args, capture_output=True, timeout=30)
        out = result.stdout.decode("latin-1")
        head, _, version = out.rpartition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        pairs = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
        return version, status, pairs, (self.tmp / "body").read_bytes()


def header(pairs, name):
    values = [v for n, v in pairs if n == name]
    return values[0] if len(values) == 1 else (values or None)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    if not shutil.which("curl") or "HTTP2" not in subprocess.run(
            ["curl", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    running = Edge(tmp_path_factory.mktemp("edge"))
    yield running
    running.close()


@pytest.fixture
def fresh(edge):
    edge.reset()
    return edge
