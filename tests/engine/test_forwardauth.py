"""Forward auth (proxy_engine.forwardauth): parsing, the subrequest's headers, the decision
table, the HTTP/1.1 and HTTP/2 wiring (pending requests, bodies held), and the real thing:
an engine process asking a real Authelia-like service before real upstreams."""
import hashlib
import http.client
import ipaddress
import json
import time

import pytest
from twisted.internet import defer
from twisted.internet import error as terror
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from proxy_engine.forwardauth import ALLOW, DENY, FAIL, Answer, ForwardAuth, _service_failure
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.edge_live import GOOD_COOKIE, LOGIN, edge, fresh, header  # noqa: F401 (fixtures)
from tests.engine.support import Harness, document
from tests.engine.test_h2 import H2Client

OPTIONS = {"url": "http://127.0.0.1:9091/api/verify", "response_headers": ["Remote-User", "Remote-Groups"],
           "timeout": 3.0}


def auth_doc(**options):
    doc = document()
    doc["proxy_hosts"][0]["forward_auth"] = {**OPTIONS, **options}
    return doc


def policy(**options):
    return ForwardAuth(parse_snapshot(auth_doc(**options)).proxy_hosts[0].forward_auth)


def triples(*pairs):
    return [(n.lower(), n, v) for n, v in pairs]


# -- parsing ---------------------------------------------------------------------------------------

def test_forward_auth_parses_with_defaults_and_is_off_when_absent():
    fa = parse_snapshot(auth_doc()).proxy_hosts[0].forward_auth
    assert (fa.url, fa.response_headers, fa.timeout) == (OPTIONS["url"], ("Remote-User", "Remote-Groups"), 3.0)
    doc = document()
    doc["proxy_hosts"][0]["forward_auth"] = {"url": "https://auth.example.test/api/authz/forward-auth"}
    fa = parse_snapshot(doc).proxy_hosts[0].forward_auth
    assert (fa.response_headers, fa.timeout) == ((), 5.0)
    assert parse_snapshot(document()).proxy_hosts[0].forward_auth is None


@pytest.mark.parametrize("options, path", [
    ({"url": "ftp://auth/"}, "proxy_hosts[0].forward_auth.url"),
    ({"url": 5}, "proxy_hosts[0].forward_auth.url"),
    ({"url": "http://bücher.example/verify"}, "proxy_hosts[0].forward_auth.url"),
    ({"response_headers": ["Remote User"]}, "proxy_hosts[0].forward_auth.response_headers[0]"),
    ({"response_headers": ["Host"]}, "proxy_hosts[0].forward_auth.response_headers[0]"),
    ({"response_headers": ["Transfer-Encoding"]}, "proxy_hosts[0].forward_auth.response_headers[0]"),
    ({"response_headers": "Remote-User"}, "proxy_hosts[0].forward_auth.response_headers"),
    ({"timeout": 0}, "proxy_hosts[0].forward_auth.timeout"),
    ({"timeout": "5"}, "proxy_hosts[0].forward_auth.timeout"),
])
def test_bad_forward_auth_is_refused_with_its_path(options, path):
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(auth_doc(**options))
    assert any(error.startswith(path + ":") for error in caught.value.errors), caught.value.errors


def test_a_missing_url_is_refused():
    doc = document()
    doc["proxy_hosts"][0]["forward_auth"] = {"timeout": 1.0}
    with pytest.raises(SnapshotError, match=r"proxy_hosts\[0\]\.forward_auth\.url: is required"):
        parse_snapshot(doc)


# -- the subrequest and the decision ----------------------------------------------------------------

def test_the_subrequest_carries_credentials_and_the_original_request_but_no_body_headers():
    headers = triples((b"Host", b"app.example.test"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"),
                      (b"Authorization", b"Bearer t"), (b"User-Agent", b"ua"), (b"Accept", b"text/html"),
                      (b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"X-Secret", b"s"))
    out = policy().request_headers(b"POST", b"/a/b?c=d", b"app.example.test", b"https", b"203.0.113.9", headers)
    assert out == {
        b"Cookie": [b"a=1; b=2"], b"Authorization": [b"Bearer t"], b"User-Agent": [b"ua"], b"Accept": [b"text/html"],
        b"X-Forwarded-Method": [b"POST"], b"X-Original-Method": [b"POST"], b"X-Forwarded-Proto": [b"https"],
        b"X-Forwarded-Host": [b"app.example.test"], b"X-Forwarded-Uri": [b"/a/b?c=d"],
        b"X-Forwarded-For": [b"203.0.113.9"], b"X-Original-URL": [b"https://app.example.test/a/b?c=d"]}


def test_the_client_address_comes_through_trusted_proxies_only():
    seen = []

    class Client:
        def get(self, url, headers, timeout):
            seen.append(headers)
            return defer.Deferred()

    fa = policy()
    trusted_net = ipaddress.ip_network("10.0.0.0/8")

    def trusts(peer):
        return peer is not None and peer in trusted_net

    xff = triples((b"X-Forwarded-For", b"203.0.113.9"), (b"X-Forwarded-Proto", b"https"))
    fa.ask(Client(), b"GET", b"/", b"a.test", b"http", ipaddress.ip_address("10.0.0.2"), b"10.0.0.2", True, trusts,
           xff, None)
    fa.ask(Client(), b"GET", b"/", b"a.test", b"http", ipaddress.ip_address("8.8.8.8"), b"8.8.8.8", False, trusts,
           xff, None)
    assert seen[0][b"X-Forwarded-For"] == [b"203.0.113.9"] and seen[0][b"X-Forwarded-Proto"] == [b"https"]
    assert seen[1][b"X-Forwarded-For"] == [b"8.8.8.8"] and seen[1][b"X-Forwarded-Proto"] == [b"http"]


def test_a_2xx_copies_the_named_headers_and_strips_the_clients_copies():
    decision = policy().decide(Answer(200, ((b"remote-user", b"alice"), (b"remote-email", b"a@x"),
                                            (b"set-cookie", b"s=1")), b""))
    assert decision.kind == ALLOW
    client = triples((b"Host", b"a"), (b"Remote-User", b"admin"), (b"REMOTE-GROUPS", b"root"), (b"X-A", b"1"))
    assert decision.apply(client) == [(b"host", b"Host", b"a"), (b"x-a", b"X-A", b"1"),
                                      (b"remote-user", b"Remote-User", b"alice")]


def test_3xx_and_4xx_go_back_to_the_client_with_their_headers():
    redirect = policy().decide(Answer(302, ((b"location", LOGIN.encode()), (b"set-cookie", b"a=1"),
                                            (b"set-cookie", b"b=2"), (b"content-type", b"text/html"),
                                            (b"remote-user", b"x"), (b"server", b"authelia")), b"<a>login</a>"))
    assert redirect.kind == DENY and redirect.status == 302 and redirect.cause is None
    assert redirect.lines == b"Location: " + LOGIN.encode() + b"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    assert redirect.pairs == ((b"location", LOGIN.encode()), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"))
    assert (redirect.body, redirect.content_type) == (b"<a>login</a>", b"text/html")
    empty = policy().decide(Answer(401, ((b"www-authenticate", b'Basic realm="x"'),), b""))
    assert empty.kind == DENY and empty.cause and empty.lines == b'WWW-Authenticate: Basic realm="x"\r\n'
    assert policy().decide(Answer(403, (), b"no")).status == 403


def test_a_304_is_not_passed_on_and_control_characters_never_are():
    from proxy_engine.forwardauth import _clean
    assert policy().decide(Answer(304, (), b"")).kind == FAIL
    assert _clean(b"alice") and _clean(b"a\tb") and not _clean(b"a\x00b") and not _clean(b"a\x7f")


def test_5xx_fails_closed_and_service_failures_name_the_service():
    failed = policy().decide(Answer(503, (), b""))
    assert failed.kind == FAIL and failed.status == 502 and "authentication service" in failed.cause
    refused = _service_failure(Failure(terror.ConnectionRefusedError()))
    assert (refused.status, refused.cause) == (502, "the authentication service is unreachable")
    timeout = _service_failure(Failure(defer.TimeoutError()))
    assert (timeout.status, timeout.cause) == (504, "the authentication service timed out")
    cancelled = _service_failure(Failure(ResponseNeverReceived([Failure(defer.CancelledError())])))
    assert (cancelled.status, cancelled.cause) == (504, "the authentication service timed out")
    lost = _service_failure(Failure(ResponseNeverReceived([Failure(terror.ConnectionLost())])))
    assert lost.status == 502 and "authentication service" in lost.cause and "upstream" not in lost.cause


# -- the protocols, with a controllable service -------------------------------------------------------

class Service:
    """An auth client whose answers the test gives (the protocol wiring is what is tested)."""

    def __init__(self):
        self.calls = []

    def get(self, url, headers, timeout):
        d = defer.Deferred()
        self.calls.append((url, headers, timeout, d))
        return d

    def answer(self, status, headers=(), body=b"", index=-1):
        self.calls[index][3].callback(Answer(status, tuple(headers), body))


def harness(doc=None):
    h = Harness(doc or auth_doc())
    h.service = h.factory.auth_client = Service()
    return h


def test_http1_the_request_waits_with_its_body_held_then_goes_up_with_the_services_headers():
    h = harness()
    client, ct = h.client()
    client.dataReceived(b"POST /up HTTP/1.1\r\nHost: app.example.test\r\nRemote-User: admin\r\n"
                        b"Content-Length: 10\r\n\r\nhello")
    assert h.reactor.tcpClients == [] and ct.value() == b""
    assert ct.producerState == "paused"                   # the rest of the upload waits
    url, headers, timeout, _ = h.service.calls[0]
    assert url == OPTIONS["url"].encode() and timeout == 3.0 and headers[b"X-Forwarded-Uri"] == [b"/up"]
    h.service.answer(200, [(b"remote-user", b"alice")])
    assert ct.producerState == "producing"
    client.dataReceived(b"world")
    _, up, ut = h.connect_upstream()
    sent = ut.value()
    assert b"admin" not in sent and b"Remote-User: alice\r\n" in sent and sent.endswith(b"\r\n\r\nhelloworld")


def test_http1_a_denial_is_answered_and_nothing_reaches_the_upstream():
    h = harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    h.service.answer(302, [(b"location", b"https://login/"), (b"set-cookie", b"f=1")], b"go")
    assert ct.value().startswith(b"HTTP/1.1 302 Found\r\n")
    assert b"Location: https://login/\r\nSet-Cookie: f=1\r\n" in ct.value() and ct.value().endswith(b"\r\n\r\ngo")
    assert h.reactor.tcpClients == []


def test_http1_a_failing_service_gives_502_recorded_against_the_service():
    h = harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nAccept: application/json\r\n\r\n")
    h.service.calls[0][3].errback(Failure(terror.ConnectionRefusedError()))
    assert ct.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert json.loads(ct.value().split(b"\r\n\r\n", 1)[1])["error"] == "the authentication service is unreachable"
    assert h.reactor.tcpClients == []
    (event,) = h.events.events
    assert event["upstream"] == "forward auth 127.0.0.1:9091" and event["status"] == 502


def test_http1_a_client_gone_while_waiting_is_left_alone():
    h = harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    client.connectionLost(None)
    h.service.answer(200)
    assert h.reactor.tcpClients == []


def test_the_access_list_runs_first_and_a_refused_client_never_reaches_the_service():
    doc = auth_doc()
    doc["proxy_hosts"][0]["access_list"] = "lan"
    doc["access_lists"] = [{"name": "lan", "rules": [{"action": "allow", "source": "192.168.0.0/16"},
                                                     {"action": "deny", "source": "all"}]}]
    h = harness(doc)
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 403 ") and h.service.calls == []
    h.peer = "192.168.1.5"
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert len(h.service.calls) == 1 and h.reactor.tcpClients == []


def test_a_host_without_forward_auth_never_asks():
    h = harness(document())
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert h.service.calls == [] and len(h.reactor.tcpClients) == 1


def test_h2_the_stream_waits_then_goes_up_or_is_denied():
    h = harness()
    c = H2Client(h)
    sid = c.request(b"/x", extra=[(b"remote-user", b"admin"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert h.reactor.tcpClients == [] and c.answers[sid].headers is None
    assert h.service.calls[0][1][b"Cookie"] == [b"a=1; b=2"]
    h.service.answer(200, [(b"remote-user", b"alice")])
    c.pump()
    _, up, ut = h.connect_upstream()
    assert b"admin" not in ut.value() and b"Remote-User: alice\r\n" in ut.value()
    sid = c.request(b"/y")
    h.service.answer(401, [(b"www-authenticate", b"Basic")], b"")
    c.pump()
    assert c.answers[sid].status == 401 and c.answers[sid].header(b"www-authenticate") == b"Basic"
    assert len(h.reactor.tcpClients) == 1


# -- the engine as a process, a real authentication service, real upstreams -----------------------------

def test_without_a_session_the_login_redirect_reaches_the_client_and_the_upstream_is_not_contacted(fresh):
    status, headers, body = fresh.request("POST", "/private?a=1", "auth.example.test", body=b"secret upload")
    assert status == 302
    assert header(headers, "location") == f"{LOGIN}?rd=http://auth.example.test/private?a=1"
    assert header(headers, "set-cookie") == ["authelia_flow=1; Path=/; HttpOnly", "authelia_rd=2; Path=/"]
    assert header(headers, "remote-user") is None and b"Found" in body
    assert fresh.upstream.seen == []
    (asked,) = fresh.auth.seen
    assert asked["method"] == "GET" and asked["body"] == b"" and "content-length" not in asked["headers"]
    assert asked["path"] == f"/api/verify?rd={LOGIN}"


def test_a_json_client_gets_the_services_401(fresh):
    status, headers, body = fresh.request("GET", "/api", "auth.example.test", headers={"Accept": "application/json"})
    assert status == 401 and header(headers, "www-authenticate") == 'Basic realm="Authorization Required"'
    assert header(headers, "content-type") == "application/json" and json.loads(body) == {"status": "Unauthorized"}
    assert fresh.upstream.seen == []


def test_a_good_session_reaches_the_upstream_with_the_services_identity_not_the_clients(fresh):
    status, _, body = fresh.request("GET", "/app?x=1", "auth.example.test", headers={
        "Cookie": GOOD_COOKIE, "Remote-User": "admin", "Remote-Groups": "root", "User-Agent": "test-agent"})
    assert status == 200
    seen = json.loads(body)
    assert seen["headers"]["remote-user"] == "alice" and seen["headers"]["remote-groups"] == "admins,dev"
    assert [v for n, v in seen["all"] if n == "remote-user"] == ["alice"]
    assert "remote-email" not in seen["headers"]                   # only the configured names are copied
    (asked,) = fresh.auth.seen
    h = asked["headers"]
    assert h["cookie"] == GOOD_COOKIE and h["user-agent"] == "test-agent"
    assert (h["x-forwarded-method"], h["x-forwarded-proto"], h["x-forwarded-host"], h["x-forwarded-uri"]) == (
        "GET", "http", "auth.example.test", "/app?x=1")
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-original-method"] == "GET"
    assert h["x-original-url"] == "http://auth.example.test/app?x=1"
    assert "remote-user" not in h                                  # the client's spoof is not sent to the service


def test_a_spoofed_identity_header_is_stripped_even_when_the_service_does_not_send_it(fresh):
    status, _, body = fresh.request("GET", "/", "nogroups.example.test",
                                    headers={"Cookie": GOOD_COOKIE, "Remote-Groups": "root"})
    seen = json.loads(body)
    assert status == 200 and seen["headers"]["remote-user"] == "alice" and "remote-groups" not in seen["headers"]


def test_an_allowed_upload_arrives_whole(fresh):
    payload = bytes(range(256)) * 4096                               # 1 MiB
    status, _, body = fresh.request("POST", "/upload", "auth.example.test", body=payload,
                                    headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert status == 200 and json.loads(body)["length"] == len(payload)
    (entry,) = fresh.upstream.seen
    assert hashlib.sha256(entry["body"]).digest() == hashlib.sha256(payload).digest()


def test_a_denials_body_is_bounded(fresh):
    status, _, body = fresh.request("GET", "/", "big.example.test")
    assert status == 401 and body == b"x" * 65536 and fresh.upstream.seen == []


def test_the_service_is_reached_over_kept_alive_connections(fresh):
    conn = http.client.HTTPConnection("127.0.0.1", fresh.port, timeout=15)
    for _ in range(6):
        status, _, _ = fresh.request("GET", "/k", "auth.example.test", headers={"Cookie": GOOD_COOKIE}, conn=conn)
        assert status == 200
    conn.close()
    ports = {entry["port"] for entry in fresh.auth.seen}
    assert len(fresh.auth.seen) == 6 and len(ports) == 1


@pytest.mark.parametrize("name, status, cause", [
    ("down.example.test", 502, "the authentication service is unreachable"),
    ("error.example.test", 502, "the authentication service failed"),
    ("slow.example.test", 504, "the authentication service timed out"),
    ("tls.example.test", 502, "TLS handshake with the authentication service failed"),
])
def test_a_failing_service_fails_closed_naming_the_service(fresh, name, status, cause):
    started = time.monotonic()
    got, _, body = fresh.request("POST", "/x", name, body=b"data",
                                 headers={"Cookie": GOOD_COOKIE, "Accept": "application/json"})
    assert (got, json.loads(body)["error"]) == (status, cause)
    assert fresh.upstream.seen == []
    if name == "slow.example.test":
        assert time.monotonic() - started < 1.8                  # the 0.5 s timeout, not the service's 2 s
    if name == "tls.example.test":
        assert fresh.tls_auth.seen == []                          # an unverified service is never asked


def test_http2_denial_allowance_and_the_stripped_spoof(fresh):
    version, status, headers, body = fresh.h2("GET", "/h2", "auth.example.test")
    assert (version, status) == ("2", 302) and header(headers, "location").startswith(LOGIN)
    assert fresh.upstream.seen == []
    version, status, headers, body = fresh.h2("POST", "/h2up", "auth.example.test", data=b"z" * 200_000,
                                              headers=[f"Cookie: {GOOD_COOKIE}", "Remote-User: admin"])
    assert (version, status) == ("2", 200)
    seen = json.loads(body)
    assert seen["length"] == 200_000 and seen["headers"]["remote-user"] == "alice"
    assert fresh.auth.seen[-1]["headers"]["x-forwarded-proto"] == "https"
    version, status, _, body = fresh.h2("GET", "/x", "down.example.test", headers=["Accept: application/json"])
    assert status == 502 and json.loads(body)["error"] == "the authentication service is unreachable"


def test_http1_a_websocket_upgrade_waits_for_the_service_then_tunnels():
    h = harness()
    client, ct = h.client()
    client.dataReceived(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                        b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\nearly")
    assert len(h.service.calls) == 1 and h.reactor.tcpClients == []
    h.service.answer(200, [(b"remote-user", b"alice")])
    _, up, ut = h.connect_upstream()
    assert b"Remote-User: alice\r\n" in ut.value() and b"Upgrade: websocket\r\n" in ut.value()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 101 ")
    client.dataReceived(b"more")
    assert ut.value().endswith(b"\r\n\r\nearlymore")
