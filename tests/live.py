"""Real components for end-to-end tests: upstream HTTP servers, a private redis-server, and
the engine as a process on a real port. Nothing here is faked; every piece listens on
127.0.0.1."""
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_body(handler):
    """The body of the request a BaseHTTPRequestHandler is serving: chunked, or by
    Content-Length (none: empty)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        data = b""
        while True:
            size = int(handler.rfile.readline().strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return data
            data += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0) or 0))


class Upstream(BaseHTTPRequestHandler):
    """Answers with JSON naming the server, the path and the headers it received."""

    protocol_version = "HTTP/1.1"

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
        data = read_body(self)
        self._send(200, json.dumps({"length": len(data), "sha": hashlib.sha256(data).hexdigest()}).encode())


def start_upstream(name):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_upstream(server):
    server.shutdown()
    server.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port, stoppable and restartable on that port."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class EngineProcess:
    """The engine started by `command` (a list of arguments), listening on `self.port`."""

    def __init__(self, command, port, env=None):
        self.port = port
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def request(self, method, path, host="app.example.test", body=None, headers=None, conn=None, chunked=False):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})}, encode_chunked=chunked)
        response = conn.getresponse()
        data = response.read()
        if own:
            conn.close()
        return response, data

    def wait_for(self, predicate, timeout=10.0, host="app.example.test", path="/probe"):
        """Ask until predicate(response, body) holds; the last answer is in the failure."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}:\n{self.output()}")
            try:
                last = self.request("GET", path, host=host)
                if predicate(*last):
                    return last
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"engine never satisfied the condition; last answer {last!r}")

    def output(self):
        return self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read().decode(errors="replace")


def issue_certificate(directory, name, *domains, ca=None):
    """The snapshot's certificate entry `name` for a leaf issued for `domains` by a trustme CA
    (`ca`, or a new one) whose certificate is written to directory/ca.pem (curl --cacert)."""
    import trustme

    ca = ca or trustme.CA()
    leaf = ca.issue_cert(*domains)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return {"name": name, "domains": [], "certificate_pem": leaf.cert_chain_pems[0].bytes().decode(),
            "key_pem": leaf.private_key_pem.bytes().decode(), "chain_pem": ""}


def write_doc(path, doc):
    """Write a snapshot document as the manager does: whole, through a rename."""
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


def engine_process(doc_path, *extra, https=False):
    """`python -m proxy_engine` on the document at doc_path, HTTP on a free port (`.port`) and,
    with `https`, HTTPS on another (`.https_port`), bound to 127.0.0.1; `extra` arguments last."""
    port = free_port()
    https_port = free_port() if https else None
    tls = ["--https-port", str(https_port)] if https else []
    engine = EngineProcess([sys.executable, "-m", "proxy_engine", "--document-file", str(doc_path),
                            "--http-port", str(port), *tls, "--bind", "127.0.0.1", *extra], port)
    engine.https_port = https_port
    return engine


def started_engines(directory, *args, ready=lambda response, body: response.status != 503, **probe):
    """The body of a fixture (`yield from started_engines(tmp_path, ...)`): yields start(doc, *extra),
    which writes doc to a file of its own in directory, starts engine_process on it (args, then
    extra), keeps the file's path as `engine.doc_path` and waits until ready(response, body) holds
    for a probe (probe: wait_for's host and path); after the test, stops every engine started."""
    engines = []

    def start(doc, *extra):
        path = directory / f"snapshot{len(engines)}.json"
        write_doc(path, doc)
        engine = engine_process(path, *args, *extra)
        engine.doc_path = path
        engines.append(engine)
        engine.wait_for(ready, **probe)
        return engine

    yield start
    for engine in engines:
        engine.stop()


def runproxy(database_path, data_dir, redis_url="", poll_interval=None):
    """`manage.py runproxy` on a SQLite file, as `make run` starts it."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database_path}", "GATEHOUSE_DATA_DIR": str(data_dir),
           "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "manager.settings"}
    command = [sys.executable, "manage.py", "runproxy", "--http-port", str(port), "--https-port", str(free_port()),
               "--bind", "127.0.0.1", "--workers", "1"]
    if poll_interval is not None:
        command += ["--poll-interval", str(poll_interval)]
    return EngineProcess(command, port, env)
