"""Load balancing (proxy_engine.balancer): policies and their weights, health-aware skipping,
ip_hash stability, sticky cookies, retries, and the snapshot keys; then the wiring in the
HTTP/1.1 and HTTP/2 protocols on memory transports (the real-socket tests are in test_health.py)."""
import collections
import ipaddress
import random

import pytest

from proxy_engine.balancer import (BalancedGroup, UpstreamGroup, build_group, choose_for, cookie_value, retry_for,
                                   retryable)
from proxy_engine.snapshot import HealthCheck, PassiveCheck, SnapshotError, Sticky, Upstream, parse_snapshot
from tests.engine.support import Harness, document


def ups(*spec):
    """Upstreams 10.0.0.<i>:80 with the given weights."""
    return [Upstream("http", f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(spec)]


class Down:
    """A health state stand-in for pure balancer tests (the real one is in proxy_engine.health)."""

    def __init__(self, up=True):
        self.up = up
        self.failures = []

    def exchange_failed(self, failure):
        self.failures.append(failure)


def counts(picks):
    return collections.Counter(u.host for u in picks)


# -- policies -----------------------------------------------------------------------------------

def test_plain_round_robin_is_the_cheap_group_and_interleaves_by_weight():
    host = parse_snapshot(document()).proxy_hosts[0]
    group = build_group(host, ups(1, 2))
    assert type(group) is UpstreamGroup and not group.balanced
    assert [u.host for u in (group.pick() for _ in range(6))] == ["10.0.0.2", "10.0.0.1", "10.0.0.2"] * 2


def test_round_robin_skips_down_upstreams_and_returns_none_when_all_are_down():
    states = [Down(), Down(False), Down()]
    group = BalancedGroup(ups(1, 1, 1), "round_robin", states)
    assert counts(group.choose() for _ in range(60)) == {"10.0.0.1": 30, "10.0.0.3": 30}
    for s in states:
        s.up = False
    assert group.choose() is None


def test_weighted_round_robin_keeps_weights_among_the_available():
    states = [Down(), Down(), Down(False)]
    group = BalancedGroup(ups(1, 3, 5), "round_robin", states)
    assert counts(group.choose() for _ in range(400)) == {"10.0.0.1": 100, "10.0.0.2": 300}


def test_least_conn_prefers_fewest_in_flight_per_weight_and_rotates_ties():
    inflight = {}
    a, b, c = ups(1, 1, 2)
    group = BalancedGroup([a, b, c], "least_conn", inflight=inflight)
    assert group.counts
    picks = []
    for _ in range(8):                       # nothing released: loads grow, c gets twice as many
        u = group.choose()
        group.acquire(u)
        picks.append(u)
    assert counts(picks) == {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 4}
    assert inflight[c.address] == 4
    for u in picks:
        group.release(u)
    assert inflight == {}
    inflight[a.address] = 5
    inflight[c.address] = 3                  # 3/2 < 5/1 but > 0/1
    assert group.choose() is b
    ties = {group.choose().host for _ in range(2)}
    assert ties == {"10.0.0.2"}
    inflight.clear()
    assert {group.choose().host for _ in range(3)} == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_least_conn_skips_down_upstreams():
    states = [Down(False), Down()]
    group = BalancedGroup(ups(1, 1), "least_conn", states, inflight={ups(1, 1)[1].address: 100})
    assert group.choose().host == "10.0.0.2"


def test_ip_hash_is_stable_weighted_and_moves_only_the_lost_upstreams_clients():
    states = [Down() for _ in range(4)]
    group = BalancedGroup(ups(1, 1, 1, 3), "ip_hash", states)
    clients = [ipaddress.ip_address(f"192.0.{i // 250}.{i % 250}").packed for i in range(6000)]
    before = {key: group.choose(key) for key in clients}
    assert all(group.choose(key) is before[key] for key in clients[:500])      # same client, same upstream
    share = counts(before.values())
    assert 2600 <= share["10.0.0.4"] <= 3400                                  # weight 3 of 6: about half
    for name in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert 700 <= share[name] <= 1300
    states[1].up = False
    after = {key: group.choose(key) for key in clients}
    moved = [key for key in clients if after[key] is not before[key]]
    assert moved and all(before[key].host == "10.0.0.2" for key in moved)
    assert len(moved) == share["10.0.0.2"]
    # Another group object over the same upstreams (another worker) agrees.
    other = BalancedGroup(ups(1, 1, 1, 3), "ip_hash", [Down() for _ in range(4)])
    assert all(other.choose(key).address == before[key].address for key in clients[:500])


def test_random_is_weighted_and_uses_the_injected_rng():
    group = BalancedGroup(ups(1, 3), "random", rng=random.Random(7))
    share = counts(group.choose() for _ in range(4000))
    assert 850 <= share["10.0.0.1"] <= 1150 and share["10.0.0.1"] + share["10.0.0.2"] == 4000
    again = BalancedGroup(ups(1, 3), "random", rng=random.Random(7))
    first = BalancedGroup(ups(1, 3), "random", rng=random.Random(7))
    assert [again.choose().host for _ in range(50)] == [first.choose().host for _ in range(50)]


def test_first_is_failover_in_configured_order():
    states = [Down(), Down(), Down()]
    group = BalancedGroup(ups(1, 5, 1), "first", states)
    assert {group.choose().host for _ in range(10)} == {"10.0.0.1"}
    states[0].up = False
    assert {group.choose().host for _ in range(10)} == {"10.0.0.2"}
    states[0].up = True
    assert group.choose().host == "10.0.0.1"


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "ip_hash", "random", "first"])
def test_every_policy_skips_what_was_tried_and_the_down(policy):
    states = [Down(), Down(False), Down()]
    group = BalancedGroup(ups(1, 1, 1), policy, states)
    tried = {ups(1)[0].address}
    assert {group.choose(b"k", None, tried).host for _ in range(10)} == {"10.0.0.3"}
    tried.add(ups(1, 1, 1)[2].address)
    assert group.choose(b"k", None, tried) is None


# -- sticky sessions ------------------------------------------------------------------------------

def test_sticky_token_is_opaque_stable_and_pins_the_client():
    upstreams = ups(1, 1, 1)
    states = [Down(), Down(), Down()]
    group = BalancedGroup(upstreams, "round_robin", states, sticky=Sticky("gh", 3600.0), host_id=3)
    first = group.choose()
    line = group.set_cookie(first, None)
    assert line.startswith(b"Set-Cookie: gh=") and line.endswith(b"; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600\r\n")
    token = line.split(b"=", 1)[1].split(b";")[0]
    assert len(token) == 16 and b"10.0.0" not in token
    assert {group.choose(None, token) for _ in range(10)} == {first}
    assert group.set_cookie(first, token) == b""                     # the client already has it
    twin = BalancedGroup(upstreams, "round_robin", [Down(), Down(), Down()], sticky=Sticky("gh", 3600.0), host_id=3)
    assert twin.set_cookie(first, None) == line                       # another worker / reload: same token
    other_host = BalancedGroup(upstreams, "round_robin", None, sticky=Sticky("gh", 0.0), host_id=4)
    assert other_host.set_cookie(first, None) != line and b"Max-Age" not in other_host.set_cookie(first, None)


def test_a_cookie_naming_a_down_or_unknown_upstream_falls_back_and_is_replaced():
    states = [Down(), Down()]
    group = BalancedGroup(ups(1, 1), "first", states, sticky=Sticky("gh", 0.0), host_id=1)
    second = ups(1, 1)[1]
    token = group.set_cookie(second, None).split(b"=", 1)[1].split(b";")[0]
    assert group.choose(None, token).host == "10.0.0.2"
    states[1].up = False
    chosen = group.choose(None, token)
    assert chosen.host == "10.0.0.1" and group.set_cookie(chosen, token).startswith(b"Set-Cookie: gh=")
    assert group.choose(None, b"forged-value").host == "10.0.0.1"


def test_cookie_values_are_found_among_several_cookie_headers():
    headers = [(b"cookie", b"Cookie", b"a=1; gh=abc"), (b"cookie", b"cookie", b"x=2")]
    assert cookie_value(headers, b"gh") == b"abc"
    assert cookie_value(headers, b"x") == b"2" and cookie_value(headers, b"g") is None


def test_choose_for_hashes_the_forwarded_client_through_a_trusted_proxy():
    group = BalancedGroup(ups(1, 1, 1, 1, 1), "ip_hash", [Down() for _ in range(5)])
    proxy = ipaddress.ip_address("10.1.1.1")
    trusts = lambda peer: peer is not None and peer in ipaddress.ip_network("10.0.0.0/8")   # noqa: E731
    picks = set()
    for i in range(40):
        headers = [(b"x-forwarded-for", b"X-Forwarded-For", b"198.51.100.%d" % i)]
        upstream, cookie = choose_for(group, headers, proxy, b"10.1.1.1", True, trusts)
        direct, _ = choose_for(group, [], ipaddress.ip_address("198.51.100.%d" % i), b"", False, trusts)
        assert upstream is direct and cookie == b""
        picks.add(upstream.host)
    assert len(picks) > 1                     # not everyone behind the proxy on one upstream


def test_retry_for_moves_to_another_upstream_once_each_and_moves_the_in_flight_count():
    inflight = {}
    a, b, c = ups(1, 1, 1)
    states = [Down(), Down(), Down()]
    group = BalancedGroup([a, b, c], "least_conn", states, inflight=inflight)
    first, _ = choose_for(group, [], None, b"1.2.3.4", False, lambda p: False)
    tried = set()
    second, _ = retry_for(group, first, [], tried)
    third, _ = retry_for(group, second, [], tried)
    assert len({first, second, third}) == 3
    assert retry_for(group, third, [], tried) == (None, b"")
    assert inflight == {third.address: 1}
    plain = UpstreamGroup([a, b])
    tried = set()
    assert retry_for(plain, a, [], tried)[0] is b and retry_for(plain, b, [], tried) == (None, b"")


def test_only_idempotent_bodiless_requests_are_retried():
    assert retryable(b"GET", 0) and retryable(b"HEAD", 0) and retryable(b"DELETE", 0)
    assert not retryable(b"POST", 0) and not retryable(b"PATCH", 0) and not retryable(b"PUT", 10)


def test_failures_go_to_the_upstreams_health_state():
    states = [Down(), Down()]
    group = BalancedGroup(ups(1, 1), "round_robin", states)
    group.failed(ups(1, 1)[1], "boom")
    assert states[1].failures == ["boom"] and states[0].failures == []


# -- the snapshot keys ---------------------------------------------------------------------------

def lb_doc(**lb):
    doc = document()
    doc["proxy_hosts"][0]["load_balancing"] = {"policy": "round_robin", **lb}
    return doc


def test_load_balancing_keys_parse_with_defaults_for_old_documents():
    host = parse_snapshot(lb_doc(health_check={"path": "/health", "interval": 10})).proxy_hosts[0]
    assert host.health_check == HealthCheck("/health", 10.0, 2.0, (200, 399), 2, 3)
    assert host.passive is None and host.sticky is None
    host = parse_snapshot(lb_doc(
        policy="ip_hash",
        health_check={"path": "/up", "interval": 5.0, "timeout": 1.5, "expect": [200, 204], "healthy": 1, "unhealthy": 4},
        passive={"failures": 2, "window": 5, "cooldown": 20.0}, sticky={"cookie": "srv", "max_age": 60})).proxy_hosts[0]
    assert host.policy == "ip_hash"
    assert host.health_check == HealthCheck("/up", 5.0, 1.5, (200, 204), 1, 4)
    assert host.passive == PassiveCheck(2, 5.0, 20.0) and host.sticky == Sticky("srv", 60.0)
    host = parse_snapshot(lb_doc(passive={}, sticky={})).proxy_hosts[0]
    assert host.passive == PassiveCheck() and host.sticky == Sticky()


@pytest.mark.parametrize("lb, path", [
    ({"health_check": {"path": "health", "interval": 5}}, "load_balancing.health_check.path"),
    ({"health_check": {"path": "/a b", "interval": 5}}, "load_balancing.health_check.path"),
    ({"health_check": {"path": "/a\x7f", "interval": 5}}, "load_balancing.health_check.path"),
    ({"health_check": {"path": "/", "interval": 0}}, "load_balancing.health_check.interval"),
    ({"health_check": {"path": "/"}}, "load_balancing.health_check.interval"),
    ({"health_check": {"path": "/", "interval": 5, "timeout": -1}}, "load_balancing.health_check.timeout"),
    ({"health_check": {"path": "/", "interval": 5, "expect": [400, 200]}}, "load_balancing.health_check.expect"),
    ({"health_check": {"path": "/", "interval": 5, "expect": [200]}}, "load_balancing.health_check.expect"),
    ({"health_check": {"path": "/", "interval": 5, "expect": [200, 700]}}, "load_balancing.health_check.expect"),
    ({"health_check": {"path": "/", "interval": 5, "healthy": 0}}, "load_balancing.health_check.healthy"),
    ({"health_check": {"path": "/", "interval": 5, "unhealthy": "3"}}, "load_balancing.health_check.unhealthy"),
    ({"passive": {"failures": 0}}, "load_balancing.passive.failures"),
    ({"passive": {"window": float("nan")}}, "load_balancing.passive.window"),
    ({"passive": {"cooldown": 1e12}}, "load_balancing.passive.cooldown"),
    ({"passive": []}, "load_balancing.passive"),
    ({"sticky": {"cookie": "bad name"}}, "load_balancing.sticky.cookie"),
    ({"sticky": {"cookie": ""}}, "load_balancing.sticky.cookie"),
    ({"sticky": {"max_age": -1}}, "load_balancing.sticky.max_age"),
])
def test_bad_load_balancing_values_are_refused_with_their_path(lb, path):
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(lb_doc(**lb))
    assert any(error.startswith(f"proxy_hosts[0].{path}") for error in caught.value.errors), caught.value.errors


# -- wiring on memory transports -------------------------------------------------------------------

def balanced_doc(policy="round_robin", n=3, **lb):
    doc = document()
    host = doc["proxy_hosts"][0]
    host["upstreams"] = [{"scheme": "http", "host": f"10.0.2.{i + 1}", "port": 80, "weight": 1} for i in range(n)]
    host["load_balancing"] = {"policy": policy, **lb}
    host["locations"] = []
    return doc


def test_http1_a_refused_get_is_retried_on_another_upstream_and_fed_to_passive_health():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    h = Harness(balanced_doc(passive={"failures": 1, "window": 10, "cooldown": 30}))
    proto, transport = h.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    first = h.reactor.tcpClients[-1]
    first[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(h.reactor.tcpClients) == 2 and h.reactor.tcpClients[1][0] != first[0]
    _, upstream, up_transport = h.connect_upstream()
    assert up_transport.value().startswith(b"GET / HTTP/1.1\r\n")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and transport.value().endswith(b"ok")
    registry = h.factory.health
    down = [s for s in registry.states.values() if not s.up]
    assert [s.upstream.host for s in down] == [first[0]]
    assert registry.report()["1"][f"{first[0]}:80"]["state"] == "down"


def test_http1_a_refused_post_is_not_retried():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    h = Harness(balanced_doc())
    proto, transport = h.client()
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 2\r\n\r\nhi")
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(h.reactor.tcpClients) == 1
    assert transport.value().startswith(b"HTTP/1.1 502 ") and b"connection refused" in transport.value()


def test_http1_all_down_answers_502_no_healthy_upstream_and_records_it():
    h = Harness(balanced_doc(passive={"failures": 1, "window": 10, "cooldown": 30}))
    for state in h.factory.health.states.values():
        state.exchange_failed(RuntimeError("x"))
    proto, transport = h.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nAccept: application/json\r\n\r\n")
    assert h.reactor.tcpClients == []
    assert transport.value().startswith(b"HTTP/1.1 502 ") and b"no healthy upstream" in transport.value()
    assert h.events.events[-1]["cause"] == "no healthy upstream" and h.events.events[-1]["status"] == 502


def test_http1_sticky_cookie_is_set_then_honoured():
    h = Harness(balanced_doc(sticky={"cookie": "gh", "max_age": 0}))
    proto, transport = h.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    target = h.reactor.tcpClients[-1][0]
    _, upstream, _ = h.connect_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    head = transport.value()
    assert b"Set-Cookie: gh=" in head and b"; Path=/; HttpOnly; SameSite=Lax\r\n" in head
    token = head.split(b"Set-Cookie: gh=")[1].split(b";")[0]
    for _ in range(4):
        transport.clear()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nCookie: gh=%s\r\n\r\n" % token)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200 OK") and b"Set-Cookie" not in transport.value()
    assert len(h.reactor.tcpClients) == 1 and h.reactor.tcpClients[0][0] == target   # one pinned connection


def test_least_conn_in_flight_counts_are_released_when_requests_end():
    h = Harness(balanced_doc("least_conn"))
    clients = [h.client() for _ in range(3)]
    for proto, _ in clients:
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert sorted(c[0] for c in h.reactor.tcpClients) == ["10.0.2.1", "10.0.2.2", "10.0.2.3"]
    assert sum(h.factory.health.inflight.values()) == 3
    for index, (proto, transport) in enumerate(clients):
        _, upstream, _ = h.connect_upstream(index)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    clients[0][0].connectionLost(None)
    assert h.factory.health.inflight == {}


def test_h2_retries_a_refused_get_and_answers_502_when_every_upstream_refuses():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    from tests.engine.test_h2 import H2Client

    h = Harness(balanced_doc(n=2))
    c = H2Client(h)
    sid = c.request(b"/")
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(h.reactor.tcpClients) == 2
    _, upstream, _ = h.connect_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.pump()
    assert c.answers[sid].status == 200 and c.answers[sid].data == b"ok"
    h = Harness(balanced_doc(n=2))
    c = H2Client(h)
    sid = c.request(b"/x", method=b"POST", end=True)
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    c.pump()
    assert len(h.reactor.tcpClients) == 1
    assert c.answers[sid].status == 502 and b"connection refused" in c.answers[sid].data
    sid = c.request(b"/")
    for _ in range(2):
        h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    c.pump()
    assert len(h.reactor.tcpClients) == 3 and c.answers[sid].status == 502


def test_http1_a_failed_tls_handshake_is_retried_on_another_upstream_and_probes_use_tls():
    from OpenSSL import SSL
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from proxy_engine import tls

    doc = balanced_doc(n=2, health_check={"path": "/h", "interval": 60.0, "timeout": 1.0})
    for u in doc["proxy_hosts"][0]["upstreams"]:
        u.update(scheme="https", port=443, verify=False)
    h = Harness(doc)
    snapshot = tls.attach(parse_snapshot(doc))
    h.factory.pool.client_tls = snapshot.tls.upstreams
    h.reactor.advance(0)
    probes = list(h.reactor.sslClients)
    assert sorted(p[0] for p in probes) == ["10.0.2.1", "10.0.2.2"]           # health checks over TLS ...
    for host, port, attempt, creator, timeout, _ in probes:                   # ... with the same creators
        assert creator is snapshot.tls.upstreams[next(u.address for u in snapshot.proxy_hosts[0].upstreams
                                                      if u.host == host)]
    proto, transport = h.client()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    first = h.reactor.sslClients[-1]
    conn = first[2].buildProtocol(None)
    conn.makeConnection(StringTransport())
    conn.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    second = h.reactor.sslClients[-1]
    assert second[0] != first[0] and len(h.reactor.sslClients) == len(probes) + 2
    conn = second[2].buildProtocol(None)
    conn.makeConnection(StringTransport())
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
