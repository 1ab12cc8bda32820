"""Response caching (proxy_engine.cache): freshness rules on a fake clock, the store (LRU by
bytes, Vary, generations, disk tier), collapse bookkeeping, and the cache wired into the
HTTP/1.1 and HTTP/2 exchanges on fake transports. Real processes: test_cache_live.py."""
import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from proxy_engine.cache import (ResponseCache, etag_matches,
                                format_http_date, freshness, http_date, parse_cache_control)
from proxy_engine.snapshot import CacheOptions, SnapshotError, parse_snapshot
from tests.engine.support import Harness, document
from tests.engine.test_h2 import H2Client

T0 = 1_800_000_000.0           # a fixed "now" (Unix seconds) for the fake clocks


def h(*pairs):
    """Header triples from (name, value) str pairs."""
    return [(n.lower().encode(), n.encode(), v.encode()) for n, v in pairs]


def fresh(status=200, headers=(), request_time=T0, response_time=T0, ttl=0.0, stale=0.0, auth=False):
    return freshness(status, h(*headers), request_time, response_time, ttl, stale, auth)


# -- freshness per directive ---------------------------------------------------------------------

def test_max_age_and_s_maxage_which_wins_for_a_shared_cache():
    assert fresh(headers=[("Cache-Control", "max-age=60")]).lifetime == 60
    f = fresh(headers=[("Cache-Control", "max-age=60, s-maxage=600")])
    assert f.storable and f.lifetime == 600
    assert fresh(headers=[("Cache-Control", "max-age=60"), ("Expires", format_http_date(T0 + 9999).decode())]
                 ).lifetime == 60


def test_expires_minus_date_and_an_invalid_expires_is_already_stale():
    f = fresh(headers=[("Date", format_http_date(T0).decode()), ("Expires", format_http_date(T0 + 120).decode())])
    assert f.storable and f.lifetime == 120
    f = fresh(headers=[("Expires", "0"), ("ETag", '"a"')])
    assert f.lifetime == 0 and f.storable          # stale at once, but revalidatable
    assert not fresh(headers=[("Expires", "0")]).storable


def test_default_ttl_applies_only_to_heuristically_cacheable_statuses_without_freshness():
    assert fresh(ttl=30).lifetime == 30 and fresh(ttl=30).storable
    assert not fresh(ttl=0).storable                # 0 = don't cache those
    assert fresh(404, ttl=30).storable and fresh(301, ttl=30).storable
    assert not fresh(302, ttl=30).storable          # not heuristic: only with explicit freshness
    assert fresh(302, headers=[("Cache-Control", "max-age=5")]).storable
    assert not fresh(206, headers=[("Cache-Control", "max-age=5")]).storable
    assert not fresh(500, ttl=30).storable


@pytest.mark.parametrize("header", [("Cache-Control", "no-store, max-age=60"), ("Cache-Control", "private, max-age=60"),
                                    ("Set-Cookie", "a=b"), ("Vary", "Accept, *")])
def test_never_stored(header):
    f = fresh(headers=[("Cache-Control", "max-age=60"), header], ttl=60)
    assert not f.storable and f.reason


def test_no_cache_is_stored_but_always_stale_and_never_served_stale():
    f = fresh(headers=[("Cache-Control", "no-cache, max-age=60"), ("ETag", '"v1"')], stale=100)
    assert f.storable and f.lifetime == 0 and f.no_stale and f.stale_if_error == 0


def test_must_revalidate_and_s_maxage_forbid_stale_unless_the_response_allows_it():
    assert fresh(headers=[("Cache-Control", "max-age=5, must-revalidate")], stale=60).stale_if_error == 0
    assert fresh(headers=[("Cache-Control", "max-age=5, proxy-revalidate")], stale=60).stale_if_error == 0
    assert fresh(headers=[("Cache-Control", "s-maxage=5")], stale=60).stale_if_error == 0
    assert fresh(headers=[("Cache-Control", "s-maxage=5, stale-if-error=30")], stale=0).stale_if_error == 30
    assert fresh(headers=[("Cache-Control", "max-age=5")], stale=60).stale_if_error == 60
    assert fresh(headers=[("Cache-Control", "max-age=5, stale-if-error=90")], stale=60).stale_if_error == 90


def test_age_calculation_uses_age_date_and_the_response_delay():
    # Age header 10, the response took 2 s: corrected age 12.
    f = fresh(headers=[("Cache-Control", "max-age=60"), ("Age", "10")], request_time=T0 - 2, response_time=T0)
    assert f.corrected_age == 12
    # Date 30 s in the past: apparent age 30 wins over Age 10.
    f = fresh(headers=[("Cache-Control", "max-age=60"), ("Age", "10"), ("Date", format_http_date(T0 - 30).decode())])
    assert f.corrected_age == 30
    # Older than its lifetime on arrival, nothing to revalidate with: not stored.
    assert not fresh(headers=[("Cache-Control", "max-age=60"), ("Age", "100")]).storable


def test_authorization_needs_public_s_maxage_or_must_revalidate():
    assert not fresh(headers=[("Cache-Control", "max-age=60")], auth=True).storable
    for cc in ("public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"):
        assert fresh(headers=[("Cache-Control", cc)], auth=True).storable


def test_small_parsers():
    assert parse_cache_control([b'max-age="5", No-Cache', b"private=x"]) == {"max-age": "5", "no-cache": True,
                                                                              "private": "x"}
    assert http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0 and http_date(b"garbage") is None
    assert etag_matches(b'W/"a"', b'"b", "a"') and etag_matches(b'"a"', b"*") and not etag_matches(b'"a"', b'"b"')


# -- the store ------------------------------------------------------------------------------------

def snapshot(cache=None, generation=0, memory=1 << 20, disk=0, locations=()):
    doc = document()
    doc["settings"]["cache"] = {"memory_bytes": memory, "disk_bytes": disk}
    doc["proxy_hosts"][0]["cache"] = cache if cache is not None else {"enabled": True, "default_ttl": 60.0,
                                                                        "stale_if_error": 0.0}
    doc["proxy_hosts"][0]["cache_generation"] = generation
    doc["proxy_hosts"][0]["locations"] = list(locations)
    return parse_snapshot(doc)


def put(cache, target, body, headers=(("Cache-Control", "max-age=60"),), request_headers=(), generation=0,
        now=T0):
    primary = (1, generation, b"http", b"app.example.test", target)
    f = freshness(200, h(*headers), now, now, 0, 0)
    return cache.store(primary, h(*request_headers), 1, generation, 200, b"OK", h(*headers), body, f, now)


def find(cache, target, request_headers=(), generation=0):
    return cache.find((1, generation, b"http", b"app.example.test", target), h(*request_headers))


def test_memory_is_bounded_in_bytes_least_recently_used_out_first():
    cache = ResponseCache(Clock())
    cache.swap(snapshot(memory=12 * 4096))            # room for 12 of these entries
    for name in (b"/a", b"/b", b"/c"):
        put(cache, name, b"x" * 3000)
    assert find(cache, b"/a") is not None            # /a is now the most recently used
    for name in (b"/d", b"/e", b"/f", b"/g", b"/h", b"/i", b"/j", b"/k", b"/l", b"/m"):
        put(cache, name, b"x" * 3000)
    assert cache.memory_used <= 12 * 4096 and len(cache.memory) == 12
    assert find(cache, b"/a") is not None and find(cache, b"/b") is None
    assert put(cache, b"/big", b"x" * 7000) is None    # over 1/8 of memory_bytes: not stored


def test_vary_keeps_one_entry_per_value_of_the_named_request_headers():
    cache = ResponseCache(Clock())
    cache.swap(snapshot())
    vary = (("Cache-Control", "max-age=60"), ("Vary", "Accept-Language"))
    put(cache, b"/v", b"en", vary, request_headers=[("Accept-Language", "en")])
    put(cache, b"/v", b"fr", vary, request_headers=[("Accept-Language", "fr")])
    assert find(cache, b"/v", [("Accept-Language", "en")]).body == b"en"
    assert find(cache, b"/v", [("Accept-Language", "fr")]).body == b"fr"
    assert find(cache, b"/v", [("Accept-Language", "de")]) is None
    cache.invalidate((1, 0, b"http", b"app.example.test", b"/v"))
    assert find(cache, b"/v", [("Accept-Language", "en")]) is None and not cache.variants


def test_a_higher_generation_drops_the_hosts_older_entries_and_a_disabled_host_all():
    cache = ResponseCache(Clock())
    cache.swap(snapshot(generation=0))
    put(cache, b"/a", b"1")
    cache.swap(snapshot(generation=0))
    assert find(cache, b"/a") is not None
    cache.swap(snapshot(generation=1))
    assert not cache.memory and cache.memory_used == 0 and find(cache, b"/a") is None
    assert put(cache, b"/late", b"old generation", generation=0) is None     # a miss that began before the purge
    put(cache, b"/b", b"2", generation=1)
    cache.swap(snapshot(cache={"enabled": False}, generation=1))
    assert not cache.memory


def test_collapse_bookkeeping_lock_release_and_timeout():
    clock = Clock()
    cache = ResponseCache(clock, lock_timeout=5.0)
    woken = []

    class Tap:
        def __init__(self, name):
            self.name = name

        def wake(self, collapse):
            woken.append((self.name, collapse))

    leader, a, b = Tap("leader"), Tap("a"), Tap("b")
    assert cache.lock("k", leader) is None
    lock = cache.lock("k", a)
    assert cache.lock("k", b) is lock
    cache.release("k", lock, True)
    assert woken == [("a", True), ("b", True)] and not cache.locks
    assert not clock.getDelayedCalls()
    assert cache.lock("k", leader) is None and cache.lock("k", a) is not None
    clock.advance(5.0)
    assert woken[-1] == ("a", False) and not cache.locks


def test_snapshot_parses_cache_options_generation_and_settings():
    snap = snapshot(locations=[{"path": "/api/", "upstreams": [], "cache": {"enabled": False}},
                               {"path": "/img/", "upstreams": [], "cache": None}])
    host = snap.proxy_hosts[0]
    assert host.cache == CacheOptions(True, 60.0, 0.0) and host.cache_generation == 0
    assert host.locations[0].cache == CacheOptions(False, 0.0, 0.0) and host.locations[1].cache is None
    assert (snap.settings.cache.memory_bytes, snap.settings.cache.disk_bytes) == (1 << 20, 0)
    old = parse_snapshot(document())
    assert old.proxy_hosts[0].cache is None and old.settings.cache.memory_bytes == 64 << 20
    doc = document()
    doc["settings"]["cache"] = {"memory_bytes": -1, "disk_bytes": "lots"}
    doc["proxy_hosts"][0].update(cache={"enabled": "yes", "default_ttl": -5, "stale_if_error": "x"},
                                 cache_generation=-1)
    doc["proxy_hosts"][0]["locations"][0]["cache"] = {"default_ttl": "soon"}
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    errors = "\n".join(caught.value.errors)
    for path in ("settings.cache.memory_bytes", "settings.cache.disk_bytes", "proxy_hosts[0].cache.enabled",
                 "proxy_hosts[0].cache.default_ttl", "proxy_hosts[0].cache.stale_if_error",
                 "proxy_hosts[0].cache_generation", "proxy_hosts[0].locations[0].cache.default_ttl"):
        assert path in errors


def test_routes_get_a_policy_only_when_the_host_caches():
    h1 = Harness(snapshot_doc())
    assert h1.factory.router.route(b"app.example.test").cache is not None
    h2 = Harness(document())
    assert h2.factory.router.route(b"app.example.test").cache is None


# -- wired into HTTP/1.1 (fake transports, fake clock) ----------------------------------------------

def snapshot_doc(generation=0, stale=0.0, ttl=0.0, locations=None):
    doc = document()
    doc["proxy_hosts"][0]["cache"] = {"enabled": True, "default_ttl": ttl, "stale_if_error": stale}
    doc["proxy_hosts"][0]["cache_generation"] = generation
    if locations is not None:
        doc["proxy_hosts"][0]["locations"] = locations
    return doc


def harness(doc=None):
    hs = Harness(doc or snapshot_doc())
    hs.reactor.advance(T0)
    return hs


def get(path=b"/page", method=b"GET", extra=b""):
    return method + b" " + path + b" HTTP/1.1\r\nHost: app.example.test\r\n" + extra + b"\r\n"


def response(body=b"hello", headers=b"Cache-Control: max-age=60\r\n", status=b"200 OK"):
    # Connection: close, so each exchange has its own (fake) upstream connection to answer.
    return (b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: %d\r\n" % len(body) + headers
            + b"\r\n" + body)


def ask(hs, request):
    proto, transport = hs.client()
    proto.dataReceived(request)
    return proto, transport


def answer_upstream(hs, reply, index=-1):
    _, up, up_transport = hs.connect_upstream(index)
    sent = up_transport.value()
    up.dataReceived(reply)
    return sent


def stored_then_aged(hs, headers, seconds):
    """GET /page answered by the upstream with these headers (and stored), then `seconds` pass."""
    ask(hs, get())
    answer_upstream(hs, response(headers=headers))
    hs.reactor.advance(seconds)


def refuse_connection(hs):
    """The latest connection attempt to an upstream is refused."""
    _, _, attempt, _, _ = hs.reactor.tcpClients[-1]
    attempt.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def status_of(raw):
    return raw.split(b"\r\n", 1)[0]


def header(raw, name):
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_http1_miss_then_hit_with_age_and_one_upstream_request():
    hs = harness()
    _, client = ask(hs, get())
    answer_upstream(hs, response())
    first = client.value()
    assert status_of(first) == b"HTTP/1.1 200 OK" and header(first, b"X-Cache-Status") == b"MISS"
    assert first.endswith(b"hello") and header(first, b"X-Request-Id")
    hs.reactor.advance(7)
    _, client = ask(hs, get())
    second = client.value()
    assert len(hs.reactor.tcpClients) == 1
    assert header(second, b"X-Cache-Status") == b"HIT" and header(second, b"Age") == b"7"
    assert header(second, b"Content-Length") == b"5" and second.endswith(b"hello")
    _, client = ask(hs, get(method=b"HEAD"))
    head = client.value()
    assert header(head, b"X-Cache-Status") == b"HIT" and head.endswith(b"\r\n\r\n")
    assert header(head, b"Content-Length") == b"5" and len(hs.reactor.tcpClients) == 1


def test_http1_keep_alive_after_a_hit_with_a_large_body():
    hs = harness()
    body = b"z" * 100_000                          # above the size that pairs producers
    proto, client = ask(hs, get())
    answer_upstream(hs, response(body))
    proto.dataReceived(get())
    proto.dataReceived(get())
    assert client.value().count(b"X-Cache-Status: HIT") == 2 and len(hs.reactor.tcpClients) == 1
    assert client.value().endswith(body) and client.producer is None


def test_http1_a_client_conditional_on_a_fresh_entry_gets_304():
    hs = harness()
    ask(hs, get())
    answer_upstream(hs, response(headers=b'Cache-Control: max-age=60\r\nETag: "v1"\r\n'))
    _, client = ask(hs, get(extra=b'If-None-Match: "v1"\r\n'))
    raw = client.value()
    assert status_of(raw) == b"HTTP/1.1 304 Not Modified" and header(raw, b"ETag") == b'"v1"'
    assert header(raw, b"X-Cache-Status") == b"HIT" and not raw.endswith(b"hello")


def test_http1_stale_entry_revalidated_with_304():
    hs = harness()
    ask(hs, get())
    answer_upstream(hs, response(headers=b'Cache-Control: max-age=10\r\nETag: "v1"\r\n'
                                          b"Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Old: 1\r\n"))
    hs.reactor.advance(11)
    _, client = ask(hs, get())
    sent = answer_upstream(hs, b'HTTP/1.1 304 Not Modified\r\nConnection: close\r\nETag: "v1"\r\nCache-Control: max-age=30\r\n'
                                          b"X-Old: 2\r\n\r\n")
    assert b'If-None-Match: "v1"' in sent and b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT" in sent
    raw = client.value()
    assert status_of(raw) == b"HTTP/1.1 200 OK" and raw.endswith(b"hello")
    assert header(raw, b"X-Cache-Status") == b"REVALIDATED" and header(raw, b"X-Old") == b"2"
    _, client = ask(hs, get())                     # refreshed: fresh again for 30 s
    assert header(client.value(), b"X-Cache-Status") == b"HIT" and len(hs.reactor.tcpClients) == 2


def test_http1_stale_entry_replaced_by_a_new_200():
    hs = harness()
    stored_then_aged(hs, b'Cache-Control: max-age=10\r\nETag: "v1"\r\n', 11)
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"new!", b'Cache-Control: max-age=10\r\nETag: "v2"\r\n'))
    assert header(client.value(), b"X-Cache-Status") == b"EXPIRED" and client.value().endswith(b"new!")
    _, client = ask(hs, get())
    assert client.value().endswith(b"new!") and header(client.value(), b"X-Cache-Status") == b"HIT"


def test_http1_request_no_cache_and_pragma_revalidate_and_no_store_bypasses():
    hs = harness()
    ask(hs, get())
    answer_upstream(hs, response(headers=b'Cache-Control: max-age=60\r\nETag: "v1"\r\n'))
    for extra in (b"Cache-Control: no-cache\r\n", b"Pragma: no-cache\r\n", b"Cache-Control: max-age=0\r\n"):
        _, client = ask(hs, get(extra=extra))
        sent = answer_upstream(hs, b'HTTP/1.1 304 Not Modified\r\nConnection: close\r\nETag: "v1"\r\n\r\n')
        assert b'If-None-Match: "v1"' in sent and header(client.value(), b"X-Cache-Status") == b"REVALIDATED"
    _, client = ask(hs, get(extra=b"Cache-Control: no-store\r\n"))
    answer_upstream(hs, response(b"other"))
    assert header(client.value(), b"X-Cache-Status") == b"BYPASS"
    _, client = ask(hs, get())
    assert client.value().endswith(b"hello")       # the no-store request changed nothing


def test_http1_post_bypasses_and_invalidates_and_authorization_is_not_served():
    hs = harness()
    ask(hs, get())
    answer_upstream(hs, response())
    _, client = ask(hs, get(extra=b"Authorization: Bearer x\r\n"))
    answer_upstream(hs, response(b"private"))
    assert header(client.value(), b"X-Cache-Status") == b"MISS" and client.value().endswith(b"private")
    _, client = ask(hs, get())
    assert client.value().endswith(b"hello")       # the authorized answer was not stored
    _, client = ask(hs, get(method=b"POST", extra=b"Content-Length: 0\r\n"))
    answer_upstream(hs, response(b"posted"))
    assert header(client.value(), b"X-Cache-Status") == b"BYPASS"
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"again"))
    assert header(client.value(), b"X-Cache-Status") == b"MISS"


def test_http1_uncacheable_responses_are_not_stored():
    hs = harness()
    for headers in (b"Cache-Control: no-store\r\n", b"Cache-Control: private, max-age=60\r\n",
                    b"Cache-Control: max-age=60\r\nSet-Cookie: s=1\r\n", b"Cache-Control: max-age=60\r\nVary: *\r\n",
                    b""):
        _, client = ask(hs, get())
        answer_upstream(hs, response(headers=headers))
        assert header(client.value(), b"X-Cache-Status") == b"MISS"
    assert not hs.factory.cache.memory


def test_http1_concurrent_misses_collapse_into_one_upstream_request():
    hs = harness()
    _, first = ask(hs, get())
    _, second = ask(hs, get())
    _, third = ask(hs, get())
    assert len(hs.reactor.tcpClients) == 1 and second.value() == b""
    answer_upstream(hs, response())
    assert header(first.value(), b"X-Cache-Status") == b"MISS"
    for client in (second, third):
        assert header(client.value(), b"X-Cache-Status") == b"HIT" and client.value().endswith(b"hello")
    assert len(hs.reactor.tcpClients) == 1 and not hs.factory.cache.locks


def test_http1_followers_go_upstream_when_the_leaders_answer_is_not_storable():
    hs = harness()
    ask(hs, get())
    _, second = ask(hs, get())
    answer_upstream(hs, response(headers=b"Cache-Control: no-store\r\n"))
    assert len(hs.reactor.tcpClients) == 2
    answer_upstream(hs, response(b"own"))
    assert header(second.value(), b"X-Cache-Status") == b"MISS" and second.value().endswith(b"own")


def test_http1_a_follower_whose_leader_is_gone_goes_upstream_at_once():
    hs = harness()
    leader, _ = ask(hs, get())
    _, second = ask(hs, get())
    leader.connectionLost(None)
    assert len(hs.reactor.tcpClients) == 2 and not hs.factory.cache.locks


def test_http1_lock_timeout_releases_followers():
    hs = harness()
    ask(hs, get())
    ask(hs, get())
    hs.reactor.advance(5.0)
    assert len(hs.reactor.tcpClients) == 2


def test_http1_stale_if_error_on_connect_failure_and_on_503_but_not_beyond_the_window():
    hs = harness(snapshot_doc(stale=30.0))
    stored_then_aged(hs, b"Cache-Control: max-age=10\r\n", 20)
    _, client = ask(hs, get())
    refuse_connection(hs)
    raw = client.value()
    assert header(raw, b"X-Cache-Status") == b"STALE" and raw.endswith(b"hello") and header(raw, b"Age") == b"20"
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"down", status=b"503 Service Unavailable", headers=b""))
    assert header(client.value(), b"X-Cache-Status") == b"STALE" and client.value().endswith(b"hello")
    hs.reactor.advance(25)                          # 45 s old: 35 s past its lifetime > 30
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"down", status=b"503 Service Unavailable", headers=b""))
    assert status_of(client.value()) == b"HTTP/1.1 503 Service Unavailable"


def test_http1_no_stale_without_stale_if_error():
    hs = harness()
    stored_then_aged(hs, b"Cache-Control: max-age=10\r\n", 20)
    _, client = ask(hs, get())
    refuse_connection(hs)
    assert status_of(client.value()) == b"HTTP/1.1 502 Bad Gateway"


def test_http1_purge_by_generation_and_a_location_without_cache():
    hs = harness(snapshot_doc(locations=[{"path": "/live/", "upstreams": [], "cache": {"enabled": False}}]))
    ask(hs, get())
    answer_upstream(hs, response())
    _, client = ask(hs, get(b"/live/x"))
    answer_upstream(hs, response())
    assert header(client.value(), b"X-Cache-Status") is None
    hs.factory.swap(parse_snapshot(snapshot_doc(generation=1)))
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"fresh"))
    assert header(client.value(), b"X-Cache-Status") == b"MISS" and client.value().endswith(b"fresh")


def test_http1_default_ttl_caches_responses_without_freshness():
    hs = harness(snapshot_doc(ttl=30.0))
    ask(hs, get())
    answer_upstream(hs, response(headers=b""))
    _, client = ask(hs, get())
    assert header(client.value(), b"X-Cache-Status") == b"HIT"
    hs.reactor.advance(31)
    _, client = ask(hs, get())
    assert len(hs.reactor.tcpClients) == 2


def test_http1_too_big_responses_stream_through_uncached():
    doc = snapshot_doc()
    doc["settings"]["cache"] = {"memory_bytes": 80_000, "disk_bytes": 0}
    hs = harness(doc)
    _, client = ask(hs, get())
    answer_upstream(hs, response(b"b" * 20_000))
    assert header(client.value(), b"X-Cache-Status") == b"MISS" and client.value().endswith(b"b" * 20_000)
    ask(hs, get())
    assert len(hs.reactor.tcpClients) == 2 and not hs.factory.cache.memory


# -- HTTP/2 ----------------------------------------------------------------------------------------

def test_h2_miss_then_hit_and_head():
    hs = harness()
    c = H2Client(hs)
    first = c.request(b"/page")
    answer_upstream(hs, response())
    c.pump()
    assert dict(c.answers[first].headers)[b"x-cache-status"] == b"MISS" and c.answers[first].data == b"hello"
    second = c.request(b"/page")
    headers = dict(c.answers[second].headers)
    assert headers[b"x-cache-status"] == b"HIT" and headers[b"age"] == b"0" and headers[b"content-length"] == b"5"
    assert c.answers[second].data == b"hello" and c.answers[second].ended
    head = c.request(b"/page", method=b"HEAD")
    assert dict(c.answers[head].headers)[b"x-cache-status"] == b"HIT" and c.answers[head].data == b""
    assert len(hs.reactor.tcpClients) == 1


def test_h2_collapse_and_304_to_a_conditional():
    hs = harness()
    c = H2Client(hs)
    first = c.request(b"/page")
    second = c.request(b"/page")
    answer_upstream(hs, response(headers=b'Cache-Control: max-age=60\r\nETag: "e"\r\n'))
    c.pump()
    assert dict(c.answers[second].headers)[b"x-cache-status"] == b"HIT" and c.answers[second].data == b"hello"
    assert c.answers[first].data == b"hello" and len(hs.reactor.tcpClients) == 1
    third = c.request(b"/page", extra=[(b"if-none-match", b'"e"')])
    assert dict(c.answers[third].headers)[b":status"] == b"304"


# -- the disk tier ----------------------------------------------------------------------------------

class Threads:
    """run_in_thread for tests: runs the function at once (real files) in a Deferred."""

    def __init__(self):
        self.calls = 0

    def __call__(self, f, *args):
        self.calls += 1
        return defer.maybeDeferred(f, *args)


def disk_harness(tmp_path, memory_bytes):
    """A harness whose cache has `memory_bytes` of memory and a 1 MB disk tier in tmp_path
    (file work run at once, see Threads)."""
    doc = snapshot_doc()
    doc["settings"]["cache"] = {"memory_bytes": memory_bytes, "disk_bytes": 1_000_000}
    hs = Harness(doc)
    hs.reactor.advance(T0)
    hs.factory.run_in_thread = Threads()
    hs.factory.cache.root = str(tmp_path)
    hs.factory.swap(parse_snapshot(doc))
    return hs


def test_disk_tier_takes_evicted_entries_and_serves_them_back(tmp_path):
    hs = disk_harness(tmp_path, memory_bytes=40_000)
    bodies = {}
    for i in range(12):
        path = b"/f%d" % i
        bodies[path] = (b"%d" % i) * 4000
        ask(hs, get(path))
        answer_upstream(hs, response(bodies[path]))
    cache = hs.factory.cache
    assert cache.disk and cache.memory_used <= 40_000
    on_disk = list(cache.disk.values())
    assert all(e.body is None and e.path for e in on_disk)
    files = [p for d in tmp_path.iterdir() for p in d.iterdir()]
    assert len(files) == len(on_disk) and sorted(p.stat().st_size for p in files)[0] == 4000
    _, client = ask(hs, get(b"/f0"))           # the first stored is the first evicted
    assert header(client.value(), b"X-Cache-Status") == b"HIT" and client.value().endswith(bodies[b"/f0"])
    assert len(hs.reactor.tcpClients) == 12 and cache.stats["disk_hits"] == 1
    hs.factory.swap(parse_snapshot(snapshot_doc(generation=3)))      # purge: files removed too
    assert not cache.disk and not [p for d in tmp_path.iterdir() for p in d.iterdir()]


def test_disk_tier_stores_responses_too_big_for_memory(tmp_path):
    hs = disk_harness(tmp_path, memory_bytes=16_000)
    big = b"B" * 50_000
    ask(hs, get(b"/big"))
    answer_upstream(hs, response(big))
    assert not hs.factory.cache.memory and len(hs.factory.cache.disk) == 1
    _, client = ask(hs, get(b"/big"))
    assert header(client.value(), b"X-Cache-Status") == b"HIT" and client.value().endswith(big)


def test_http1_websocket_upgrade_on_a_cached_host_is_relayed_untouched():
    hs = harness()
    proto, client = hs.client()
    proto.dataReceived(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    _, up, ut = hs.connect_upstream()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nsrv")
    proto.dataReceived(b"cli")
    assert client.value().endswith(b"srv") and b"X-Cache-Status" not in client.value()
    assert ut.value().endswith(b"cli")


def test_http1_a_follower_behind_an_unstorable_revalidation_sends_only_its_own_headers():
    hs = harness()
    stored_then_aged(hs, b'Cache-Control: max-age=10\r\nETag: "v1"\r\n', 11)
    _, leader = ask(hs, get())
    _, follower = ask(hs, get(extra=b"Cache-Control: no-store\r\n"))    # not eligible: straight upstream
    _, waiting = ask(hs, get())
    assert len(hs.reactor.tcpClients) == 3
    sent = answer_upstream(hs, response(b"v2", b"Cache-Control: no-store\r\n"), index=1)
    assert b'If-None-Match: "v1"' in sent and leader.value().endswith(b"v2")
    assert header(follower.value(), b"X-Cache-Status") is None          # still waiting for its upstream
    sent = answer_upstream(hs, response(b"v3", b"Cache-Control: no-store\r\n"), index=3)
    assert b'If-None-Match: "v1"' in sent and header(waiting.value(), b"X-Cache-Status") == b"EXPIRED"


def test_http1_hits_go_through_the_response_header_rules_like_upstream_answers():
    doc = snapshot_doc()
    doc["proxy_hosts"][0]["headers"] = {"response": {"set": {"X-Env": "home"}, "remove": ["Server"]}}
    hs = harness(doc)
    ask(hs, get())
    answer_upstream(hs, response(headers=b"Cache-Control: max-age=60\r\nServer: upstream/1.0\r\n"))
    _, client = ask(hs, get())
    raw = client.value()
    assert header(raw, b"X-Cache-Status") == b"HIT" and header(raw, b"X-Env") == b"home"
    assert header(raw, b"Server") is None and header(raw, b"X-Request-Id") == b"t-2"


def test_http1_expires_and_age_from_the_upstream_set_the_entry_lifetime():
    hs = harness()
    ask(hs, get())
    date = format_http_date(T0 - 5)
    answer_upstream(hs, response(headers=b"Date: " + date + b"\r\nExpires: " + format_http_date(T0 + 25) + b"\r\n"))
    hs.reactor.advance(10)
    _, client = ask(hs, get())
    assert header(client.value(), b"X-Cache-Status") == b"HIT" and header(client.value(), b"Age") == b"15"
    hs.reactor.advance(16)                           # 31 s old, 30 s of freshness
    _, client = ask(hs, get())
    assert len(hs.reactor.tcpClients) == 2


def test_h2_stale_on_connect_failure_and_revalidation_with_304():
    hs = harness(snapshot_doc(stale=60.0))
    c = H2Client(hs)
    c.request(b"/page")
    answer_upstream(hs, response(headers=b'Cache-Control: max-age=10\r\nETag: "v1"\r\n'))
    c.pump()
    hs.reactor.advance(15)       # (under the connection's 20 s idle timeout)
    stale = c.request(b"/page")
    refuse_connection(hs)
    c.pump()
    assert dict(c.answers[stale].headers)[b"x-cache-status"] == b"STALE" and c.answers[stale].data == b"hello"
    assert c.answers[stale].ended
    again = c.request(b"/page")
    sent = answer_upstream(hs, b'HTTP/1.1 304 Not Modified\r\nConnection: close\r\nETag: "v1"\r\n'
                               b"Cache-Control: max-age=100\r\n\r\n")
    c.pump()
    assert b'If-None-Match: "v1"' in sent
    headers = dict(c.answers[again].headers)
    assert headers[b"x-cache-status"] == b"REVALIDATED" and headers[b":status"] == b"200"
    assert c.answers[again].data == b"hello" and c.answers[again].ended
    hit = c.request(b"/page")
    assert dict(c.answers[hit].headers)[b"x-cache-status"] == b"HIT"


def test_http1_hits_are_compressed_per_client_and_stored_as_identity():
    import gzip

    doc = snapshot_doc()
    doc["proxy_hosts"][0]["compression"] = ["gzip"]
    hs = harness(doc)
    text = b"line of text for the cache and the encoder\n" * 100
    _, client = ask(hs, get(extra=b"Accept-Encoding: gzip\r\n"))
    answer_upstream(hs, response(text, b"Cache-Control: max-age=60\r\nContent-Type: text/plain\r\n"))
    assert header(client.value(), b"Content-Encoding") == b"gzip"
    (entry,) = hs.factory.cache.memory.values()
    assert entry.body == text and all(n != b"content-encoding" for n, _, _ in entry.headers)
    _, client = ask(hs, get(extra=b"Accept-Encoding: gzip\r\n"))
    raw = client.value()
    assert header(raw, b"X-Cache-Status") == b"HIT" and header(raw, b"Content-Encoding") == b"gzip"
    body = raw.split(b"\r\n\r\n", 1)[1]
    chunks, rest = [], body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        if int(size, 16) == 0:
            break
        chunks.append(rest[:int(size, 16)])
        rest = rest[int(size, 16) + 2:]
    assert gzip.decompress(b"".join(chunks)) == text
    _, client = ask(hs, get())
    raw = client.value()
    assert header(raw, b"X-Cache-Status") == b"HIT" and header(raw, b"Content-Encoding") is None
    assert raw.endswith(text) and header(raw, b"Vary") == b"Accept-Encoding"
    assert len(hs.reactor.tcpClients) == 1
