"""HTTP/2 clients (proxy_engine.h2protocol): an h2 client-side connection talks to H2Protocol
over StringTransports on a MemoryReactorClock; upstreams are StringTransports too. At the end,
the engine as a process answers curl --http2 over TLS (ALPN h2)."""
import json
import shutil
import subprocess

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, InformationalResponseReceived
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from twisted.internet import error as terror
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from proxy_engine.h2protocol import STREAM_WINDOW, H2Protocol, request_from_headers, response_headers
from proxy_engine.snapshot import parse_snapshot
from tests.engine.support import Harness, document
from tests.live import engine_process, issue_certificate, start_upstream, stop_upstream, write_doc


class ListLog:
    def __init__(self):
        self.entries = []

    def record(self, entry):
        self.entries.append(entry)


class Answer:
    def __init__(self):
        self.headers = None
        self.interim = []
        self.data = b""
        self.ended = False
        self.reset = None

    @property
    def status(self):
        return int(dict(self.headers)[b":status"])

    def header(self, name):
        return dict(self.headers).get(name)


class H2Client:
    """The client end: an h2 client connection wired to an H2Protocol."""

    def __init__(self, harness, auto_ack=True, window=None):
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.auto_ack = auto_ack
        self.answers = {}
        self.server = H2Protocol(harness.factory)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", harness.peer, 40000))
        self.server.makeConnection(self.transport)
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({4: window})      # SETTINGS_INITIAL_WINDOW_SIZE
        self.pump()

    def request(self, path=b"/", method=b"GET", authority=b"app.example.test", extra=(), end=True):
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path)]
        self.h2.send_headers(stream_id, headers + list(extra), end_stream=end)
        self.answers[stream_id] = Answer()
        self.pump()
        return stream_id

    def send(self, stream_id, data, end=False):
        for start in range(0, len(data), 16384):
            self.h2.send_data(stream_id, data[start:start + 16384])
        if end or not data:
            self.h2.send_data(stream_id, b"", end_stream=end)
        self.pump()

    def reset(self, stream_id):
        self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.pump()

    def ack(self, stream_id, size):
        self.h2.acknowledge_received_data(size, stream_id)
        self.pump()

    def pump(self):
        """Move bytes both ways until neither side has anything more to say."""
        while True:
            out = self.h2.data_to_send()
            if out:
                self.server.dataReceived(out)
            received = self.transport.value()
            self.transport.clear()
            if received:
                self.handle(self.h2.receive_data(received))
            if not out and not received:
                return

    def handle(self, events):
        for event in events:
            answer = self.answers.get(getattr(event, "stream_id", None))
            if isinstance(event, ResponseReceived):
                answer.headers = event.headers
            elif isinstance(event, InformationalResponseReceived):
                answer.interim.append(event.headers)
            elif isinstance(event, DataReceived):
                answer.data += event.data
                if self.auto_ack:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                answer.ended = True
            elif isinstance(event, StreamReset):
                answer.reset = event.error_code


def setup(doc=None, **client_options):
    h = Harness(doc)
    h.factory.access_log = ListLog()
    return h, H2Client(h, **client_options)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-App: yes\r\n\r\nhi"


def test_a_get_is_proxied_with_host_from_authority_and_forwarded_headers():
    h, c = setup()
    sid = c.request(b"/path?q=1")
    (host, port, timeout), up, ut = h.connect_upstream()
    assert (host, port, timeout) == ("10.0.1.10", 3000, 5.0)
    sent = ut.value()
    assert sent.startswith(b"GET /path?q=1 HTTP/1.1\r\nHost: app.example.test\r\n")
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in sent and b"X-Forwarded-Proto: http\r\n" in sent
    assert b"X-Forwarded-Host: app.example.test\r\n" in sent and b":authority" not in sent
    assert sent.endswith(b"\r\n\r\n") and b"Content-Length" not in sent
    up.dataReceived(OK)
    c.pump()
    answer = c.answers[sid]
    assert answer.status == 200 and answer.data == b"hi" and answer.ended
    assert answer.header(b"x-app") == b"yes" and answer.header(b"x-request-id") == b"t-1"
    assert answer.header(b"connection") is None and answer.header(b"content-length") == b"2"
    (entry,) = h.factory.access_log.entries
    assert entry[1:5] == (b"app.example.test", b"GET", b"/path?q=1", 200)
    assert h.factory.active == 0


def test_the_upstream_connection_goes_back_to_the_pool_for_the_next_stream():
    h, c = setup()
    c.request()
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    c.pump()
    ut.clear()
    sid = c.request()
    assert len(h.reactor.tcpClients) == 1 and ut.value().startswith(b"GET / HTTP/1.1")
    up.dataReceived(OK)
    c.pump()
    assert c.answers[sid].data == b"hi"


def test_two_concurrent_streams_are_answered_independently():
    h, c = setup()
    first = c.request(b"/one")
    second = c.request(b"/two")
    _, up1, ut1 = h.connect_upstream(0)
    _, up2, ut2 = h.connect_upstream(1)
    assert ut1.value().startswith(b"GET /one ") and ut2.value().startswith(b"GET /two ")
    up2.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n")
    up1.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\non")
    c.pump()
    assert c.answers[second].data == b"two" and c.answers[first].data == b"on"
    assert not c.answers[first].ended and not c.answers[second].ended
    up1.dataReceived(b"e-on")
    up2.dataReceived(b"0\r\n\r\n")
    c.pump()
    assert (c.answers[first].status, c.answers[first].data, c.answers[first].ended) == (201, b"one-on", True)
    assert (c.answers[second].status, c.answers[second].data, c.answers[second].ended) == (200, b"two", True)
    assert c.answers[second].header(b"x-request-id") == b"t-2"
    assert len(h.factory.access_log.entries) == 2


def test_a_post_body_is_streamed_up_chunked_and_acknowledged_after_forwarding():
    h, c = setup()
    sid = c.request(b"/up", method=b"POST", end=False)
    c.send(sid, b"hello")
    _, up, ut = h.connect_upstream()
    assert ut.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    window = c.h2.local_flow_control_window(sid)
    c.send(sid, b"abc")
    assert ut.value().endswith(b"3\r\nabc\r\n")
    c.send(sid, b"", end=True)
    assert ut.value().endswith(b"0\r\n\r\n")
    assert c.h2.local_flow_control_window(sid) >= window - 3 and h.factory.access_log.entries == []
    up.dataReceived(OK)
    c.pump()
    assert c.answers[sid].data == b"hi"
    assert h.factory.access_log.entries[0][5] > 8      # bytes in: head + body


def test_a_complete_body_with_content_length_is_sent_with_it():
    h, c = setup()
    sid = c.request(b"/up", method=b"POST", end=False, extra=[(b"content-length", b"4")])
    c.send(sid, b"data", end=True)
    _, up, ut = h.connect_upstream()
    assert ut.value().endswith(b"Content-Length: 4\r\n\r\ndata")


def test_a_slow_upstream_holds_back_the_request_window():
    doc = document()
    doc["proxy_hosts"][0]["max_body_size"] = None
    h, c = setup(doc)
    sid = c.request(b"/up", method=b"POST", end=False)
    _, up, ut = h.connect_upstream()
    stream = c.server.streams[sid]
    ut.producer.pauseProducing()                       # the upstream's write buffer is full
    c.send(sid, b"x" * 1000)
    c.send(sid, b"y" * 1000)
    assert ut.value().endswith(b"y" * 1000 + b"\r\n") and stream.unacked == 2000
    ut.producer.resumeProducing()
    assert stream.unacked == 0
    c.send(sid, b"z" * 200_000)                        # more than half the window: h2 sends WINDOW_UPDATE
    assert c.h2.local_flow_control_window(sid) > STREAM_WINDOW - 202_000


def test_a_large_response_is_sent_only_as_the_client_window_allows():
    h, c = setup(auto_ack=False, window=10000)
    sid = c.request()
    _, up, ut = h.connect_upstream()
    body = bytes(range(256)) * 1024                    # 256 KiB
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:150_000])
    c.pump()
    answer = c.answers[sid]
    assert len(answer.data) == 10000 and not answer.ended
    assert ut.producerState == "paused"                # upstream reading paused
    rest = body[150_000:]
    while not answer.ended:
        got = len(answer.data)
        c.ack(sid, 10000)
        assert len(answer.data) - got <= 10000
        if rest and ut.producerState == "producing":
            up.dataReceived(rest)
            rest = b""
    assert answer.data == body and not rest
    assert up.state == "idle" and ut.producerState == "producing"


def test_a_client_reset_aborts_the_upstream_and_logs_499():
    h, c = setup()
    sid = c.request()
    _, up, ut = h.connect_upstream()
    c.reset(sid)
    assert ut.disconnecting or ut.disconnected
    (entry,) = h.factory.access_log.entries
    assert entry[4] == 499
    assert [e["status"] for e in h.events.events] == [499]
    assert h.factory.active == 0
    other = c.request()
    _, up2, _ = h.connect_upstream()
    up2.dataReceived(OK)
    c.pump()
    assert c.answers[other].data == b"hi"


def test_rapid_resets_exhaust_the_budget_and_close_the_connection():
    from proxy_engine.h2protocol import RESET_BURST

    h, c = setup()
    for _ in range(RESET_BURST):
        c.reset(c.request())
    assert not c.transport.disconnecting, "resets within the budget are allowed"
    h.reactor.advance(1.0)                 # the budget refills with time
    for _ in range(40):
        c.reset(c.request())
    assert not c.transport.disconnecting
    allowed = 0
    while not c.transport.disconnecting and allowed < 100:
        c.reset(c.request())
        allowed += 1
    assert c.transport.disconnecting and allowed == 11, allowed   # 50 refilled - 40 used, then one too many


def test_a_client_reset_during_an_upload_aborts_the_upstream_and_keeps_the_connection():
    h, c = setup()
    sid = c.request(b"/up", method=b"POST", end=False)
    c.send(sid, b"part")
    _, up, ut = h.connect_upstream()
    c.reset(sid)
    assert ut.disconnecting and h.factory.access_log.entries[0][4] == 499
    assert not c.transport.disconnecting and c.server.streams == {}


def test_a_connection_specific_header_resets_the_stream_with_protocol_error():
    h, c = setup()
    c.h2.config.validate_outbound_headers = c.h2.config.normalize_outbound_headers = False
    sid = c.request(extra=[(b"connection", b"keep-alive")])
    assert c.answers[sid].reset == ErrorCodes.PROTOCOL_ERROR
    assert h.reactor.tcpClients == []
    assert h.factory.access_log.entries[0][4] == 400
    ok = c.request()                                   # the connection stays usable
    _, up, _ = h.connect_upstream()
    up.dataReceived(OK)
    c.pump()
    assert c.answers[ok].data == b"hi"


def test_a_declared_body_over_max_body_size_is_refused_with_413():
    h, c = setup()
    sid = c.request(b"/up", method=b"POST", end=False, extra=[(b"content-length", b"5000")])
    answer = c.answers[sid]
    assert answer.status == 413 and answer.ended and b"t-1" in answer.data
    assert answer.reset == ErrorCodes.NO_ERROR                  # "stop sending"
    assert h.reactor.tcpClients == []


def test_a_streamed_body_over_max_body_size_aborts_the_upstream_with_413():
    h, c = setup()
    sid = c.request(b"/up", method=b"PUT", end=False)
    _, up, ut = h.connect_upstream()
    c.send(sid, b"x" * 800)
    c.send(sid, b"x" * 800)
    assert c.answers[sid].status == 413 and ut.disconnecting
    assert h.factory.access_log.entries[0][4] == 413


def test_redirect_dead_host_and_default_site_are_answered_locally():
    h, c = setup()
    redirect = c.request(b"/a?b", authority=b"old.example.test")
    dead = c.request(authority=b"gone.example.test")
    unknown = c.request(authority=b"nobody.example.test:8443")
    assert c.answers[redirect].status == 301
    assert c.answers[redirect].header(b"location") == b"https://new.example.test/a?b"
    assert c.answers[dead].status == 404 and c.answers[unknown].status == 404
    assert b"nothing configured" in c.answers[unknown].data and c.answers[unknown].ended
    assert h.reactor.tcpClients == []


def test_a_444_default_site_resets_the_stream():
    doc = document(settings={"default_site": {"action": "444"}, "trusted_proxies": []})
    h, c = setup(doc)
    sid = c.request(authority=b"nobody.example.test")
    assert c.answers[sid].reset == ErrorCodes.CANCEL and c.answers[sid].headers is None
    assert h.factory.access_log.entries[0][4] == 444


def test_it_returns_502_with_the_request_id_when_the_upstream_refuses():
    h, c = setup()
    sid = c.request(extra=[(b"accept", b"application/json")])
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(terror.ConnectionRefusedError()))
    c.pump()
    answer = c.answers[sid]
    assert answer.status == 502 and answer.ended
    assert answer.data == b'{"status": 502, "error": "connection refused by the upstream service", "request_id": "t-1"}'
    assert h.events.events[0]["status"] == 502 and h.events.events[0]["upstream"] == "10.0.1.10:3000"


def test_it_returns_504_when_the_upstream_is_silent():
    h, c = setup()
    sid = c.request()
    h.connect_upstream()
    h.reactor.advance(31)
    c.pump()
    assert c.answers[sid].status == 504


def test_expect_100_continue_gets_an_interim_answer():
    h, c = setup()
    sid = c.request(b"/up", method=b"POST", end=False, extra=[(b"expect", b"100-continue")])
    assert c.answers[sid].interim[0] == [(b":status", b"100")]


def test_go_away_lets_started_streams_finish_then_closes():
    h, c = setup()
    sid = c.request()
    _, up, _ = h.connect_upstream()
    c.server.go_away()
    (goaway,) = frames(c.transport)
    assert (goaway.type, goaway.last_stream_id, goaway.error_code) == (GoAwayFrame.type, sid, 0)
    assert not c.transport.disconnecting
    c.h2.send_headers(sid + 2, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"app.example.test"),
                                (b":path", b"/")], end_stream=True)
    c.server.dataReceived(c.h2.data_to_send())          # a stream opened after GOAWAY is refused
    (refused,) = frames(c.transport)
    assert (refused.type, refused.stream_id, refused.error_code) == (RstStreamFrame.type, sid + 2, 7)
    up.dataReceived(OK)                                 # the started one finishes
    answer = frames(c.transport)
    assert [f.type for f in answer] == [HeadersFrame.type, DataFrame.type]
    assert answer[1].data == b"hi" and "END_STREAM" in answer[1].flags and c.transport.disconnecting


def frames(transport):
    """The frames a server wrote (and clear them)."""
    data = transport.value()
    transport.clear()
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        found.append(frame)
        data = data[9 + length:]
    return found


def test_an_idle_connection_is_closed_with_go_away():
    h, c = setup()
    h.reactor.advance(25)
    assert c.transport.disconnecting


def test_request_headers_translate_to_a_host_and_triples():
    method, path, host, triples, length, _ = request_from_headers([
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/x"),
        (b"content-length", b"3"), (b"cookie", b"a=1; b=2")])
    assert (method, path, host, length) == (b"POST", b"/x", b"a.test", 3)
    assert triples == [(b"host", b"Host", b"a.test"), (b"content-length", b"content-length", b"3"),
                       (b"cookie", b"cookie", b"a=1; b=2")]


def test_response_headers_drop_hop_by_hop_and_what_connection_names():
    headers = [(b"connection", b"Connection", b"x-secret"), (b"x-secret", b"X-Secret", b"1"),
               (b"keep-alive", b"Keep-Alive", b"5"), (b"set-cookie", b"Set-Cookie", b"a=1")]
    assert response_headers(200, headers, b"r-1", 10) == [
        (b":status", b"200"), (b"set-cookie", b"a=1"), (b"x-request-id", b"r-1"), (b"content-length", b"10")]


def test_hsts_goes_out_on_https_answers_from_the_upstream():
    doc = document()
    doc["proxy_hosts"][0]["ssl"] = {"certificate": None, "force_https": False, "http2": True, "hsts": True,
                                    "hsts_subdomains": True}
    h = Harness(doc)
    h.factory.scheme = b"https"
    h.factory.swap(parse_snapshot(doc))
    c = H2Client(h)
    sid = c.request()
    _, up, ut = h.connect_upstream()
    assert b"X-Forwarded-Proto: https\r\n" in ut.value()
    up.dataReceived(OK)
    c.pump()
    assert c.answers[sid].header(b"strict-transport-security") == b"max-age=31536000; includeSubDomains"


def test_an_acme_challenge_is_answered_for_any_host():
    doc = document(acme_challenges=[{"token": "tok", "key_authorization": "tok.key"}])
    h, c = setup(doc)
    sid = c.request(b"/.well-known/acme-challenge/tok", authority=b"nobody.example.test")
    assert (c.answers[sid].status, c.answers[sid].data) == (200, b"tok.key")


# -- the engine as a process: curl --http2 over TLS (ALPN h2) ---------------------------------

@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory):
    if not shutil.which("curl") or "HTTP2" not in subprocess.run(
            ["curl", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    tmp = tmp_path_factory.mktemp("h2")
    upstream = start_upstream("plain")
    doc = {
        "revision": 1, "settings": {"default_site": {"action": "404"}, "trusted_proxies": []},
        "proxy_hosts": [{
            "id": 1, "domains": ["app.example.test"], "max_body_size": None, "locations": [],
            "upstreams": [{"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}],
            "ssl": {"certificate": "app", "force_https": False, "http2": True, "hsts": False,
                    "hsts_subdomains": False}}],
        "redirection_hosts": [], "dead_hosts": [], "streams": [], "access_lists": [],
        "certificates": [issue_certificate(tmp, "app", "app.example.test")],
    }
    write_doc(tmp / "snapshot.json", doc)
    engine = engine_process(tmp / "snapshot.json", https=True)
    engine.wait_for(lambda r, d: r.status != 503)
    yield tmp, engine.https_port
    engine.stop()
    stop_upstream(upstream)


def curl(tls_engine, *args):
    tmp, port = tls_engine
    result = subprocess.run(
        ["curl", "-s", "--http2", "--cacert", str(tmp / "ca.pem"), "--resolve", f"app.example.test:{port}:127.0.0.1",
         "-w", "\n%{http_version} %{response_code}", *args], capture_output=True, text=True, timeout=20)
    body, _, status = result.stdout.rpartition("\n")
    return status, body


def test_curl_gets_http2_through_alpn_and_the_request_reaches_the_upstream(tls_engine):
    _, port = tls_engine
    status, body = curl(tls_engine, f"https://app.example.test:{port}/h2?x=1")
    assert status == "2 200"
    seen = json.loads(body)
    assert seen["path"] == "/h2?x=1" and seen["headers"]["host"] == f"app.example.test:{port}"
    assert seen["headers"]["x-forwarded-proto"] == "https"


def test_curl_posts_a_body_and_fetches_several_urls_on_one_http2_connection(tls_engine):
    tmp, port = tls_engine
    (tmp / "payload").write_bytes(b"z" * 300_000)
    status, body = curl(tls_engine, "--data-binary", f"@{tmp / 'payload'}", f"https://app.example.test:{port}/upload")
    assert status == "2 200" and json.loads(body)["length"] == 300_000
    status, body = curl(tls_engine, "--parallel", f"https://app.example.test:{port}/a",
                        f"https://app.example.test:{port}/chunked")
    assert body.count('"path": "/a"') == 1 and body.count("piece-4;") == 100
