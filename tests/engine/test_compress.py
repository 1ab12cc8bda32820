"""Response compression (proxy_engine.compress): negotiation, types, header edits, the
streaming encoders, snapshot parsing and route building; then through a real engine
process with real upstreams (HTTP/1.1 and HTTP/2)."""
import base64
import gzip
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import brotli
import pytest
import zstandard

from proxy_engine.compress import (MIN_LENGTH, RouteCompression, build_route_compression, choose, compressible,
                                   edit_headers, encoder, parse_accept_encoding, request_path, weaken_etag)
from proxy_engine.routing import Router
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import document
from tests.live import engine_process, issue_certificate, write_doc

ALL = ("gzip", "br", "zstd")


def decode(name, data):
    if name == "gzip":
        return gzip.decompress(data)
    if name == "br":
        return brotli.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def text(size, seed=0):
    """Compressible but not trivially repetitive text of `size` bytes."""
    out = []
    total = 0
    i = seed
    while total < size:
        line = b'{"id": %d, "name": "item-%x", "ok": %s}\n' % (i, i * 2654435761 % 4294967296, b"true" if i % 3 else b"false")
        out.append(line)
        total += len(line)
        i += 1
    return b"".join(out)[:size]


# -- negotiation ------------------------------------------------------------------------

@pytest.mark.parametrize("accept, enabled, expected", [
    (None, ALL, None),                                        # no header: identity
    (b"", ALL, None),
    (b"gzip", ALL, "gzip"),
    (b"GZIP", ALL, "gzip"),
    (b"x-gzip", ALL, "gzip"),
    (b"gzip, deflate, br", ALL, "br"),                         # tie: br over gzip
    (b"gzip, deflate, br, zstd", ALL, "zstd"),                 # tie: zstd first
    (b"gzip, deflate, br, zstd", ("gzip", "br"), "br"),        # only what the route enables
    (b"gzip, deflate, br, zstd", ("gzip",), "gzip"),
    (b"br;q=0.5, gzip;q=0.8", ALL, "gzip"),                    # q beats preference
    (b"br;q=1.0, gzip;q=0.999", ALL, "br"),
    (b"zstd;q=0, br;q=0, gzip", ALL, "gzip"),                  # q=0 refuses
    (b"gzip;q=0", ("gzip",), None),
    (b"*", ALL, "zstd"),
    (b"*;q=0.5, br", ALL, "br"),
    (b"*, zstd;q=0", ALL, "br"),                               # * covers only the unlisted
    (b"*;q=0", ALL, None),
    (b"deflate", ALL, None),                                   # nothing we offer
    (b"identity", ALL, None),
    (b"gzip;q=0.5, identity;q=1", ALL, None),                  # identity preferred explicitly
    (b"gzip;q=0.5, identity;q=0.5", ALL, "gzip"),
    (b"gzip, identity;q=0", ALL, "gzip"),
    (b" gzip ;  q=0.7 ,, br;Q=0.6", ALL, "gzip"),              # OWS, empty elements, Q
    (b"gzip;q=2", ALL, None),                                  # malformed: out of range
    (b"gzip;q=0.1234", ALL, None),                             # malformed: four decimals
    (b"gzip;q=", ALL, None),
    (b"gzip;level=1", ALL, None),                              # unknown parameter
    (b"gz ip", ALL, None),                                     # not a token
    (b"gzip;q=1.5, br", ALL, None),                            # one bad element spoils it all
    (b"\x00gzip", ALL, None),
])
def test_negotiation(accept, enabled, expected):
    assert choose(accept, enabled) == expected


def test_parse_accept_encoding_keeps_the_first_weight_and_refuses_garbage():
    assert parse_accept_encoding(b"gzip;q=0.2, gzip;q=0.9, br") == {b"gzip": 0.2, b"br": 1.0}
    assert parse_accept_encoding(b"GZip ; q=0.5") == {b"gzip": 0.5}
    assert parse_accept_encoding(b"gzip;q=0.5;q=0.6") is None
    assert parse_accept_encoding(b";q=1") is None


@pytest.mark.parametrize("content_type, expected", [
    (b"text/html; charset=utf-8", True), (b"TEXT/CSS", True), (b"text/event-stream", True),
    (b"application/json", True), (b"application/javascript", True), (b"application/xml", True),
    (b"application/problem+json", True), (b"application/atom+xml; charset=utf-8", True),
    (b"image/svg+xml", True), (b"application/wasm", True), (b"font/ttf", True),
    (b"image/png", False), (b"image/jpeg", False), (b"application/octet-stream", False),
    (b"application/zip", False), (b"video/mp4", False), (b"font/woff2", False), (b"", False),
])
def test_compressible_types(content_type, expected):
    assert compressible(content_type) is expected


def test_etag_weakening():
    assert weaken_etag(b'"abc"') == b'W/"abc"'
    assert weaken_etag(b'W/"abc"') == b'W/"abc"'
    assert weaken_etag(b' "x" ') == b'W/"x"'


def test_request_path():
    assert request_path(b"/a/b?x=1") == b"/a/b"
    assert request_path(b"http://h.example/static/x?y") == b"/static/x"
    assert request_path(b"https://h.example") == b"/"


def triples(*pairs):
    return [(n.lower(), n, v) for n, v in pairs]


def test_header_edits_when_compressing():
    headers = triples((b"Content-Type", b"text/html"), (b"Content-Length", b"5000"), (b"ETag", b'"v1"'),
                      (b"Accept-Ranges", b"bytes"), (b"Vary", b"Origin"), (b"Content-Encoding", b"identity"),
                      (b"X-Keep", b"1"))
    out = edit_headers(headers, "br")
    names = [n for n, _, _ in out]
    assert b"content-length" not in names and b"accept-ranges" not in names
    assert dict((n, v) for n, _, v in out) == {
        b"content-type": b"text/html", b"etag": b'W/"v1"', b"x-keep": b"1",
        b"vary": b"Origin, Accept-Encoding", b"content-encoding": b"br"}
    assert names.count(b"vary") == 1 and names.count(b"content-encoding") == 1


def test_vary_is_merged_once_and_never_next_to_star():
    plain = triples((b"Content-Type", b"text/plain"))
    assert edit_headers(plain, None)[-1] == (b"vary", b"Vary", b"Accept-Encoding")
    already = triples((b"Content-Type", b"text/plain"), (b"Vary", b"origin, accept-encoding"))
    assert edit_headers(already, None) is already
    assert edit_headers(already, "gzip").count((b"vary", b"Vary", b"origin, accept-encoding")) == 1
    star = triples((b"Vary", b"*"))
    assert edit_headers(star, None) is star
    two = triples((b"Vary", b"Origin"), (b"Vary", b"Cookie"))
    assert [v for n, _, v in edit_headers(two, None) if n == b"vary"] == [b"Origin, Cookie, Accept-Encoding"]


# -- per-response decisions ---------------------------------------------------------------

def route_compression(host_list=ALL, locations=()):
    doc = document()
    host = doc["proxy_hosts"][0]
    host["compression"] = list(host_list)
    host["locations"] = [{"path": p, "upstreams": [], "compression": c} for p, c in locations]
    return Router(parse_snapshot(doc)).route(b"app.example.test").compression


def decide(comp=None, target=b"/x", accept=b"gzip, br, zstd", method=b"GET", status=200, length=5000,
           ctype=b"text/html", extra=(), request_extra=(), chunked_ok=True):
    comp = comp or route_compression()
    req = triples((b"Host", b"app.example.test"), *request_extra)
    if accept is not None:
        req += triples((b"Accept-Encoding", accept))
    resp = triples(*([(b"Content-Type", ctype)] if ctype is not None else []), *extra)
    if length is not None:
        resp += triples((b"Content-Length", b"%d" % length))
    headers, enc = comp.response(target, req, method == b"HEAD", status, resp, length, chunked_ok)
    values = {n: v for n, _, v in headers}
    return (enc.name if enc is not None else None), values


def test_a_compressible_response_is_compressed_with_the_clients_best():
    name, headers = decide()
    assert name == "zstd" and headers[b"content-encoding"] == b"zstd" and b"content-length" not in headers
    assert headers[b"vary"] == b"Accept-Encoding"


@pytest.mark.parametrize("kwargs", [
    dict(method=b"HEAD"), dict(status=206), dict(status=304), dict(status=204), dict(status=101),
    dict(status=103), dict(length=MIN_LENGTH - 1), dict(request_extra=[(b"Range", b"bytes=0-10")]),
    dict(extra=[(b"Content-Encoding", b"gzip")]), dict(extra=[(b"Cache-Control", b"public, No-Transform")]),
    dict(ctype=b"image/png"), dict(ctype=None), dict(accept=None), dict(accept=b"gzip;q=2"),
    dict(chunked_ok=False),
])
def test_responses_left_uncompressed(kwargs):
    name, headers = decide(**kwargs)
    assert name is None
    upstream_encoding = [v for n, v in kwargs.get("extra", ()) if n == b"Content-Encoding"]
    assert headers.get(b"content-encoding") == (upstream_encoding[0] if upstream_encoding else None)
    if kwargs.get("length", 5000) is not None:
        assert b"content-length" in headers


def test_vary_on_compressible_types_even_for_identity():
    assert decide(accept=None)[1][b"vary"] == b"Accept-Encoding"
    assert decide(length=10)[1][b"vary"] == b"Accept-Encoding"
    assert decide(method=b"HEAD")[1][b"vary"] == b"Accept-Encoding"
    assert b"vary" not in decide(ctype=b"image/png")[1]
    assert b"vary" not in decide(extra=[(b"Cache-Control", b"no-transform")])[1]


def test_exact_minimum_and_unknown_length_are_compressed_and_identity_encoding_is_replaced():
    assert decide(length=MIN_LENGTH)[0] == "zstd"
    name, headers = decide(length=None, accept=b"gzip")
    assert name == "gzip"
    name, headers = decide(extra=[(b"Content-Encoding", b"Identity")], accept=b"br")
    assert name == "br" and headers[b"content-encoding"] == b"br"


def test_streaming_flag_follows_the_length():
    comp = route_compression()
    req = triples((b"Accept-Encoding", b"gzip"))
    _, enc = comp.response(b"/", req, False, 200, triples((b"Content-Type", b"text/plain")), None, True)
    assert enc.streaming
    _, enc = comp.response(b"/", req, False, 200, triples((b"Content-Type", b"text/plain")), 4096, True)
    assert not enc.streaming


def test_location_overrides_and_inheritance():
    comp = route_compression(ALL, [("/api/", ["gzip"]), ("/raw/", []), ("/same/", None)])
    assert decide(comp, target=b"/api/x")[0] == "gzip"
    assert decide(comp, target=b"/raw/x") == (None, {b"content-type": b"text/html", b"content-length": b"5000"})
    assert decide(comp, target=b"/same/x")[0] == "zstd"
    assert decide(comp, target=b"http://app.example.test/raw/y?q")[0] is None
    only_location = route_compression((), [("/assets/", ["br"])])
    assert decide(only_location, target=b"/assets/a.css")[0] == "br"
    assert decide(only_location, target=b"/")[0] is None


def test_a_host_without_compression_builds_nothing():
    assert route_compression(()) is None
    assert route_compression((), [("/a/", None), ("/b/", [])]) is None
    assert isinstance(route_compression(["gzip"]), RouteCompression)


def test_negotiations_are_memoised_and_bounded():
    comp = route_compression()
    enabled = comp.for_path(b"/")
    for i in range(1000):
        enabled.choose(b"gzip;q=0.%d" % (i % 1000))
    assert len(enabled.memo) <= 256
    assert enabled.choose(b"br") == "br" and enabled.memo[b"br"] == "br"


# -- snapshot -----------------------------------------------------------------------------

def test_snapshot_refuses_unknown_encodings_with_their_path():
    doc = document()
    doc["proxy_hosts"][0]["compression"] = ["gzip", "deflate"]
    doc["proxy_hosts"][0]["locations"][1]["compression"] = ["lz4"]
    doc["proxy_hosts"][0]["locations"][2]["compression"] = "gzip"
    with pytest.raises(SnapshotError) as err:
        parse_snapshot(doc)
    errors = err.value.errors
    assert any(e.startswith("proxy_hosts[0].compression[1]: unknown encoding 'deflate'") for e in errors)
    assert any(e.startswith("proxy_hosts[0].locations[1].compression[0]: unknown encoding 'lz4'") for e in errors)
    assert any(e.startswith("proxy_hosts[0].locations[2].compression:") for e in errors)


def test_snapshot_parses_host_and_location_lists():
    doc = document()
    doc["proxy_hosts"][0]["compression"] = ["br", "gzip"]
    doc["proxy_hosts"][0]["locations"][0]["compression"] = []
    host = parse_snapshot(doc).proxy_hosts[0]
    assert host.compression == ("br", "gzip")
    assert [loc.compression for loc in host.locations] == [(), None, None]
    assert parse_snapshot(document()).proxy_hosts[0].compression == ()


# -- encoders -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("streaming", [True, False])
def test_streaming_round_trip(name, streaming):
    body = text(300_000) + os.urandom(5000) + text(50_000, seed=7)
    enc = encoder(name, streaming)
    out = []
    for i in range(0, len(body), 7000):
        out.append(enc.compress(body[i:i + 7000]))
        out.append(enc.flush())
    out.append(enc.finish())
    data = b"".join(out)
    assert decode(name, data) == body
    assert len(data) < len(body) // 3


@pytest.mark.parametrize("name", ALL)
def test_a_flush_makes_everything_fed_so_far_decodable(name):
    """What an SSE client needs: each event readable as soon as its read is flushed."""
    enc = encoder(name, streaming=True)
    decoder = {"gzip": lambda: zlib.decompressobj(31), "br": brotli.Decompressor,
               "zstd": lambda: zstandard.ZstdDecompressor().decompressobj()}[name]()
    feed = decoder.process if name == "br" else decoder.decompress
    for i in range(5):
        event = b"data: event %d\n\n" % i
        sent = enc.compress(event) + enc.flush()
        assert feed(sent) == event
    assert enc.flush() == b""                 # nothing fed since the last flush: nothing to send
    feed(enc.finish())


def test_zstd_contexts_are_reused_only_after_a_stream_ends():
    first, second = encoder("zstd"), encoder("zstd")
    assert first.context is not second.context          # two streams at once never share one
    context = first.context
    one = first.compress(b"one " * 500) + first.finish()
    third = encoder("zstd")
    assert third.context is context                    # given back at the end, taken again
    two = second.compress(b"two " * 500) + second.finish()
    three = third.compress(b"three " * 500) + third.finish()
    assert [decode("zstd", d) for d in (one, two, three)] == [b"one " * 500, b"two " * 500, b"three " * 500]


def test_a_known_length_body_is_not_flushed_before_its_end():
    enc = encoder("gzip", streaming=False)
    first = enc.compress(b"hello " * 10)
    assert enc.flush() == b""
    assert gzip.decompress(first + enc.finish()) == b"hello " * 10


@pytest.mark.parametrize("name", ALL)
def test_a_10_mib_streamed_body_stays_bounded_in_memory(name):
    piece = text(64 * 1024)
    enc = encoder(name, streaming=True)
    tracemalloc.start()
    try:
        emitted = 0
        largest = 0
        for i in range(160):                  # 10 MiB in 64 KiB reads
            out = enc.compress(piece[i % 7:] + piece[:i % 7]) + enc.flush()
            emitted += len(out)
            largest = max(largest, len(out))
        emitted += len(enc.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert emitted > 0 and largest < 256 * 1024
    assert peak < 2 * 1024 * 1024, peak       # Python-side allocations never approach the body size


# -- through a real engine process and real upstreams -------------------------------------

PAGE = text(40_000, seed=1)
SMALL = text(200, seed=2)
EVENTS = 4


class ContentUpstream(BaseHTTPRequestHandler):
    """Serves the bodies the integration tests compress (or must leave alone)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, body, ctype, extra=(), head=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if not head and status != 304:
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        path = self.path.split("?")[0]
        self.server.accept_encodings.append(self.headers.get("Accept-Encoding"))
        if path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(EVENTS):
                if i:
                    self.server.gate.acquire(timeout=10)      # the next event only when the test says so
                event = b"id: %d\ndata: %s\n\n" % (i, b"tick " * 20)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/chunked.txt":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(PAGE), 3000):
                piece = PAGE[i:i + 3000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/big.txt":                       # 10 MiB of base64 text: compresses to ~3/4
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            digest = hashlib.sha256()
            for _ in range(160):
                piece = base64.b64encode(os.urandom(48 * 1024))
                digest.update(piece)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            self.server.big_digest = digest.hexdigest()
            return
        if path == "/small.json":
            return self._answer(200, SMALL, "application/json", head=head)
        if path == "/pre.txt":
            return self._answer(200, gzip.compress(PAGE), "text/plain", [("Content-Encoding", "gzip")], head=head)
        if path == "/nt.txt":
            return self._answer(200, PAGE, "text/plain", [("Cache-Control", "public, no-transform")], head=head)
        if path == "/image.png":
            return self._answer(200, PAGE, "image/png", head=head)
        if path == "/range.txt" and self.headers.get("Range"):
            return self._answer(206, PAGE[:100], "text/plain", [("Content-Range", f"bytes 0-99/{len(PAGE)}")])
        if path == "/etag.txt" and self.headers.get("If-None-Match") == '"v1"':
            return self._answer(304, b"", "text/plain", [("ETag", '"v1"')])
        self._answer(200, PAGE, "text/html; charset=utf-8",
                     [("ETag", '"v1"'), ("Accept-Ranges", "bytes"), ("Vary", "Origin")], head=head)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), ContentUpstream)
    upstream.daemon_threads = True
    upstream.gate = threading.Semaphore(0)
    upstream.accept_encodings = []
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    doc = {
        "revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
        "proxy_hosts": [{
            "id": 1, "domains": ["app.example.test"], "max_body_size": None,
            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}],
            "compression": ["gzip", "br", "zstd"],
            "locations": [{"path": "/api/", "upstreams": [], "compression": ["gzip"]},
                          {"path": "/raw/", "upstreams": [], "compression": []}],
            "ssl": {"certificate": "app", "force_https": False, "http2": True, "hsts": False},
        }, {
            "id": 2, "domains": ["plain.example.test"], "max_body_size": None, "locations": [],
            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}],
        }],
        "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
        "certificates": [issue_certificate(tmp, "app", "app.example.test")],
    }
    write_doc(tmp / "snapshot.json", doc)
    engine = engine_process(tmp / "snapshot.json", https=True)
    engine.wait_for(lambda r, d: r.status != 503)
    engine.tmp, engine.upstream = tmp, upstream
    yield engine
    engine.stop()
    upstream.shutdown()
    upstream.server_close()


def get(live, path, accept="gzip, br, zstd", method="GET", host="app.example.test", **headers):
    if accept is not None:
        headers["Accept-Encoding"] = accept
    response, data = live.request(method, path, host=host, headers={k.replace("_", "-"): v for k, v in headers.items()})
    return response, data


@pytest.mark.parametrize("name", ALL)
def test_live_each_encoding_round_trips(live, name):
    response, data = get(live, "/page.html", accept=f"{name}, identity;q=0.5")
    assert response.status == 200
    assert response.getheader("Content-Encoding") == name
    assert response.getheader("Content-Length") is None and response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Vary") == "Origin, Accept-Encoding"
    assert response.getheader("ETag") == 'W/"v1"' and response.getheader("Accept-Ranges") is None
    assert decode(name, data) == PAGE and len(data) < len(PAGE) // 3
    # The upstream saw the client's Accept-Encoding (the engine does not rewrite it).
    assert live.upstream.accept_encodings[-1] == f"{name}, identity;q=0.5"


def test_live_a_chunked_upstream_body_is_compressed_and_the_connection_kept(live):
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    for name in ALL:
        response, data = live.request("GET", "/chunked.txt", headers={"Accept-Encoding": name}, conn=conn)
        assert response.getheader("Content-Encoding") == name and decode(name, data) == PAGE
    response, data = live.request("GET", "/page.html", conn=conn)
    assert response.getheader("Content-Encoding") is None and data == PAGE      # no Accept-Encoding
    assert response.getheader("Vary") == "Origin, Accept-Encoding" and response.getheader("ETag") == '"v1"'
    conn.close()


@pytest.mark.parametrize("path, kwargs, status, vary", [
    ("/small.json", {}, 200, "Accept-Encoding"),                        # below the minimum size
    ("/image.png", {}, 200, None),                                      # not a compressible type
    ("/nt.txt", {}, 200, None),                                         # Cache-Control: no-transform
    ("/range.txt", {"Range": "bytes=0-99"}, 206, "Accept-Encoding"),    # a range request
    ("/page.html", {"method": "HEAD"}, 200, "Origin, Accept-Encoding"),
    ("/page.html", {"accept": "gzip;q=0, br;q=0, zstd;q=0"}, 200, "Origin, Accept-Encoding"),
    ("/page.html", {"accept": "gzip;q=7"}, 200, "Origin, Accept-Encoding"),   # malformed: identity
    ("/raw/page.html", {}, 200, "Origin"),                              # a location turning it off
    ("/page.html", {"host": "plain.example.test"}, 200, "Origin"),      # a host without compression
])
def test_live_responses_left_untouched(live, path, kwargs, status, vary):
    method = kwargs.pop("method", "GET")
    response, data = get(live, path, method=method, **kwargs)
    assert response.status == status
    assert response.getheader("Content-Encoding") is None
    assert response.getheader("Vary") == vary
    if method == "HEAD":
        assert data == b"" and response.getheader("Content-Length") == str(len(PAGE))
    else:
        assert response.getheader("Content-Length") == str(len(data))
        expected = {"/small.json": SMALL, "/range.txt": PAGE[:100]}.get(path, PAGE)
        assert data == expected


def test_live_already_encoded_and_not_modified_answers_pass_through(live):
    response, data = get(live, "/pre.txt", accept="br, gzip")
    assert response.getheader("Content-Encoding") == "gzip" and gzip.decompress(data) == PAGE
    assert response.getheader("Content-Length") == str(len(data))
    response, data = get(live, "/etag.txt", If_None_Match='"v1"')
    assert response.status == 304 and data == b"" and response.getheader("Content-Encoding") is None


def test_live_a_location_override_picks_its_own_encodings(live):
    response, data = get(live, "/api/page.json")
    assert response.getheader("Content-Encoding") == "gzip" and gzip.decompress(data) == PAGE
    response, data = get(live, "/api/page.json", accept="br, zstd")
    assert response.getheader("Content-Encoding") is None and data == PAGE


def test_live_an_http10_client_gets_identity_with_vary(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"GET /page.html HTTP/1.0\r\nHost: app.example.test\r\nAccept-Encoding: gzip\r\n\r\n")
        raw = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Encoding" not in head and b"Vary: Origin, Accept-Encoding" in head and body == PAGE


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def test_live_a_10_mib_body_streams_through_in_bounded_memory(live):
    """While the client does not read, the engine holds no more than an encoder's worth of
    the body (an encoder that kept its input until the end grows by ~7 MiB here); then the
    whole body arrives and decompresses to what was sent."""
    pid = live.proc.pid
    before = rss_kib(pid)
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    conn.request("GET", "/big.txt", headers={"Host": "app.example.test", "Accept-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.getheader("Content-Encoding") == "gzip"
    time.sleep(1.0)                               # not reading: socket buffers fill, the engine must wait
    stalled = rss_kib(pid)
    decoder = zlib.decompressobj(31)
    digest = hashlib.sha256()
    size = 0
    while True:
        data = response.read(65536)
        if not data:
            break
        plain = decoder.decompress(data)
        digest.update(plain)
        size += len(plain)
    conn.close()
    assert decoder.eof and size == 160 * 64 * 1024
    assert digest.hexdigest() == live.upstream.big_digest
    assert stalled - before < 5 * 1024, (before, stalled)
    assert rss_kib(pid) - before < 10 * 1024


def read_chunk(sock, buffer):
    """One chunk of a chunked body from `sock` (with what was already read in `buffer[0]`)."""
    while b"\r\n" not in buffer[0]:
        buffer[0] += sock.recv(65536)
    size_line, rest = buffer[0].split(b"\r\n", 1)
    size = int(size_line, 16)
    while len(rest) < size + 2:
        rest += sock.recv(65536)
    buffer[0] = rest[size + 2:]
    return rest[:size]


@pytest.mark.parametrize("name", ALL)
def test_live_an_event_stream_arrives_event_by_event(live, name):
    """Each event is decodable while the upstream still holds the next one back."""
    decoder = {"gzip": lambda: zlib.decompressobj(31), "br": brotli.Decompressor,
               "zstd": lambda: zstandard.ZstdDecompressor().decompressobj()}[name]()
    feed = decoder.process if name == "br" else decoder.decompress
    live.upstream.gate = threading.Semaphore(0)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: app.example.test\r\nAccept-Encoding: %s\r\n\r\n" % name.encode())
        buffer = [b""]
        while b"\r\n\r\n" not in buffer[0]:
            buffer[0] += sock.recv(65536)
        head, buffer[0] = buffer[0].split(b"\r\n\r\n", 1)
        assert b"Content-Encoding: " + name.encode() in head and b"Transfer-Encoding: chunked" in head
        for i in range(EVENTS):
            got = b""
            while b"\n\n" not in got:
                chunk = read_chunk(sock, buffer)
                assert chunk, f"the stream ended before event {i}"
                got += feed(chunk)
            assert got == b"id: %d\ndata: %s\n\n" % (i, b"tick " * 20)
            if i < EVENTS - 1:
                live.upstream.gate.release()      # only now may the upstream send the next event
        tail = b""
        while True:
            chunk = read_chunk(sock, buffer)
            if not chunk:
                break
            tail += feed(chunk)
        assert tail == b""


def curl_h2(live, path, *args):
    out = live.tmp / "body"
    result = subprocess.run(
        ["curl", "-s", "--http2", "--cacert", str(live.tmp / "ca.pem"), "-o", str(out), "-D", "-",
         "--resolve", f"app.example.test:{live.https_port}:127.0.0.1", *args,
         f"https://app.example.test:{live.https_port}{path}"], capture_output=True, text=True, timeout=20)
    lines = result.stdout.strip().splitlines()
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0] if lines else "", headers, out.read_bytes()


@pytest.mark.parametrize("name", ALL)
def test_live_http2_clients_get_compressed_answers(live, name):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    status, headers, body = curl_h2(live, "/page.html", "-H", f"Accept-Encoding: {name}")
    assert status.startswith("HTTP/2 200")
    assert headers["content-encoding"] == name and "content-length" not in headers
    assert headers["vary"] == "Origin, Accept-Encoding" and headers["etag"] == 'W/"v1"'
    assert decode(name, body) == PAGE
    status, headers, body = curl_h2(live, "/chunked.txt", "-H", f"Accept-Encoding: {name}")
    assert headers["content-encoding"] == name and decode(name, body) == PAGE
    status, headers, body = curl_h2(live, "/small.json", "-H", f"Accept-Encoding: {name}")
    assert "content-encoding" not in headers and body == SMALL and headers["content-length"] == str(len(SMALL))


# -- the protocols on fake transports: per-read flushing, pooled connections ---------------

def compressing_doc():
    doc = document()
    doc["proxy_hosts"][0]["compression"] = ["gzip", "br", "zstd"]
    return doc


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse_chunks(i):
    """One upstream read carrying event `i` split over several small chunks."""
    event = b"id: %d\ndata: %s\n\n" % (i, b"x" * 30)
    return b"".join(b"%x\r\n%s\r\n" % (len(event[j:j + 8]), event[j:j + 8]) for j in range(0, len(event), 8)), event


def test_h2_an_event_stream_is_flushed_per_upstream_read():
    from tests.engine.test_h2 import setup as h2_setup
    h, c = h2_setup(compressing_doc())
    sid = c.request(b"/events", extra=[(b"accept-encoding", b"gzip")])
    _, up, _ = h.connect_upstream()
    decoder = zlib.decompressobj(31)
    head = SSE_HEAD
    for i in range(3):
        wire, event = sse_chunks(i)
        up.dataReceived(head + wire)
        head = b""
        c.pump()
        answer = c.answers[sid]
        assert answer.header(b"content-encoding") == b"gzip" and answer.header(b"content-length") is None
        assert decoder.decompress(answer.data) == event and not answer.ended
        answer.data = b""
    up.dataReceived(b"0\r\n\r\n")
    c.pump()
    assert c.answers[sid].ended and decoder.decompress(c.answers[sid].data) == b"" and decoder.eof


def test_http1_one_flush_per_upstream_read_and_the_connection_goes_back_to_the_pool():
    from tests.engine.support import Harness
    h = Harness(compressing_doc())
    proto, transport = h.client()
    proto.dataReceived(b"GET /events HTTP/1.1\r\nHost: app.example.test\r\nAccept-Encoding: br\r\n\r\n")
    _, up, _ = h.connect_upstream()
    decoder = brotli.Decompressor()
    head = SSE_HEAD
    for i in range(3):
        wire, event = sse_chunks(i)
        up.dataReceived(head + wire)
        out = transport.value()
        transport.clear()
        if head:
            response_head, out = out.split(b"\r\n\r\n", 1)
            assert b"Content-Encoding: br" in response_head and b"Transfer-Encoding: chunked" in response_head
            head = b""
        size, _, rest = out.partition(b"\r\n")
        assert len(rest) == int(size, 16) + 2     # the whole read left as one compressed chunk
        assert decoder.process(rest[:-2]) == event
    up.dataReceived(b"0\r\n\r\n")
    out = transport.value()
    assert out.endswith(b"0\r\n\r\n") and decoder.is_finished() is False
    size, _, rest = out.partition(b"\r\n")
    decoder.process(rest[:int(size, 16)])
    assert decoder.is_finished()
    assert len(h.factory.pool.idle[("http", "10.0.1.10", 3000)]) == 1        # reusable after the body
