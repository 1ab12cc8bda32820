"""Rate limiting (proxy_engine.ratelimit): snapshot validation, GCRA on a fake clock, keys,
the Lua script on the real Redis (127.0.0.1:6379), and real engine processes: 429s with
headers that never reach the upstream, API-key buckets, two engines sharing a bucket through
Redis, and the local fallback while Redis is down."""
import json
import os
import subprocess
import threading
import time
import uuid
from http.server import ThreadingHTTPServer

import pytest
import redis
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock

from proxy_engine.ratelimit import (LUA_SHA, PENDING, Limiter, LocalBuckets, RateLimit, RedisGcra, parse_reply,
                                    redis_name)
from proxy_engine.routing import Router
from proxy_engine.snapshot import RateLimitConfig, SnapshotError, parse_snapshot
from tests.engine.edge_live import Edge
from tests.engine.support import Harness, document
from tests.engine.test_h2 import H2Client
from tests.live import RedisServer, Upstream, engine_process, issue_certificate, started_engines, write_doc

SECOND = 1_000_000


def limited_doc(limit, locations=(), host_id=1, port=3000, trusted=("10.0.0.0/8",)):
    doc = document()
    doc["settings"]["trusted_proxies"] = list(trusted)
    host = doc["proxy_hosts"][0]
    host["id"] = host_id
    host["rate_limit"] = limit
    host["upstreams"] = [{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}]
    host["locations"] = list(locations)
    host["max_body_size"] = None
    return doc


# -- snapshot ------------------------------------------------------------------------------

def test_rate_limits_parse_for_hosts_and_locations():
    doc = limited_doc({"requests": 100, "per": 60, "burst": 20, "key": "header:X-Api-Key"},
                      locations=[{"path": "/api/", "upstreams": [], "rate_limit": {"requests": 5, "per": 1.0}},
                                 {"path": "/free/", "upstreams": [], "rate_limit": None}])
    host = parse_snapshot(doc).proxy_hosts[0]
    assert host.rate_limit == RateLimitConfig(100, 60.0, 20, "header:X-Api-Key")
    assert host.locations[0].rate_limit == RateLimitConfig(5, 1.0, 0, "ip")
    assert host.locations[1].rate_limit is None


@pytest.mark.parametrize("limit, path, words", [
    ({"requests": 0, "per": 1.0}, "proxy_hosts[0].rate_limit.requests", "greater than 0"),
    ({"requests": 5, "per": 0}, "proxy_hosts[0].rate_limit.per", "greater than 0"),
    ({"requests": 5, "per": 1e300}, "proxy_hosts[0].rate_limit.per", "at most 10 years"),
    ({"requests": 5, "per": 1.0, "burst": -1}, "proxy_hosts[0].rate_limit.burst", "0 or more"),
    ({"requests": 5, "per": 1.0, "key": "cookie:x"}, "proxy_hosts[0].rate_limit.key", "header:<Header-Name>"),
    ({"requests": 5, "per": 1.0, "key": "header:Bad Name"}, "proxy_hosts[0].rate_limit.key", "header:"),
    ({"requests": True, "per": 1.0}, "proxy_hosts[0].rate_limit.requests", "an integer"),
    ({"per": 1.0}, "proxy_hosts[0].rate_limit.requests", "required"),
    ("10r/s", "proxy_hosts[0].rate_limit", "a mapping"),
])
def test_bad_rate_limits_are_refused_with_their_path(limit, path, words):
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(limited_doc(limit))
    assert any(e.startswith(path) and words in e for e in caught.value.errors), caught.value.errors


def test_a_bad_location_rate_limit_names_the_location():
    doc = limited_doc(None, locations=[{"path": "/api/", "upstreams": [], "rate_limit": {"requests": -3}}])
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    assert "proxy_hosts[0].locations[0].rate_limit.requests: must be greater than 0, got -3" in caught.value.errors


# -- GCRA on a fake clock ------------------------------------------------------------------

class Limits:
    """A RateLimit on a fake clock, deciding for an address."""

    def __init__(self, requests, per, burst=0, key="ip", max_keys=1000):
        self.clock = Clock()
        self.limiter = Limiter(self.clock, max_keys=max_keys)
        self.limit = RateLimit(RateLimitConfig(requests, per, burst, key), "1", self.limiter, lambda a: False)

    def decide(self, peer="192.0.2.1", headers=()):
        import ipaddress
        decision = self.limit.check(ipaddress.ip_address(peer), False, list(headers), None)
        assert decision is not PENDING
        return decision


def test_burst_then_steady_rate():
    lim = Limits(requests=3, per=1.0, burst=2)
    decisions = [lim.decide() for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    lim.clock.advance(1 / 3)             # one interval: exactly one more
    assert lim.decide().allowed and not lim.decide().allowed
    lim.clock.advance(10)                # idle: the full burst again
    assert sum(lim.decide().allowed for _ in range(8)) == 5


def test_retry_after_is_whole_seconds_rounded_up():
    lim = Limits(requests=1, per=60.0)
    assert lim.decide().allowed
    refused = lim.decide()
    assert not refused.allowed and refused.retry_after == 60
    lim.clock.advance(30.5)
    assert lim.decide().retry_after == 30           # 29.5 s left -> 30
    lim.clock.advance(29.4)
    assert lim.decide().retry_after == 1            # 0.1 s left -> 1
    lim.clock.advance(0.1)
    assert lim.decide().allowed
    assert dict(refused.fields()) == {b"retry-after": b"60", b"ratelimit-policy": b'"gatehouse";q=1;w=60',
                                      b"ratelimit": b'"gatehouse";r=0;t=60'}
    assert refused.lines() == (b'Retry-After: 60\r\nRateLimit-Policy: "gatehouse";q=1;w=60\r\n'
                               b'RateLimit: "gatehouse";r=0;t=60\r\n')


def test_a_refused_request_consumes_nothing():
    lim = Limits(requests=2, per=2.0)
    assert lim.decide().allowed and lim.decide().allowed
    for _ in range(50):
        assert not lim.decide().allowed
    lim.clock.advance(1.0)
    assert lim.decide().allowed


def test_keys_are_separate_per_address_and_per_header_value():
    lim = Limits(requests=1, per=60.0)
    assert lim.decide("192.0.2.1").allowed and not lim.decide("192.0.2.1").allowed
    assert lim.decide("192.0.2.2").allowed and lim.decide("2001:db8::1").allowed
    api = Limits(requests=1, per=60.0, key="header:X-Api-Key")
    assert api.decide(headers=[(b"x-api-key", b"X-Api-Key", b"alpha")]).allowed
    assert not api.decide("192.0.2.9", headers=[(b"x-api-key", b"X-Api-Key", b"alpha")]).allowed   # same key
    assert api.decide(headers=[(b"x-api-key", b"X-Api-Key", b"beta")]).allowed
    assert api.decide().allowed                     # no header: the address's own bucket
    assert not api.decide().allowed
    name = redis_name(api.limit.key(None, False, [(b"x-api-key", b"X-Api-Key", b"secret-api-key")]))
    assert "secret" not in name and name.startswith("1:h:") and len(name) == len("1:h:") + 24


def test_idle_keys_expire_lazily_and_the_number_of_keys_is_capped():
    lim = Limits(requests=1, per=1.0, max_keys=100)
    for i in range(50):
        lim.decide(f"192.0.2.{i}")
    tats = lim.limiter.local.tats
    assert len(tats) == 50
    lim.clock.advance(2)                 # every bucket is full again: their state is dropped
    for i in range(30):
        lim.decide(f"198.51.100.{i}")
    assert len(tats) == 30 and all(redis_name(k).startswith("1:ip:198.51.100.") for k in tats)
    for i in range(250):
        lim.decide(f"203.0.113.{i}")
    assert len(tats) == 100              # LRU: the oldest dropped


def test_local_buckets_alone():
    clock = Clock()
    buckets = LocalBuckets(clock.seconds)
    assert buckets.decide("k", SECOND, 2 * SECOND) == (True, SECOND)
    assert buckets.decide("k", SECOND, 2 * SECOND) == (True, 2 * SECOND)
    assert buckets.decide("k", SECOND, 2 * SECOND) == (False, 3 * SECOND)


def test_client_address_through_trusted_proxies_is_the_key():
    snapshot = parse_snapshot(limited_doc({"requests": 1, "per": 60.0}))
    router = Router(snapshot)
    limit = router.route(b"app.example.test").rate_limit.for_path(b"/")
    import ipaddress
    proxy = ipaddress.ip_address("10.0.0.1")
    xff = [(b"x-forwarded-for", b"X-Forwarded-For", b"203.0.113.5, 10.0.0.2")]
    assert redis_name(limit.key(proxy, True, xff)) == "1:ip:203.0.113.5"
    assert redis_name(limit.key(ipaddress.ip_address("8.8.8.8"), False, xff)) == "1:ip:8.8.8.8"
    assert redis_name(limit.key(ipaddress.ip_address("2001:db8::1"), False, [])) == "1:ip:2001:db8::1"


def test_locations_with_their_own_limit_have_their_own_buckets():
    doc = limited_doc({"requests": 1, "per": 60.0},
                      locations=[{"path": "/api/", "upstreams": [], "rate_limit": {"requests": 2, "per": 60.0}},
                                 {"path": "/api/open/", "upstreams": []},
                                 {"path": "/inherit/", "upstreams": []}])
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    host, api = route.rate_limit.for_path(b"/"), route.rate_limit.for_path(b"/api/x?q=1")
    assert host.scope == "1" and api.scope == "1:/api/"
    assert route.rate_limit.for_path(b"/inherit/x") is host
    assert route.rate_limit.for_path(b"/api/open/x") is host        # inherits the host, not /api/
    assert route.rate_limit.for_path(b"http://app.example.test/api/y") is api
    plain = Router(parse_snapshot(limited_doc(None))).route(b"app.example.test")
    assert plain.rate_limit is None and plain.exploits is None        # nothing per request


# -- RESP --------------------------------------------------------------------------------

def test_resp_replies_parse():
    assert parse_reply(b"*2\r\n:1\r\n:250\r\n") == ([1, 250], 14)
    assert parse_reply(b"$3\r\nabc\r\n+OK\r\n") == (b"abc", 9)
    assert str(parse_reply(b"-NOSCRIPT No matching script\r\n")[0]).startswith("NOSCRIPT")
    with pytest.raises(Exception):
        parse_reply(b"*2\r\n:1\r\n")


def test_unsupported_redis_urls_keep_limits_local_without_logging_the_url(caplog):
    lim = Limiter(Clock(), "rediss://:s3cret@redis.example:6380/0")
    assert lim.redis is None and "rediss://" in caplog.text and "s3cret" not in caplog.text


def test_redis_url_parts_and_no_password_in_repr():
    client = RedisGcra(Clock(), "redis://:s3cret@127.0.0.1:6380/3")
    assert (client.host, client.port, client.password, client.db, client.username) == \
        ("127.0.0.1", 6380, "s3cret", 3, None)
    assert "s3cret" not in repr(client)


# -- the Lua script on the real Redis --------------------------------------------------------

@pytest.fixture
def prefix():
    value = f"gatehouse-test:{uuid.uuid4().hex}:"
    yield value
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = client.keys(value + "*")
    if keys:
        client.delete(*keys)


def pump(reactor, condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.01)
    assert condition()


def test_two_limiters_share_one_bucket_through_the_lua_script(prefix):
    reactor = SelectReactor()
    reactor.startRunning()
    redis.Redis(host="127.0.0.1", port=6379).script_flush()     # the first call must recover from NOSCRIPT
    config = RateLimitConfig(3, 60.0, 1, "ip")
    limiters = [Limiter(reactor, "redis://127.0.0.1:6379/0", prefix=prefix) for _ in range(2)]
    limits = [RateLimit(config, "7", lim, lambda a: False) for lim in limiters]
    for lim in limiters:
        lim.start()
    pump(reactor, lambda: all(lim.redis.ready for lim in limiters))
    import ipaddress
    peer = ipaddress.ip_address("192.0.2.50")
    out = []
    for i in range(6):
        assert limits[i % 2].check(peer, False, [], out.append) == PENDING
        pump(reactor, lambda: len(out) == i + 1)
    assert [d.allowed for d in out] == [True] * 4 + [False] * 2
    assert out[4].retry_after == 20 and out[4].lines().endswith(b'RateLimit: "gatehouse";r=0;t=20\r\n')
    client = redis.Redis(host="127.0.0.1", port=6379)
    key = prefix + "7:ip:192.0.2.50"
    assert 0 < client.pttl(key) <= 80_000        # the key expires when its bucket is full again
    assert client.script_exists(LUA_SHA) == [True]
    for lim in limiters:
        lim.stop()
    reactor.iterate(0.05)


def test_a_wrong_redis_password_falls_back_to_local_decisions(prefix, caplog):
    reactor = SelectReactor()
    reactor.startRunning()
    # The shared Redis has no password: AUTH fails, the limiter stays local and says so once.
    lim = Limiter(reactor, "redis://:wrong@127.0.0.1:6379/0", prefix=prefix)
    lim.start()
    pump(reactor, lambda: lim.redis.outage)
    limit = RateLimit(RateLimitConfig(1, 60.0, 0, "ip"), "7", lim, lambda a: False)
    import ipaddress
    peer = ipaddress.ip_address("192.0.2.51")
    first = limit.check(peer, False, [], None)
    assert first is not PENDING and first.allowed and not limit.check(peer, False, [], None).allowed
    lim.stop()
    assert len([r for r in caplog.records if "limiting locally" in r.getMessage()]) == 1
    assert "wrong" not in caplog.text


# -- HTTP/1.1 and HTTP/2 in memory ----------------------------------------------------------

def test_http1_429_with_headers_and_no_upstream_connection():
    h = Harness(limited_doc({"requests": 1, "per": 30.0}), peer="192.0.2.7")
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert len(h.reactor.tcpClients) == 1
    other, ot = h.client()
    other.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nAccept: application/json\r\n\r\n")
    head, _, body = ot.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 30\r\n" in head and b'\r\nRateLimit: "gatehouse";r=0;t=30' in head
    assert json.loads(body)["error"].startswith("Too many requests")
    assert len(h.reactor.tcpClients) == 1


def test_h2_429_with_headers_and_no_upstream_connection():
    h = Harness(limited_doc({"requests": 1, "per": 30.0, "burst": 1}), peer="192.0.2.7")
    c = H2Client(h)
    first, second, third = c.request(), c.request(), c.request()
    assert c.answers[first].headers is None and c.answers[second].headers is None     # both went upstream
    assert c.answers[third].status == 429
    assert c.answers[third].header(b"retry-after") == b"30"       # one interval
    assert c.answers[third].header(b"ratelimit-policy") == b'"gatehouse";q=1;w=30'
    assert len(h.reactor.tcpClients) == 2


# -- real engine processes -------------------------------------------------------------------

class Counting(Upstream):
    def do_GET(self):
        with self.server.lock:
            self.server.count += 1
        super().do_GET()


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    server.daemon_threads = True
    server.name, server.count, server.lock = "counting", 0, threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def engines(tmp_path):
    # Probe another host (the default site's 404), so no token of the limited host is spent.
    yield from started_engines(tmp_path, ready=lambda r, d: r.status == 404, host="probe.example.test")


def get(engine, path="/", headers=None):
    return engine.request("GET", path, headers=headers)


def test_engine_lets_requests_plus_burst_through_then_429s_and_the_upstream_saw_only_those(upstream, engines):
    engine = engines(limited_doc({"requests": 3, "per": 60.0, "burst": 2}, port=upstream.server_address[1],
                                 host_id=11))
    statuses = [get(engine)[0].status for _ in range(5)]
    refused, body = get(engine)
    assert statuses == [200] * 5 and refused.status == 429
    assert refused.getheader("Retry-After") == "20"
    assert refused.getheader("RateLimit-Policy") == '"gatehouse";q=3;w=60'
    assert refused.getheader("RateLimit") == '"gatehouse";r=0;t=20'
    assert b"rate limit" in body
    assert upstream.count == 5


def test_engine_limits_per_api_key_and_falls_back_to_the_address(upstream, engines):
    engine = engines(limited_doc({"requests": 2, "per": 60.0, "key": "header:X-Api-Key"},
                                 port=upstream.server_address[1], host_id=12))
    a, b = {"X-Api-Key": "alpha"}, {"X-Api-Key": "beta"}
    assert [get(engine, headers=a)[0].status for _ in range(3)] == [200, 200, 429]
    assert [get(engine, headers=b)[0].status for _ in range(3)] == [200, 200, 429]
    assert [get(engine)[0].status for _ in range(3)] == [200, 200, 429]
    assert upstream.count == 6


def test_two_engines_share_buckets_through_redis(upstream, engines):
    host_id = 900000 + os.getpid() % 10000
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        doc = limited_doc({"requests": 3, "per": 60.0}, port=upstream.server_address[1], host_id=host_id)
        first = engines(doc, "--redis-url", "redis://127.0.0.1:6379/0")
        second = engines(doc, "--redis-url", "redis://127.0.0.1:6379/0")
        time.sleep(0.5)                  # both connected to Redis
        assert [get(first)[0].status, get(second)[0].status, get(first)[0].status] == [200, 200, 200]
        assert get(second)[0].status == 429 and get(first)[0].status == 429
        assert upstream.count == 3
        assert client.exists(f"gatehouse:rl:{host_id}:ip:127.0.0.1")
    finally:
        keys = client.keys(f"gatehouse:rl:{host_id}:*")
        if keys:
            client.delete(*keys)


def test_redis_down_the_engine_still_limits_locally_and_says_so_once(upstream, engines, tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        engine = engines(limited_doc({"requests": 2, "per": 60.0}, port=upstream.server_address[1], host_id=13),
                         "--redis-url", server.url)
        time.sleep(0.5)
        assert get(engine)[0].status == 200                       # decided by Redis
        assert redis.Redis(port=server.port).exists("gatehouse:rl:13:ip:127.0.0.1")
        server.stop()
        statuses = [get(engine)[0].status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]                   # a fresh local bucket, still limited
    finally:
        server.stop()
    output = engine.stop()
    assert output.count("limiting locally") == 1, output


# -- waiting for Redis in both protocols (the real Redis; the protocols on memory transports) --

@pytest.fixture
def shared(prefix):
    """A harness whose limiter talks to the real Redis through a real select reactor."""
    def make(doc):
        reactor = SelectReactor()
        reactor.startRunning()
        h = Harness(doc, peer="192.0.2.77")
        h.factory.limiter = Limiter(reactor, "redis://127.0.0.1:6379/0", prefix=prefix)
        h.factory.limiter.start()
        pump(reactor, lambda: h.factory.limiter.redis.ready)
        h.factory.swap(parse_snapshot(doc))
        h.redis_reactor = reactor
        made.append(h)
        return h

    made = []
    yield make
    for h in made:
        h.factory.limiter.stop()
        h.redis_reactor.iterate(0.01)


def test_http1_waits_for_redis_then_forwards_or_answers_429(shared, prefix):
    h = shared(limited_doc({"requests": 1, "per": 60.0}))
    first, ft = h.client()
    first.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert ft.value() == b"" and h.reactor.tcpClients == []          # PENDING: Redis decides
    pump(h.redis_reactor, lambda: len(h.reactor.tcpClients) == 1)
    second, st = h.client()
    second.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    pump(h.redis_reactor, lambda: st.value() != b"")
    assert st.value().startswith(b"HTTP/1.1 429 ") and b"Retry-After: 60\r\n" in st.value()
    assert len(h.reactor.tcpClients) == 1
    gone, _ = h.client()                  # a client that leaves while Redis decides is left alone
    gone.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    gone.connectionLost(None)
    h.redis_reactor.iterate(0.05)
    h.redis_reactor.iterate(0.05)
    assert len(h.reactor.tcpClients) == 1
    assert redis.Redis(host="127.0.0.1", port=6379).exists(prefix + "1:ip:192.0.2.77")


def test_h2_waits_for_redis_then_forwards_or_answers_429(shared):
    h = shared(limited_doc({"requests": 1, "per": 60.0}))
    c = H2Client(h)
    sid = c.request()
    assert c.answers[sid].headers is None and h.reactor.tcpClients == []
    pump(h.redis_reactor, lambda: len(h.reactor.tcpClients) == 1)
    sid = c.request()

    def answered():
        c.pump()
        return c.answers[sid].headers is not None

    pump(h.redis_reactor, answered)
    assert c.answers[sid].status == 429 and c.answers[sid].header(b"retry-after") == b"60"
    assert len(h.reactor.tcpClients) == 1


# -- HTTP/2 through a real engine process (TLS, ALPN h2, driven with curl) ---------------------

class TlsEngine:
    """An engine process serving HTTPS (h2) for `app.example.test` with a trustme CA."""
    h2 = Edge.h2

    def __init__(self, tmp, doc, *extra):
        self.tmp = tmp
        doc["proxy_hosts"][0]["ssl"] = {"certificate": "t", "force_https": False, "http2": True, "hsts": False}
        doc["certificates"] = [issue_certificate(tmp, "t", "app.example.test")]
        write_doc(tmp / "snapshot.json", doc)
        self.engine = engine_process(tmp / "snapshot.json", *extra, https=True)
        self.port, self.https_port = self.engine.port, self.engine.https_port
        self.engine.wait_for(lambda r, d: r.status == 404, host="probe.example.test")


def test_h2_engine_process_shares_the_bucket_through_redis_and_answers_429(upstream, tmp_path):
    if "HTTP2" not in subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    host_id = 800000 + os.getpid() % 10000
    client = redis.Redis(host="127.0.0.1", port=6379)
    doc = limited_doc({"requests": 2, "per": 60.0}, port=upstream.server_address[1], host_id=host_id)
    doc["proxy_hosts"][0]["domains"] = ["app.example.test"]
    tls = TlsEngine(tmp_path, doc, "--redis-url", "redis://127.0.0.1:6379/0")
    try:
        time.sleep(0.5)
        answers = [tls.h2("GET", "/", "app.example.test") for _ in range(3)]
        assert [(version, status) for version, status, _, _ in answers] == [("2", 200), ("2", 200), ("2", 429)]
        pairs = dict(answers[2][2])
        assert pairs["retry-after"] == "30" and pairs["ratelimit"] == '"gatehouse";r=0;t=30'
        assert upstream.count == 2
        assert tls.engine.request("GET", "/")[0].status == 429        # HTTP/1.1 shares the same bucket
        assert client.exists(f"gatehouse:rl:{host_id}:ip:127.0.0.1")
    finally:
        tls.engine.stop()
        keys = client.keys(f"gatehouse:rl:{host_id}:*")
        if keys:
            client.delete(*keys)
