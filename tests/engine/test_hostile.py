"""Hostile input against the real engine process, over raw sockets.

One engine serves the whole module. Its upstream records every byte it receives, so each
test can assert that nothing of a refused request reached it (every request carries a fresh
marker). A second, scripted upstream answers with broken responses (one per path), and
notes when the engine drops its connection.
"""
import socket
import sys
import threading
import time
import uuid

import httptools
import pytest

from tests.live import EngineProcess, free_port

MAX_BODY = 1000


class RecordingUpstream:
    """Answers every complete request with 200 "ok"; keeps every byte received, per connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.received = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def seen(self, marker):
        with self.lock:
            return marker.encode() in self.received

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        answers = []

        class Callbacks:
            def on_message_complete(self):
                answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        parser = httptools.HttpRequestParser(Callbacks())
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += data
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError:
                    return
                while answers:
                    conn.sendall(answers.pop(0))

    def close(self):
        self.sock.close()


# Broken responses, by request path. Each is sent as soon as a request head arrives.
BROKEN = {
    "/cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "/te-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "/two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "/bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "/te-chunked-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "/te-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "/obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "/bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    # Broken only in the body: the head has gone to the client by then.
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "/long-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
}


class BrokenUpstream:
    """Answers each request with `BROKEN[path]`, then waits; records whether the engine
    closed that connection afterwards (`dropped[path]` is set)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.dropped = {path: threading.Event() for path in BROKEN}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(30)
        path = None
        with conn:
            try:
                while True:                 # one request after the other (the engine pools)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        data = conn.recv(65536)
                        if not data:
                            raise EOFError
                        head += data
                    path = head.split(b" ", 2)[1].decode()
                    conn.sendall(BROKEN[path])
            except (OSError, EOFError):
                pass
            if path is not None:
                self.dropped[path].set()

    def close(self):
        self.sock.close()


def document(good_port, broken_port):
    def host(id_, domain, port):
        return {"id": id_, "domains": [domain],
                "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}],
                "timeouts": {"connect": 2.0, "response": 5.0}, "max_body_size": MAX_BODY, "locations": []}

    return {
        "revision": 1,
        "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
        "proxy_hosts": [host(1, "app.example.test", good_port), host(2, "broken.example.test", broken_port)],
        "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [], "certificates": [],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import json

    good, broken = RecordingUpstream(), BrokenUpstream()
    path = tmp_path_factory.mktemp("hostile") / "snapshot.json"
    path.write_text(json.dumps(document(good.port, broken.port)))
    port = free_port()
    engine = EngineProcess([sys.executable, "-m", "proxy_engine", "--document-file", str(path),
                            "--http-port", str(port), "--bind", "127.0.0.1"], port)
    try:
        engine.wait_for(lambda r, d: r.status == 200)
        yield engine, good, broken
    finally:
        engine.stop()
        good.close()
        broken.close()


def exchange(engine, data, timeout=5.0):
    """Send raw bytes; read until the engine closes. Returns (answer, closed)."""
    with socket.create_connection(("127.0.0.1", engine.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass                       # the engine may refuse before it has read everything
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except socket.timeout:
                return answer, False
            except ConnectionResetError:
                return answer, True
            if not piece:
                return answer, True
            answer += piece
        return answer, False


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def refused(engine, good, request, status):
    """`request` (bytes, with "{m}" where the marker goes) is answered `status` and the
    connection is closed; nothing of it reached the upstream."""
    marker = uuid.uuid4().hex
    answer, closed = exchange(engine, request.replace(b"{m}", marker.encode()))
    assert status_of(answer) == status, answer[:300]
    assert closed, "the engine must close the connection after refusing a request"
    assert b"X-Request-Id: " in answer
    # A request that passes afterwards reaches the upstream, so the recorder is working
    # (and any bytes of the refused request would have arrived before it).
    control = uuid.uuid4().hex
    answer, _ = exchange(engine, b"GET /" + control.encode() + b" HTTP/1.1\r\nHost: app.example.test\r\n"
                         b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200 and good.seen(control)
    assert not good.seen(marker), "part of a refused request reached the upstream"


HEAD = b"Host: app.example.test\r\nX-Marker: {m}\r\n"


def test_a_valid_request_reaches_the_recording_upstream(world):
    engine, good, _ = world
    answer, _ = exchange(engine, b"POST /{m} HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 3\r\n"
                         b"Connection: close\r\n\r\nabc".replace(b"{m}", b"visible-marker"))
    assert status_of(answer) == 200 and good.seen("visible-marker")


@pytest.mark.parametrize("request_bytes, status", [
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 17000 + b"\r\n\r\n", 431,
                 id="head-over-16k"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n", 431,
                 id="too-many-headers"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
                 + b"a" * (MAX_BODY + 1), 413, id="content-length-over-max-body"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % (MAX_BODY + 1) + b"a" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n", 413,
                 id="chunked-body-over-max-body"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n", 400, id="content-length-and-transfer-encoding"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                 b"0\r\n\r\n", 400, id="transfer-encoding-and-content-length"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400,
                 id="two-content-lengths"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 3, 4\r\n\r\nabcd", 400,
                 id="content-length-list"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400,
                 id="te-gzip-chunked"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400,
                 id="te-chunked-not-final"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                 b"\r\n\r\n0\r\n\r\n", 400, id="te-twice"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: identity\r\n\r\n", 400,
                 id="te-identity"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400,
                 id="te-xchunked"),
    pytest.param(b"POST /{m} HTTP/1.0\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400,
                 id="te-on-http-1.0"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 3x\r\n\r\nabc", 400, id="cl-not-a-number"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: -3\r\n\r\nabc", 400, id="cl-negative"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: +3\r\n\r\nabc", 400, id="cl-plus"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 1 2\r\n\r\nabc", 400, id="cl-space"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Content-Length: 99999999999999999999999\r\n\r\nabc", 400,
                 id="cl-overflow"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400,
                 id="chunk-size-not-hex"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400,
                 id="chunk-size-negative"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
                 400, id="chunk-size-0x"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nab\r\n",
                 400, id="chunk-size-overflow"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
                 400, id="chunk-longer-than-declared"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\r\n\r\n",
                 400, id="chunk-bare-lf"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\r\n folded\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n X-A: a\r\n" + HEAD + b"\r\n", 400, id="obs-fold-after-request-line"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\rb\r\n\r\n", 400, id="bare-cr-in-value"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\rX-B: b\r\n\r\n", 400, id="bare-cr-line-end"),
    pytest.param(b"GET /{m} HTTP/1.1\n" + HEAD + b"\r\n", 400, id="bare-lf-after-request-line"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\x01b\r\n\r\n", 400, id="control-in-value"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A: a\x7fb\r\n\r\n", 400, id="del-in-value"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X\x00A: b\r\n\r\n", 400, id="nul-in-name"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X\x01A: b\r\n\r\n", 400, id="control-in-name"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A : b\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X-A\t: b\r\n\r\n", 400, id="tab-before-colon"),
    pytest.param(b"GET /{m} HTTP/1.1\r\nHost : app.example.test\r\n\r\n", 400, id="space-before-colon-host"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X(A): b\r\n\r\n", 400, id="invalid-name-char"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"X A: b\r\n\r\n", 400, id="space-in-name"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b": b\r\n\r\n", 400, id="empty-name"),
    pytest.param(b"GET /{m} HTTP/1.1\r\nX-Marker: {m}\r\n\r\n", 400, id="missing-host"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"Host: other.example.test\r\n\r\n", 400, id="duplicate-host"),
    pytest.param(b"GET /{m} HTTP/1.1\r\n" + HEAD + b"Host: app.example.test\r\n\r\n", 400,
                 id="duplicate-host-same-value"),
    pytest.param(b"GET /{m} HTTP/1.0\r\n" + HEAD + b"Host: other.example.test\r\n\r\n", 400,
                 id="duplicate-host-http-1.0"),
    pytest.param(b"GET /{m} x HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="space-in-target"),
    pytest.param(b"GET /{m}\x01x HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="control-in-target"),
    pytest.param(b"GET /{m}\tx HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="tab-in-target"),
    pytest.param(b"GET /{m}\x7fx HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="del-in-target"),
    pytest.param(b"GET /{m}\xffx HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="high-byte-in-target"),
    pytest.param(b"GET {m} HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="target-not-origin-form"),
    pytest.param(b"GET /{m} HTTP/1.x\r\n" + HEAD + b"\r\n", 400, id="malformed-version"),
    pytest.param(b"GET /{m} http/1.1\r\n" + HEAD + b"\r\n", 400, id="lower-case-version"),
    pytest.param(b"G(T /{m} HTTP/1.1\r\n" + HEAD + b"\r\n", 400, id="invalid-method"),
    pytest.param(b"GET /{m} HTTP/1.2\r\n" + HEAD + b"\r\n", 505, id="http-1.2"),
    pytest.param(b"GET /{m} HTTP/2.0\r\n" + HEAD + b"\r\n", 505, id="http-2.0-in-http1-syntax"),
    pytest.param(b"GET /{m} HTTP/0.9\r\n" + HEAD + b"\r\n", 505, id="http-0.9"),
    pytest.param(b"POST /{m} HTTP/1.1\r\n" + HEAD + b"Expect: something-else\r\nContent-Length: 3\r\n\r\nabc", 417,
                 id="unknown-expectation"),
])
def test_a_hostile_request_is_refused_closed_and_never_reaches_the_upstream(world, request_bytes, status):
    engine, good, _ = world
    refused(engine, good, request_bytes, status)


def test_a_bad_request_pipelined_after_a_good_one_never_reaches_the_upstream(world):
    engine, good, _ = world
    marker, bad = uuid.uuid4().hex, uuid.uuid4().hex
    answer, closed = exchange(engine, (
        b"GET /%s HTTP/1.1\r\nHost: app.example.test\r\n\r\n" % marker.encode()
        + b"POST /%s HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        % bad.encode()))
    assert status_of(answer) == 200 and closed
    assert good.seen(marker) and not good.seen(bad)


@pytest.mark.parametrize("path", [p for p in BROKEN if p not in ("/bad-chunk", "/long-chunk")])
def test_an_ambiguous_upstream_response_gives_502_and_drops_that_connection(world, path):
    engine, _, broken = world
    answer, _ = exchange(engine, b"GET %s HTTP/1.1\r\nHost: broken.example.test\r\nConnection: close\r\n\r\n"
                         % path.encode())
    assert status_of(answer) == 502, answer[:300]
    assert b"invalid response" in answer
    assert broken.dropped[path].wait(5), "the engine kept the upstream connection"


@pytest.mark.parametrize("path", ["/bad-chunk", "/long-chunk"])
def test_a_broken_upstream_body_cuts_the_client_off_and_drops_that_connection(world, path):
    engine, _, broken = world
    answer, closed = exchange(engine, b"GET %s HTTP/1.1\r\nHost: broken.example.test\r\n\r\n" % path.encode())
    # The head was passed on before the body broke: the client is cut off, and must never
    # see a complete answer.
    assert closed and status_of(answer) in (None, 200)
    assert not answer.endswith(b"0\r\n\r\n")
    assert broken.dropped[path].wait(5), "the engine kept the upstream connection"
