"""CORS (proxy_engine.cors): parsing, the decision table (allowed / unknown origin,
credentials with "*", preflight headers), the wiring in both protocols, and a real engine
process in front of a real upstream (preflights never reach it)."""
import pytest

from proxy_engine.cors import CorsPolicy
from proxy_engine.headers import client_response_head
from proxy_engine.h2protocol import response_headers
from proxy_engine.routing import Router
from proxy_engine.snapshot import CorsOptions, SnapshotError, parse_snapshot
from tests.engine.edge_live import edge, fresh, header  # noqa: F401 (fixtures)
from tests.engine.support import Harness, document
from tests.engine.test_h2 import H2Client

APP = b"https://app.example.test"
EVIL = b"https://evil.example"


def cors_doc(**options):
    doc = document()
    doc["proxy_hosts"][0]["cors"] = {"origins": ["https://app.example.test"], **options}
    return doc


def triples(*pairs):
    return [(n.lower(), n, v) for n, v in pairs]


def preflight_headers(origin, method=b"PUT", request_headers=None):
    pairs = [(b"Origin", origin), (b"Access-Control-Request-Method", method)]
    if request_headers is not None:
        pairs.append((b"Access-Control-Request-Headers", request_headers))
    return triples(*pairs)


def lines_of(preflight):
    return dict(line.split(b": ", 1) for line in preflight.lines.split(b"\r\n") if line)


# -- parsing -----------------------------------------------------------------------------------------

def test_cors_parses_with_defaults_normalised_origins_and_is_off_when_absent():
    cors = parse_snapshot(cors_doc(origins=["HTTPS://App.Example.test/", "http://localhost:3000"],
                                   methods=["get", "Post"])).proxy_hosts[0].cors
    assert cors == CorsOptions(("https://app.example.test", "http://localhost:3000"), ("GET", "POST"))
    assert (cors.headers, cors.expose, cors.credentials, cors.max_age) == ((), (), False, 600.0)
    assert parse_snapshot(cors_doc()).proxy_hosts[0].cors.methods == ("GET", "HEAD", "POST")
    assert parse_snapshot(document()).proxy_hosts[0].cors is None
    assert Router(parse_snapshot(document())).route(b"app.example.test").cors is None


@pytest.mark.parametrize("options, path", [
    ({"origins": []}, "proxy_hosts[0].cors.origins"),
    ({"origins": ["*", "https://a.test"]}, "proxy_hosts[0].cors.origins"),
    ({"origins": ["https://a.test/path"]}, "proxy_hosts[0].cors.origins[0]"),
    ({"origins": ["null"]}, "proxy_hosts[0].cors.origins[0]"),
    ({"origins": ["https://bücher.example"]}, "proxy_hosts[0].cors.origins[0]"),
    ({"origins": "https://a.test"}, "proxy_hosts[0].cors.origins"),
    ({"methods": ["GET POST"]}, "proxy_hosts[0].cors.methods[0]"),
    ({"headers": ["Content Type"]}, "proxy_hosts[0].cors.headers[0]"),
    ({"expose": [3]}, "proxy_hosts[0].cors.expose[0]"),
    ({"credentials": "yes"}, "proxy_hosts[0].cors.credentials"),
    ({"max_age": -1}, "proxy_hosts[0].cors.max_age"),
    ({"max_age": 100000}, "proxy_hosts[0].cors.max_age"),
])
def test_bad_cors_is_refused_with_its_path(options, path):
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(cors_doc(**options))
    assert any(error.startswith(path + ":") for error in caught.value.errors), caught.value.errors


def test_missing_origins_are_refused():
    doc = document()
    doc["proxy_hosts"][0]["cors"] = {"methods": ["GET"]}
    with pytest.raises(SnapshotError, match=r"proxy_hosts\[0\]\.cors\.origins: is required"):
        parse_snapshot(doc)


# -- the decision table ----------------------------------------------------------------------------------

def policy(origins=("https://app.example.test",), **options):
    return CorsPolicy(CorsOptions(tuple(origins), **options))


def test_a_preflight_from_an_allowed_origin_gets_204_with_the_configured_lists():
    p = policy(methods=("GET", "PUT"), headers=("Content-Type", "X-Api-Key"), max_age=600.0)
    answer = p.preflight(b"OPTIONS", preflight_headers(APP, request_headers=b"content-type"))
    assert answer.status == 204 and answer.cause is None
    assert lines_of(answer) == {
        b"Access-Control-Allow-Origin": APP, b"Access-Control-Allow-Methods": b"GET, PUT",
        b"Access-Control-Allow-Headers": b"Content-Type, X-Api-Key", b"Access-Control-Max-Age": b"600",
        b"Vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
    assert (b"access-control-allow-origin", APP) in answer.pairs


def test_a_preflight_from_an_unknown_origin_gets_403_without_cors_headers():
    answer = policy().preflight(b"OPTIONS", preflight_headers(EVIL))
    assert answer.status == 403 and answer.lines == b"" and answer.cause


def test_only_real_preflights_are_answered():
    p = policy()
    assert p.preflight(b"OPTIONS", triples((b"Origin", APP))) is None           # no request method
    assert p.preflight(b"OPTIONS", triples((b"Access-Control-Request-Method", b"GET"))) is None
    assert p.preflight(b"GET", preflight_headers(APP)) is None


def test_any_origin_without_credentials_sends_a_literal_star():
    p = policy(("*",), methods=("*",), headers=("*",))
    answer = lines_of(p.preflight(b"OPTIONS", preflight_headers(EVIL, b"DELETE", b"x-a")))
    assert answer[b"Access-Control-Allow-Origin"] == b"*" and answer[b"Access-Control-Allow-Methods"] == b"*"
    assert answer[b"Access-Control-Allow-Headers"] == b"*" and b"Access-Control-Allow-Credentials" not in answer
    rules = p.rules_for(None, triples((b"Origin", EVIL)))
    assert rules.response.lines == b"Access-Control-Allow-Origin: *\r\n"          # no Vary: same for everyone
    assert p.rules_for(None, []) is rules                                         # even without Origin


def test_any_origin_with_credentials_echoes_the_origin_never_a_star():
    p = policy(("*",), methods=("*",), headers=("*",), credentials=True)
    answer = lines_of(p.preflight(b"OPTIONS", preflight_headers(EVIL, b"DELETE", b"x-a, content-type")))
    assert answer[b"Access-Control-Allow-Origin"] == EVIL and answer[b"Access-Control-Allow-Credentials"] == b"true"
    assert answer[b"Access-Control-Allow-Methods"] == b"DELETE"
    assert answer[b"Access-Control-Allow-Headers"] == b"x-a, content-type"
    lines = p.rules_for(None, triples((b"Origin", EVIL))).response.lines
    assert lines == (b"Access-Control-Allow-Origin: https://evil.example\r\n"
                     b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n")
    assert b"*" not in lines


def test_actual_responses_replace_the_upstreams_allow_origin_for_allowed_origins_only():
    p = policy(expose=("X-Total-Count",), credentials=True)
    upstream = triples((b"Access-Control-Allow-Origin", b"*"), (b"Access-Control-Allow-Credentials", b"false"),
                       (b"Content-Type", b"text/plain"))
    allowed = p.rules_for(None, triples((b"Origin", APP)))
    head = client_response_head(b"HTTP/1.1 200 OK\r\n", upstream, b"", b"", allowed.response)
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: " + APP +
                    b"\r\nAccess-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: X-Total-Count\r\n"
                    b"Vary: Origin\r\n\r\n")
    other = p.rules_for(None, triples((b"Origin", EVIL)))
    assert client_response_head(b"HTTP/1.1 200 OK\r\n", upstream, b"", b"", other.response) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVary: Origin\r\n\r\n")
    h2 = response_headers(200, upstream, b"t-1", None, allowed.response)
    assert (b"access-control-allow-origin", APP) in h2 and (b"access-control-allow-origin", b"*") not in h2
    assert p.rules_for(None, triples((b"Origin", APP))) is allowed                # precompiled per origin


def test_cors_joins_the_paths_header_rules_and_presets():
    doc = cors_doc()
    doc["proxy_hosts"][0].update(security_headers=True, headers={"request": {"set": {"X-Env": "home"}},
                                                                 "response": {"remove": ["Server"]}})
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    base = route.header_rules.for_path(b"/")
    combined = route.cors.rules_for(base, triples((b"Origin", APP)))
    assert combined.request is base.request and b"server" in combined.response.drop
    assert combined.response.defaults == base.response.defaults
    assert combined.response.lines.endswith(b"Access-Control-Allow-Origin: " + APP + b"\r\nVary: Origin\r\n")


# -- the protocols --------------------------------------------------------------------------------------

def test_http1_a_preflight_is_answered_without_an_upstream_and_the_connection_is_kept():
    h = Harness(cors_doc(methods=["GET", "PUT"]))
    client, ct = h.client()
    client.dataReceived(b"OPTIONS /api HTTP/1.1\r\nHost: app.example.test\r\nOrigin: https://app.example.test\r\n"
                        b"Access-Control-Request-Method: PUT\r\n\r\n")
    answer = ct.value()
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\nX-Request-Id: t-1\r\n")
    assert b"Content-Length" not in answer and b"Content-Type" not in answer and b"Connection: close" not in answer
    assert b"Access-Control-Allow-Methods: GET, PUT\r\n" in answer
    client.dataReceived(b"OPTIONS /api HTTP/1.1\r\nHost: app.example.test\r\nOrigin: https://evil.example\r\n"
                        b"Access-Control-Request-Method: PUT\r\n\r\n")
    assert ct.value()[len(answer):].startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert h.reactor.tcpClients == []


def test_http1_an_actual_request_gets_allow_origin_on_the_upstreams_answer():
    h = Harness(cors_doc(credentials=True))
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nOrigin: https://app.example.test\r\n\r\n")
    _, up, ut = h.connect_upstream()
    assert b"Origin: https://app.example.test\r\n" in ut.value()              # the upstream still sees it
    up.dataReceived(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 2\r\n\r\nhi")
    assert ct.value() == (b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://app.example.test\r\n"
                          b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\nX-Request-Id: t-1\r\n"
                          b"Content-Length: 2\r\n\r\nhi")


def test_a_preflight_passes_before_the_access_list():
    doc = cors_doc()
    doc["proxy_hosts"][0]["access_list"] = "nobody"
    doc["access_lists"] = [{"name": "nobody", "satisfy": "any", "rules": [{"action": "deny", "source": "all"}]}]
    h = Harness(doc)
    client, ct = h.client()
    client.dataReceived(b"OPTIONS / HTTP/1.1\r\nHost: app.example.test\r\nOrigin: https://app.example.test\r\n"
                        b"Access-Control-Request-Method: GET\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 204 ")
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nOrigin: https://app.example.test\r\n\r\n")
    assert b"HTTP/1.1 403 " in ct.value()


def test_h2_preflight_and_actual_request():
    h = Harness(cors_doc())
    c = H2Client(h)
    sid = c.request(b"/", method=b"OPTIONS", extra=[(b"origin", APP), (b"access-control-request-method", b"POST")])
    answer = c.answers[sid]
    assert answer.status == 204 and answer.header(b"access-control-allow-origin") == APP
    assert answer.header(b"content-length") is None and h.reactor.tcpClients == []
    sid = c.request(b"/", extra=[(b"origin", APP)])
    _, up, _ = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    c.pump()
    assert c.answers[sid].header(b"access-control-allow-origin") == APP
    assert c.answers[sid].header(b"vary") == b"Origin"


# -- the engine as a process, a real upstream -------------------------------------------------------------

def test_a_preflight_is_answered_by_the_engine_and_never_reaches_the_upstream(fresh):
    status, headers, body = fresh.request("OPTIONS", "/api/items", "cors.example.test", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type, x-api-key"})
    assert (status, body) == (204, b"")
    assert header(headers, "access-control-allow-origin") == "http://localhost:3000"
    assert header(headers, "access-control-allow-methods") == "GET, POST, PUT"
    assert header(headers, "access-control-allow-headers") == "Content-Type, X-Api-Key"
    assert header(headers, "access-control-allow-credentials") == "true"
    assert header(headers, "access-control-max-age") == "600"
    status, headers, _ = fresh.request("OPTIONS", "/api/items", "cors.example.test", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
    assert status == 403 and not any(n.startswith("access-control-") for n, _ in headers)
    assert fresh.upstream.seen == []
    status, _, _ = fresh.request("OPTIONS", "/api/items", "cors.example.test")        # not a preflight
    assert status == 200 and fresh.upstream.seen[0]["method"] == "OPTIONS"


def test_real_responses_carry_allow_origin_replacing_the_upstreams(fresh):
    status, headers, _ = fresh.request("GET", "/acao", "cors.example.test", headers={"Origin": "https://app.example.test"})
    assert status == 200 and header(headers, "access-control-allow-origin") == "https://app.example.test"
    assert header(headers, "access-control-allow-credentials") == "true"
    assert header(headers, "access-control-expose-headers") == "X-Total-Count"
    assert header(headers, "vary") == "Origin"
    status, headers, _ = fresh.request("GET", "/acao", "cors.example.test", headers={"Origin": "https://evil.example"})
    assert status == 200 and header(headers, "access-control-allow-origin") is None
    assert header(headers, "access-control-allow-credentials") is None
    status, headers, _ = fresh.request("GET", "/", "star.example.test", headers={"Origin": "https://x.example"})
    assert header(headers, "access-control-allow-origin") == "*" and header(headers, "vary") is None
    status, headers, _ = fresh.request("GET", "/acao", "plain.example.test")           # a host without CORS
    assert header(headers, "access-control-allow-origin") == "https://evil.example"


def test_a_preflight_is_answered_before_forward_auth_and_actual_requests_still_need_it(fresh):
    status, headers, _ = fresh.request("OPTIONS", "/", "both.example.test", headers={
        "Origin": "https://app.example.test", "Access-Control-Request-Method": "POST"})
    assert status == 204 and fresh.auth.seen == [] and fresh.upstream.seen == []
    status, headers, _ = fresh.request("GET", "/", "both.example.test", headers={"Origin": "https://app.example.test"})
    assert status == 302 and fresh.upstream.seen == [] and len(fresh.auth.seen) == 1
    # The denial carries the CORS headers too, so the page's script can read the status.
    assert header(headers, "access-control-allow-origin") == "https://app.example.test"
    assert header(headers, "access-control-allow-credentials") == "true"
    version, status, headers, _ = fresh.h2("GET", "/", "both.example.test", headers=[
        "Origin: https://app.example.test", "Accept: application/json"])
    assert status == 401 and header(headers, "access-control-allow-origin") == "https://app.example.test"
    status, headers, _ = fresh.request("GET", "/", "both.example.test", headers={"Origin": "https://evil.example"})
    assert status == 302 and header(headers, "access-control-allow-origin") is None


def test_presets_on_real_responses(fresh):
    status, headers, _ = fresh.request("GET", "/identity", "presets.example.test")
    assert status == 200
    names = {n for n, _ in headers}
    assert not names & {"server", "x-powered-by", "x-aspnet-version"}
    assert header(headers, "x-frame-options") == "DENY"                      # the upstream's own value wins
    assert header(headers, "x-content-type-options") == "nosniff"
    assert header(headers, "referrer-policy") == "strict-origin-when-cross-origin"
    assert header(headers, "permissions-policy") == "camera=(), microphone=(), geolocation=()"
    _, plain, _ = fresh.request("GET", "/identity", "plain.example.test")
    assert header(plain, "x-powered-by") == "PHP/8.2" and header(plain, "server") is not None
    assert header(plain, "x-content-type-options") is None


def test_http2_preflight_actual_request_and_presets(fresh):
    version, status, headers, body = fresh.h2("OPTIONS", "/api", "cors.example.test", headers=[
        "Origin: https://app.example.test", "Access-Control-Request-Method: POST"])
    assert (version, status, body) == ("2", 204, b"")
    assert header(headers, "access-control-allow-origin") == "https://app.example.test"
    assert fresh.upstream.seen == []
    version, status, headers, _ = fresh.h2("GET", "/acao", "cors.example.test",
                                           headers=["Origin: https://app.example.test"])
    assert (version, status) == ("2", 200)
    assert header(headers, "access-control-allow-origin") == "https://app.example.test"
    version, status, headers, _ = fresh.h2("GET", "/identity", "presets.example.test")
    assert header(headers, "x-powered-by") is None and header(headers, "x-content-type-options") == "nosniff"
    assert header(headers, "x-frame-options") == "DENY"
