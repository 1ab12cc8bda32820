"""The ACME HTTP-01 responder: published tokens are answered for any host, before any route."""
import pytest

from proxy_engine.routing import NOT_ACME, Router
from proxy_engine.snapshot import SnapshotError, parse_snapshot
from tests.engine.support import Harness, document

TOKEN = "tok_EN-123"
KEY_AUTH = "tok_EN-123.thumbprint"
CHALLENGES = [{"token": TOKEN, "key_authorization": KEY_AUTH}]


def get(path, host=b"app.example.test"):
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)


def test_the_snapshot_parses_acme_challenges_into_a_dict():
    snapshot = parse_snapshot(document(acme_challenges=CHALLENGES))
    assert snapshot.acme_challenges == {TOKEN: KEY_AUTH}
    assert parse_snapshot(document()).acme_challenges == {}


@pytest.mark.parametrize("entry, message", [
    ({"token": "../etc", "key_authorization": "x"}, "acme_challenges[0].token"),
    ({"token": TOKEN}, "acme_challenges[0]"),
    ("token", "acme_challenges[0]"),
])
def test_a_malformed_challenge_refuses_the_snapshot(entry, message):
    with pytest.raises(SnapshotError) as raised:
        parse_snapshot(document(acme_challenges=[entry]))
    assert message in str(raised.value)


def test_router_challenge_distinguishes_known_unknown_and_other_paths():
    router = Router(parse_snapshot(document(acme_challenges=CHALLENGES)))
    assert router.challenge(b"/.well-known/acme-challenge/" + TOKEN.encode()) == KEY_AUTH.encode()
    assert router.challenge(b"/.well-known/acme-challenge/" + TOKEN.encode() + b"?x=1") == KEY_AUTH.encode()
    assert router.challenge(b"/.well-known/acme-challenge/other") is None
    assert router.challenge(b"/path") is NOT_ACME


@pytest.mark.parametrize("host", [b"app.example.test", b"old.example.test", b"gone.example.test", b"unknown.example.test"])
def test_it_answers_a_published_token_for_any_host_without_touching_upstreams(host):
    h = Harness(document(acme_challenges=CHALLENGES))
    client, ct = h.client()
    client.dataReceived(get(b"/.well-known/acme-challenge/" + TOKEN.encode(), host))
    answer = ct.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain\r\n" in answer
    assert answer.endswith(b"\r\n\r\n" + KEY_AUTH.encode())
    assert h.reactor.tcpClients == []


def test_it_answers_404_for_an_unknown_token_instead_of_proxying():
    h = Harness(document(acme_challenges=CHALLENGES))
    client, ct = h.client()
    client.dataReceived(get(b"/.well-known/acme-challenge/nope"))
    assert ct.value().startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert h.reactor.tcpClients == []


def test_other_paths_are_still_proxied():
    h = Harness(document(acme_challenges=CHALLENGES))
    client, ct = h.client()
    client.dataReceived(get(b"/.well-known/other"))
    assert len(h.reactor.tcpClients) == 1


def test_a_swapped_snapshot_stops_answering_a_removed_token():
    h = Harness(document(acme_challenges=CHALLENGES))
    h.factory.swap(parse_snapshot(document()))
    client, ct = h.client()
    client.dataReceived(get(b"/.well-known/acme-challenge/" + TOKEN.encode()))
    assert ct.value().startswith(b"HTTP/1.1 404 Not Found\r\n")
