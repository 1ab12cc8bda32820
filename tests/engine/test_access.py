"""Access control (proxy_engine.access): parsing, policy decisions, password verification
without Django, the credential cache, and enforcement in the HTTP/1.1 and HTTP/2 protocols."""
import base64
import ipaddress

import pytest
from django.contrib.auth.hashers import PBKDF2SHA1PasswordHasher, make_password
from twisted.internet import defer

from proxy_engine import access as access_module
from proxy_engine.access import (ALLOWED, FORBIDDEN, PENDING, UNAUTHORIZED, AccessPolicy, PasswordHash,
                                 client_address, verify_password)
from proxy_engine.routing import Router
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import Harness, document
from tests.engine.test_h2 import H2Client

PASSWORD = "s3cret-pässword"
HASH = make_password(PASSWORD, hasher="pbkdf2_sha256")


def basic(username, password):
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode("utf-8"))


def access_doc(satisfy="any", pass_auth=False, users=True, rules=(("allow", "192.168.1.0/24"), ("deny", "all")),
               trusted=("10.0.0.0/8",)):
    doc = document()
    doc["settings"]["trusted_proxies"] = list(trusted)
    doc["proxy_hosts"][0]["access_list"] = "family"
    doc["access_lists"] = [{
        "name": "family", "satisfy": satisfy, "pass_auth": pass_auth,
        "users": [{"username": "alice", "password_hash": HASH}] if users else [],
        "rules": [{"action": a, "source": s} for a, s in rules],
    }]
    return doc


class Threads:
    """A run_in_thread that counts calls and runs them when told (or at once)."""

    def __init__(self, immediate=True):
        self.immediate = immediate
        self.calls = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        if self.immediate:
            self.run()
        return d

    def run(self):
        while any(not d.called for _, _, d in self.calls):
            for f, args, d in self.calls:
                if not d.called:
                    d.callback(f(*args))


def policy(doc=None, threads=None):
    snapshot = parse_snapshot(doc or access_doc())
    router = Router(snapshot, run_in_thread=threads or Threads())
    return router.route(b"app.example.test").access, router


def harness(doc=None, peer="192.0.2.7", immediate=True):
    h = Harness(doc or access_doc(), peer=peer)
    h.threads = Threads(immediate)
    h.factory.run_in_thread = h.threads
    h.factory.swap(parse_snapshot(doc or access_doc()))
    return h


def ip(text):
    return ipaddress.ip_address(text)


# -- parsing -------------------------------------------------------------------------------

def test_access_lists_parse_into_frozen_objects():
    snapshot = parse_snapshot(access_doc(rules=(("allow", "2001:db8::/32"), ("deny", "10.1.2.3"), ("deny", "all"))))
    (family,) = snapshot.access_lists
    assert (family.name, family.satisfy, family.pass_auth) == ("family", "any", False)
    assert [r.network for r in family.rules] == [ipaddress.ip_network("2001:db8::/32"),
                                                 ipaddress.ip_network("10.1.2.3/32"), None]
    assert family.users[0].username == "alice" and HASH not in repr(family)
    with pytest.raises(AttributeError):
        family.name = "other"


def test_bad_access_lists_are_refused_with_paths_and_no_hash():
    doc = access_doc()
    doc["access_lists"][0].update(satisfy="some", pass_auth="yes")
    doc["access_lists"][0]["rules"] = [{"action": "maybe", "source": "all"}, {"action": "allow", "source": "10.0.0.0/33"}]
    doc["access_lists"][0]["users"].append({"username": "alice", "password_hash": 5})
    with pytest.raises(SnapshotError) as caught:
        parse_snapshot(doc)
    errors = "\n".join(caught.value.errors)
    for path in ("access_lists[0].satisfy", "access_lists[0].pass_auth", "access_lists[0].rules[0].action",
                 "access_lists[0].rules[1].source", "access_lists[0].users[1].username",
                 "access_lists[0].users[1].password_hash"):
        assert path in errors
    assert "a secret value" in errors


def test_a_missing_access_list_still_fails_closed_and_a_known_one_is_enforced():
    doc = access_doc()
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    assert route.kind == "proxy" and route.access.name == "family"
    doc["access_lists"] = []
    route = Router(parse_snapshot(doc)).route(b"app.example.test")
    assert (route.kind, route.status) == ("static", 403) and b"missing" in route.body


def test_a_host_without_an_access_list_has_no_policy():
    assert Router(parse_snapshot(document())).route(b"app.example.test").access is None


# -- decisions -----------------------------------------------------------------------------

def test_first_matching_rule_wins_and_no_match_denies():
    p, _ = policy(access_doc(users=False, rules=(("deny", "192.168.1.9"), ("allow", "192.168.1.0/24"),
                                                 ("allow", "2001:db8::/32"))))
    assert p.address_allowed(ip("192.168.1.10")) and not p.address_allowed(ip("192.168.1.9"))
    assert p.address_allowed(ip("2001:db8::1")) and p.address_allowed(ip("::ffff:192.168.1.10"))
    assert not p.address_allowed(ip("8.8.8.8")) and not p.address_allowed(None)
    assert p.check(ip("8.8.8.8"), False, [], None) == FORBIDDEN
    p, _ = policy(access_doc(users=False, rules=(("deny", "8.8.8.8"), ("allow", "all"))))
    assert p.check(ip("1.1.1.1"), False, [], None) == ALLOWED and p.check(ip("8.8.8.8"), False, [], None) == FORBIDDEN


def test_satisfy_any_lets_an_allowed_address_or_a_login_through():
    p, _ = policy(access_doc(satisfy="any"))
    assert p.check(ip("192.168.1.5"), False, [], None) == ALLOWED
    assert p.check(ip("8.8.8.8"), False, [], None) == UNAUTHORIZED
    good = [(b"authorization", b"Authorization", basic("alice", PASSWORD))]
    assert p.check(ip("8.8.8.8"), False, good, lambda outcome: None) == ALLOWED   # verified at once (Threads)


def test_satisfy_all_needs_the_address_and_the_login():
    p, _ = policy(access_doc(satisfy="all"))
    good = [(b"authorization", b"Authorization", basic("alice", PASSWORD))]
    assert p.check(ip("8.8.8.8"), False, good, None) == FORBIDDEN
    assert p.check(ip("192.168.1.5"), False, [], None) == UNAUTHORIZED
    assert p.check(ip("192.168.1.5"), False, good, lambda outcome: None) == ALLOWED
    nobody, _ = policy(access_doc(users=False, rules=()))
    assert nobody.check(ip("192.168.1.5"), False, [], None) == FORBIDDEN


def test_x_forwarded_for_counts_only_through_trusted_proxies():
    _, router = policy()
    xff = [(b"x-forwarded-for", b"X-Forwarded-For", b"192.168.1.5, 10.0.0.9")]
    assert client_address(ip("10.0.0.1"), True, xff, router.trusts) == ip("192.168.1.5")
    assert client_address(ip("8.8.8.8"), False, xff, router.trusts) == ip("8.8.8.8")
    spoofed = [(b"x-forwarded-for", b"X-Forwarded-For", b"192.168.1.5, 8.8.8.8")]
    assert client_address(ip("10.0.0.1"), True, spoofed, router.trusts) == ip("8.8.8.8")
    garbage = [(b"x-forwarded-for", b"X-Forwarded-For", b"nonsense")]
    assert client_address(ip("10.0.0.1"), True, garbage, router.trusts) == ip("10.0.0.1")


# -- passwords and the cache ---------------------------------------------------------------

def test_pbkdf2_verification_matches_django_without_django():
    stored = PasswordHash(HASH)
    assert verify_password(PASSWORD.encode("utf-8"), stored)
    assert not verify_password(b"wrong", stored)
    sha1_hasher = PBKDF2SHA1PasswordHasher()
    sha1 = PasswordHash(sha1_hasher.encode("pw", sha1_hasher.salt(), iterations=1000))
    assert verify_password(b"pw", sha1)
    assert PasswordHash(make_password("pw", hasher="md5")).digest is None


def test_a_verified_credential_is_remembered_and_not_hashed_again():
    threads = Threads()
    p, _ = policy(threads=threads)
    good = [(b"authorization", b"Authorization", basic("alice", PASSWORD))]
    bad = [(b"authorization", b"Authorization", basic("alice", "nope"))]
    for _ in range(3):
        assert p.check(ip("8.8.8.8"), False, good, lambda outcome: None) == ALLOWED
        assert p.check(ip("8.8.8.8"), False, bad, lambda outcome: None) == UNAUTHORIZED
    assert len(threads.calls) == 2 and p.verifications == 2
    assert PASSWORD.encode() not in b"".join(p.cache) and all(len(k) == 32 for k in p.cache)
    _, fresh = policy(threads=threads)          # a new snapshot starts with an empty cache
    assert fresh.route(b"app.example.test").access.cache == {}


def test_concurrent_checks_of_one_credential_share_one_verification():
    threads = Threads(immediate=False)
    p, _ = policy(threads=threads)
    good = [(b"authorization", b"Authorization", basic("alice", PASSWORD))]
    outcomes = []
    assert p.check(ip("8.8.8.8"), False, good, outcomes.append) == PENDING
    assert p.check(ip("8.8.8.8"), False, good, outcomes.append) == PENDING
    threads.run()
    assert outcomes == [ALLOWED, ALLOWED] and len(threads.calls) == 1


def test_the_cache_is_bounded():
    p, _ = policy()
    p.cache_size = 4
    for n in range(10):
        p.check(ip("8.8.8.8"), False, [(b"authorization", b"A", basic("bob", str(n)))], None)
    assert len(p.cache) == 4


def test_unknown_users_malformed_headers_and_unsupported_hashes_are_refused(caplog):
    doc = access_doc()
    doc["access_lists"][0]["users"].append({"username": "old", "password_hash": make_password("pw", hasher="md5")})
    threads = Threads()
    p, _ = policy(doc, threads)
    for value in (b"Bearer x", b"Basic !!!", basic("mallory", "pw")):
        assert p.check(ip("8.8.8.8"), False, [(b"authorization", b"A", value)], None) == UNAUTHORIZED
    for _ in range(2):
        assert p.check(ip("8.8.8.8"), False, [(b"authorization", b"A", basic("old", "pw"))], None) == UNAUTHORIZED
    assert threads.calls == []
    assert len([r for r in caplog.records if "unsupported" in r.getMessage()]) == 1


# -- HTTP/1.1 ------------------------------------------------------------------------------

def get(extra=b""):
    return b"GET / HTTP/1.1\r\nHost: app.example.test\r\n" + extra + b"\r\n"


def test_http1_a_denied_address_gets_403_and_nothing_reaches_the_upstream():
    h = harness(access_doc(users=False), peer="8.8.8.8")
    client, ct = h.client()
    client.dataReceived(get())
    assert ct.value().startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert h.reactor.tcpClients == []


def test_http1_a_missing_login_gets_401_with_a_challenge():
    h = harness(peer="8.8.8.8")
    client, ct = h.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 4\r\n\r\nbody")
    assert ct.value().startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b'WWW-Authenticate: Basic realm="family", charset="UTF-8"\r\n' in ct.value()
    assert h.reactor.tcpClients == []


def test_http1_a_login_is_verified_in_a_thread_then_forwarded_without_authorization():
    h = harness(peer="8.8.8.8", immediate=False)
    client, ct = h.client()
    client.dataReceived(get(b"Authorization: " + basic("alice", PASSWORD) + b"\r\n"))
    assert h.reactor.tcpClients == [] and ct.value() == b""      # waiting for the hash
    h.threads.run()
    _, up, ut = h.connect_upstream()
    assert ut.value().startswith(b"GET / HTTP/1.1\r\n") and b"uthorization" not in ut.value()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert ct.value().startswith(b"HTTP/1.1 200 OK\r\n")
    client.dataReceived(get(b"Authorization: " + basic("alice", PASSWORD) + b"\r\n"))   # cached: no hashing
    assert len(h.threads.calls) == 1 and ut.value().count(b"GET / HTTP/1.1") == 2


def test_http1_a_wrong_password_gets_401_after_verification():
    h = harness(peer="8.8.8.8", immediate=False)
    client, ct = h.client()
    client.dataReceived(get(b"Authorization: " + basic("alice", "wrong") + b"\r\n"))
    h.threads.run()
    assert ct.value().startswith(b"HTTP/1.1 401 Unauthorized\r\n") and h.reactor.tcpClients == []


def test_http1_a_client_gone_during_verification_is_left_alone():
    h = harness(peer="8.8.8.8", immediate=False)
    client, ct = h.client()
    client.dataReceived(get(b"Authorization: " + basic("alice", PASSWORD) + b"\r\n"))
    client.connectionLost(None)
    h.threads.run()
    assert h.reactor.tcpClients == []


def test_http1_pass_auth_forwards_the_authorization_header():
    h = harness(access_doc(pass_auth=True), peer="8.8.8.8")
    client, _ = h.client()
    client.dataReceived(get(b"Authorization: " + basic("alice", PASSWORD) + b"\r\n"))
    _, _, ut = h.connect_upstream()
    assert b"Authorization: " + basic("alice", PASSWORD) in ut.value()


def test_http1_an_allowed_address_behind_a_trusted_proxy_is_forwarded():
    h = harness(access_doc(users=False), peer="10.0.0.1")
    client, ct = h.client()
    client.dataReceived(get(b"X-Forwarded-For: 192.168.1.5\r\n"))
    _, _, ut = h.connect_upstream()
    assert ut.value().startswith(b"GET / HTTP/1.1\r\n")
    other, ot = h.client()
    other.dataReceived(get(b"X-Forwarded-For: 8.8.8.8\r\n"))
    assert ot.value().startswith(b"HTTP/1.1 403 ")


def test_http1_forwarded_for_from_an_untrusted_peer_is_ignored():
    h = harness(access_doc(users=False), peer="8.8.8.8")
    client, ct = h.client()
    client.dataReceived(get(b"X-Forwarded-For: 192.168.1.5\r\n"))
    assert ct.value().startswith(b"HTTP/1.1 403 ") and h.reactor.tcpClients == []


# -- HTTP/2 --------------------------------------------------------------------------------

def test_h2_401_403_and_a_verified_login_forwarded_without_authorization():
    h = harness(peer="8.8.8.8", immediate=False)
    c = H2Client(h)
    sid = c.request()
    assert c.answers[sid].status == 401
    assert c.answers[sid].header(b"www-authenticate") == b'Basic realm="family", charset="UTF-8"'
    sid = c.request(extra=[(b"authorization", basic("alice", PASSWORD))])
    assert h.reactor.tcpClients == [] and c.answers[sid].headers is None
    h.threads.run()
    c.pump()
    _, up, ut = h.connect_upstream()
    assert b"uthorization" not in ut.value()
    denied = harness(access_doc(users=False), peer="8.8.8.8")
    d = H2Client(denied)
    sid = d.request()
    assert d.answers[sid].status == 403 and denied.reactor.tcpClients == []


def test_h2_a_wrong_password_gets_401():
    h = harness(peer="8.8.8.8", immediate=False)
    c = H2Client(h)
    sid = c.request(extra=[(b"authorization", basic("alice", "wrong"))])
    h.threads.run()
    c.pump()
    assert c.answers[sid].status == 401 and h.reactor.tcpClients == []


def test_the_verifier_runs_in_the_reactor_thread_pool_by_default(monkeypatch):
    seen = []
    monkeypatch.setattr(access_module.threads, "deferToThread", lambda f, *a: seen.append(f) or defer.succeed(f(*a)))
    p = AccessPolicy(parse_snapshot(access_doc()).access_lists[0], lambda peer: False, None)
    good = [(b"authorization", b"A", basic("alice", PASSWORD))]
    assert p.check(ip("8.8.8.8"), False, good, lambda outcome: None) == ALLOWED and seen == [verify_password]
