"""Header rules: parsing, compilation per route, application in both directions (HTTP/1.1, HTTP/2)."""
import pytest

from proxy_engine.h2protocol import response_headers
from proxy_engine.headerrules import Compiled, HeaderRules, build_route_rules
from proxy_engine.headers import client_response_head, upstream_request_head
from proxy_engine.routing import Router
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import Harness, document
from tests.engine.test_h2 import setup as h2_setup


def triples(*pairs):
    return [(n.lower(), n, v) for n, v in pairs]


def with_headers(host_headers=None, location_headers=None, ssl=None):
    doc = document()
    host = doc["proxy_hosts"][0]
    if host_headers is not None:
        host["headers"] = host_headers
    if location_headers is not None:
        host["locations"][0]["headers"] = location_headers
    if ssl is not None:
        host["ssl"] = ssl
    return doc


def route_of(doc, scheme=b"http"):
    return Router(parse_snapshot(doc), scheme).route(b"app.example.test")


# -- parsing ---------------------------------------------------------------------------------

def test_rules_parse_into_frozen_objects_with_set_add_and_lower_cased_remove():
    host = parse_snapshot(with_headers({"request": {"set": {"X-Env": "home"}, "add": {"X-Tag": " a "},
                                                    "remove": ["X-Debug"]},
                                        "response": {"remove": ["Server"]}})).proxy_hosts[0]
    assert host.request_headers == HeaderRules((("X-Env", "home"),), ("x-debug",), (("X-Tag", "a"),))
    assert host.response_headers == HeaderRules((), ("server",), ())
    with pytest.raises(Exception):
        host.request_headers.set = ()


@pytest.mark.parametrize("rules, message", [
    ({"request": {"set": {"X-A": "a\r\nEvil: 1"}}}, "control characters"),
    ({"request": {"add": {"X-A": "a\nb"}}}, "control characters"),
    ({"response": {"set": {"X-A": "\x00"}}}, "control characters"),
    ({"response": {"set": {"X-A": "\u2603"}}}, "Latin-1"),
    ({"response": {"set": {"Bad Name": "1"}}}, "not a valid header name"),
    ({"response": {"remove": ["X:Y"]}}, "not a valid header name"),
    ({"request": {"set": {"Transfer-Encoding": "chunked"}}}, "managed by the proxy"),
    ({"response": {"remove": ["Content-Length"]}}, "managed by the proxy"),
    ({"request": {"add": {"Connection": "close"}}}, "managed by the proxy"),
    ({"request": {"set": {"X-A": 1}}}, "control characters"),
])
def test_invalid_rules_refuse_the_snapshot(rules, message):
    with pytest.raises(SnapshotError, match=message):
        parse_snapshot(with_headers(rules))


def test_location_headers_parse_per_direction_and_none_inherits():
    host = parse_snapshot(with_headers(location_headers={"response": {"set": {"Cache-Control": "max-age=60"}}})).proxy_hosts[0]
    request, response = host.locations[0].headers
    assert not request and response.set == (("Cache-Control", "max-age=60"),)
    assert host.locations[1].headers is None


# -- compilation and pure application -------------------------------------------------------------

def test_a_route_without_rules_carries_none():
    assert route_of(document()).header_rules is None
    assert build_route_rules(parse_snapshot(document()).proxy_hosts[0]) is None


def test_request_set_replaces_every_duplicate_remove_is_case_insensitive_and_add_appends():
    rules = Compiled(HeaderRules(set=(("X-Env", "home"),), remove=("x-debug",), add=(("X-Tag", "b"),)))
    headers = triples((b"Host", b"app.example.test"), (b"x-env", b"1"), (b"X-ENV", b"2"), (b"X-Debug", b"on"),
                      (b"X-DEBUG", b"on"), (b"X-Tag", b"a"), (b"Accept", b"*/*"))
    head = upstream_request_head(b"GET", b"/", headers, b"192.0.2.7", b"http", b"app.example.test", False, b"",
                                 None, rules)
    assert head == (b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Tag: a\r\nAccept: */*\r\n"
                    b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: app.example.test\r\n"
                    b"X-Real-IP: 192.0.2.7\r\nX-Env: home\r\nX-Tag: b\r\n\r\n")


def test_request_rules_naming_the_proxys_forwarded_headers_apply_to_them():
    rules = Compiled(HeaderRules(set=(("X-Forwarded-Proto", "https"),), remove=("x-real-ip",)))
    head = upstream_request_head(b"GET", b"/", [], b"192.0.2.7", b"http", b"h.test", False, b"", None, rules)
    assert b"X-Real-IP" not in head and head.count(b"X-Forwarded-Proto") == 1
    assert b"X-Forwarded-Proto: https\r\n" in head and b"X-Forwarded-For: 192.0.2.7\r\n" in head


def test_response_rules_remove_upstream_identity_and_set_security_headers():
    rules = Compiled(HeaderRules(set=(("X-Frame-Options", "DENY"),), remove=("server", "x-powered-by")))
    headers = triples((b"Server", b"nginx/1.2"), (b"x-powered-by", b"PHP"), (b"X-Frame-Options", b"ALLOW"),
                      (b"Content-Type", b"text/plain"))
    head = client_response_head(b"HTTP/1.1 200 OK\r\n", headers, b"Content-Length: 0\r\n", b"", rules)
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Frame-Options: DENY\r\n"
                    b"Content-Length: 0\r\n\r\n")
    h2 = response_headers(200, headers, b"t-1", 0, rules)
    assert h2 == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-frame-options", b"DENY"),
                  (b"x-request-id", b"t-1"), (b"content-length", b"0")]


def test_without_rules_heads_are_byte_identical_to_before():
    headers = triples((b"Host", b"a.test"), (b"Server", b"x"), (b"Connection", b"keep-alive"), (b"X-A", b"1"))
    assert upstream_request_head(b"GET", b"/", headers, b"192.0.2.7", b"http", b"a.test", False, b"") == (
        upstream_request_head(b"GET", b"/", headers, b"192.0.2.7", b"http", b"a.test", False, b"", None, None))
    assert upstream_request_head(b"GET", b"/", headers, b"192.0.2.7", b"http", b"a.test", False, b"") == (
        b"GET / HTTP/1.1\r\nHost: a.test\r\nServer: x\r\nX-A: 1\r\nX-Forwarded-For: 192.0.2.7\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nX-Real-IP: 192.0.2.7\r\n\r\n")
    assert client_response_head(b"HTTP/1.1 200 OK\r\n", headers, b"") == (
        b"HTTP/1.1 200 OK\r\nHost: a.test\r\nServer: x\r\nX-A: 1\r\n\r\n")
    assert response_headers(200, headers, b"t-1", None) == [
        (b":status", b"200"), (b"host", b"a.test"), (b"server", b"x"), (b"x-a", b"1"), (b"x-request-id", b"t-1")]


def test_location_rules_override_the_hosts_and_locations_without_headers_inherit():
    route = route_of(with_headers({"response": {"set": {"X-Host": "1"}}},
                                  {"response": {"set": {"X-Static": "1"}}}))
    assert route.header_rules.for_path(b"/static/a.css").response.lines == b"X-Static: 1\r\n"
    assert route.header_rules.for_path(b"/static/a.css").request is None     # the override is the whole value
    assert route.header_rules.for_path(b"/static/big/x").response.lines == b"X-Host: 1\r\n"  # headers None: inherit
    assert route.header_rules.for_path(b"/other").response.lines == b"X-Host: 1\r\n"


def test_only_a_location_with_rules_still_compiles_for_the_route():
    route = route_of(with_headers(location_headers={"request": {"remove": ["Cookie"]}}))
    assert route.header_rules.for_path(b"/static/x").request.drop == {b"cookie"}
    assert route.header_rules.for_path(b"/x").request is None


# -- through the protocols -------------------------------------------------------------------------

RULES = {"request": {"set": {"X-Env": "home"}, "remove": ["Cookie"], "add": {"X-Tag": "proxy"}},
         "response": {"set": {"X-Content-Type-Options": "nosniff"}, "remove": ["Server", "X-Powered-By"]}}
UPSTREAM = (b"HTTP/1.1 200 OK\r\nServer: Apache\r\nX-Powered-By: PHP\r\nX-App: yes\r\n"
            b"Content-Length: 2\r\n\r\nhi")


def test_http11_request_rules_reach_the_upstream_and_response_rules_reach_the_client():
    h = Harness(with_headers(RULES))
    client, ct = h.client()
    client.dataReceived(b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nCookie: s=1\r\nX-Env: evil\r\n"
                        b"X-Tag: client\r\n\r\n")
    _, up, ut = h.connect_upstream()
    sent = ut.value()
    assert b"Cookie" not in sent and b"evil" not in sent and sent.count(b"X-Env") == 1
    assert b"X-Env: home\r\n" in sent and b"X-Tag: client\r\n" in sent and b"X-Tag: proxy\r\n" in sent
    up.dataReceived(UPSTREAM)
    assert ct.value() == (b"HTTP/1.1 200 OK\r\nX-App: yes\r\nX-Content-Type-Options: nosniff\r\n"
                          b"X-Request-Id: t-1\r\nContent-Length: 2\r\n\r\nhi")


def test_http11_route_without_rules_is_unchanged():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nCookie: s=1\r\n\r\n")
    _, up, ut = h.connect_upstream()
    assert ut.value() == (b"GET /a HTTP/1.1\r\nHost: app.example.test\r\nCookie: s=1\r\n"
                          b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
                          b"X-Forwarded-Host: app.example.test\r\nX-Real-IP: 192.0.2.7\r\n\r\n")
    up.dataReceived(UPSTREAM)
    assert ct.value() == (b"HTTP/1.1 200 OK\r\nServer: Apache\r\nX-Powered-By: PHP\r\nX-App: yes\r\n"
                          b"X-Request-Id: t-1\r\nContent-Length: 2\r\n\r\nhi")


def test_http11_location_rules_apply_on_their_path():
    h = Harness(with_headers(RULES, {"response": {"set": {"Cache-Control": "max-age=60"}}}))
    client, ct = h.client()
    client.dataReceived(b"GET /static/a.css?v=1 HTTP/1.1\r\nHost: app.example.test\r\nCookie: s=1\r\n\r\n")
    _, up, ut = h.connect_upstream()
    assert b"Cookie: s=1\r\n" in ut.value()          # the location's rules replace the host's
    up.dataReceived(UPSTREAM)
    assert b"Server: Apache\r\n" in ct.value() and b"Cache-Control: max-age=60\r\n" in ct.value()


def test_a_response_rule_for_strict_transport_security_replaces_the_hsts_line():
    doc = with_headers({"response": {"set": {"Strict-Transport-Security": "max-age=60"}}})
    doc["proxy_hosts"][0]["ssl"] = {"certificate": None, "hsts": True}
    h = Harness(doc)
    h.factory.scheme = b"https"
    h.factory.swap(parse_snapshot(doc))
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    _, up, _ = h.connect_upstream()
    up.dataReceived(UPSTREAM)
    assert ct.value().count(b"Strict-Transport-Security") == 1
    assert b"Strict-Transport-Security: max-age=60\r\n" in ct.value()


def test_http2_request_rules_reach_the_upstream_and_response_rules_reach_the_client():
    h, c = h2_setup(with_headers(RULES))
    sid = c.request(b"/a", extra=[(b"cookie", b"s=1"), (b"x-env", b"evil")])
    _, up, ut = h.connect_upstream()
    sent = ut.value()
    assert sent.startswith(b"GET /a HTTP/1.1\r\nHost: app.example.test\r\n")
    assert b"s=1" not in sent and b"evil" not in sent and b"X-Env: home\r\n" in sent and b"X-Tag: proxy\r\n" in sent
    up.dataReceived(UPSTREAM)
    c.pump()
    answer = c.answers[sid]
    assert answer.status == 200 and answer.data == b"hi"
    assert answer.header(b"server") is None and answer.header(b"x-powered-by") is None
    assert answer.header(b"x-content-type-options") == b"nosniff" and answer.header(b"x-app") == b"yes"



# -- presets: security_headers, hide_upstream_identity ------------------------------------------

SECURITY = (b"X-Content-Type-Options: nosniff\r\nX-Frame-Options: SAMEORIGIN\r\n"
            b"Referrer-Policy: strict-origin-when-cross-origin\r\n"
            b"Permissions-Policy: camera=(), microphone=(), geolocation=()\r\n")


def with_presets(security=True, hide=True, host_headers=None, location_headers=None):
    doc = with_headers(host_headers, location_headers)
    doc["proxy_hosts"][0].update(security_headers=security, hide_upstream_identity=hide)
    return doc


def test_presets_parse_and_refuse_non_booleans():
    host = parse_snapshot(with_presets()).proxy_hosts[0]
    assert host.security_headers is True and host.hide_upstream_identity is True
    assert parse_snapshot(document()).proxy_hosts[0].security_headers is False
    doc = with_presets()
    doc["proxy_hosts"][0].update(security_headers="yes", hide_upstream_identity=1)
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    assert "proxy_hosts[0].security_headers" in str(caught.value)
    assert "proxy_hosts[0].hide_upstream_identity" in str(caught.value)


def test_presets_compile_into_the_response_rules_of_the_host_and_every_location():
    route = route_of(with_presets(location_headers={"response": {"set": {"Cache-Control": "max-age=60"}}}))
    for path in (b"/", b"/static/a.css", b"/static/big/x"):
        response = route.header_rules.for_path(path).response
        assert b"".join(line for _, line, _ in response.defaults) == SECURITY
        assert {b"server", b"x-powered-by", b"x-aspnet-version", b"x-aspnetmvc-version"} <= response.drop
    assert route.header_rules.for_path(b"/").request is None          # presets are response-only
    assert route_of(with_presets(security=False, hide=False)).header_rules is None


def test_upstream_security_headers_are_kept_and_missing_ones_added():
    rules = route_of(with_presets()).header_rules.for_path(b"/").response
    headers = triples((b"Server", b"nginx/1.25"), (b"X-Powered-By", b"PHP/8.2"), (b"X-AspNet-Version", b"4.0"),
                      (b"X-AspNetMvc-Version", b"5.2"), (b"X-Frame-Options", b"DENY"),
                      (b"Referrer-Policy", b"no-referrer"), (b"Content-Type", b"text/html"))
    head = client_response_head(b"HTTP/1.1 200 OK\r\n", headers, b"Content-Length: 0\r\n", b"", rules)
    assert head == (b"HTTP/1.1 200 OK\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
                    b"Content-Type: text/html\r\nX-Content-Type-Options: nosniff\r\n"
                    b"Permissions-Policy: camera=(), microphone=(), geolocation=()\r\nContent-Length: 0\r\n\r\n")
    h2 = response_headers(200, headers, b"t-1", 0, rules)
    assert [n for n, _ in h2].count(b"x-frame-options") == 1 and (b"x-frame-options", b"DENY") in h2
    assert (b"x-content-type-options", b"nosniff") in h2 and not any(n == b"server" for n, _ in h2)


def test_explicit_rules_win_over_presets():
    doc = with_presets(host_headers={"response": {"set": {"X-Frame-Options": "DENY", "Server": "gatehouse"},
                                                  "remove": ["Permissions-Policy"],
                                                  "add": {"Referrer-Policy": "no-referrer"}}})
    rules = route_of(doc).header_rules.for_path(b"/").response
    assert [lname for lname, _, _ in rules.defaults] == [b"x-content-type-options"]
    headers = triples((b"Server", b"Apache"), (b"Permissions-Policy", b"camera=*"), (b"X-Frame-Options", b"ALLOW"))
    head = client_response_head(b"HTTP/1.1 200 OK\r\n", headers, b"", b"", rules)
    assert head == (b"HTTP/1.1 200 OK\r\nX-Frame-Options: DENY\r\nServer: gatehouse\r\n"
                    b"Referrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    # A location's own rules win there too; the presets still apply to the rest.
    loc = route_of(with_presets(location_headers={"response": {"remove": ["X-Content-Type-Options"]}}))
    assert b"x-content-type-options" not in [n for n, _, _ in loc.header_rules.for_path(b"/static/a").response.defaults]
    assert len(loc.header_rules.for_path(b"/other").response.defaults) == 4


def test_http11_and_http2_responses_carry_the_presets():
    h = Harness(with_presets())
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    _, up, _ = h.connect_upstream()
    up.dataReceived(UPSTREAM)
    assert ct.value() == (b"HTTP/1.1 200 OK\r\nX-App: yes\r\n" + SECURITY + b"X-Request-Id: t-1\r\n"
                          b"Content-Length: 2\r\n\r\nhi")
    h, c = h2_setup(with_presets(security=False))
    sid = c.request(b"/")
    _, up, _ = h.connect_upstream()
    up.dataReceived(UPSTREAM)
    c.pump()
    answer = c.answers[sid]
    assert answer.header(b"server") is None and answer.header(b"x-powered-by") is None
    assert answer.header(b"x-frame-options") is None and answer.header(b"x-app") == b"yes"
