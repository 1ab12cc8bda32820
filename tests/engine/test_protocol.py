"""The client protocol over StringTransports on a MemoryReactorClock: no sockets, no sleeps."""
from twisted.internet import error as terror
from twisted.python.failure import Failure

from proxy_engine.snapshot import parse_snapshot
from tests.engine.support import Harness, document

GET = b"GET /path?q=1 HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def test_it_forwards_a_get_and_relays_the_answer():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    (host, port, timeout), up, ut = h.connect_upstream()
    assert (host, port, timeout) == ("10.0.1.10", 3000, 5.0)
    sent = ut.value()
    assert sent.startswith(b"GET /path?q=1 HTTP/1.1\r\nHost: app.example.test\r\n")
    assert b"X-Forwarded-For: 192.0.2.7\r\n" in sent and b"X-Real-IP: 192.0.2.7\r\n" in sent
    up.dataReceived(OK)
    assert ct.value() == b"HTTP/1.1 200 OK\r\nX-Request-Id: t-1\r\nContent-Length: 2\r\n\r\nhi"
    assert not ct.disconnecting


def test_keep_alive_reuses_the_pooled_upstream_connection():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    ut.clear()
    client.dataReceived(GET)
    assert len(h.reactor.tcpClients) == 1
    assert ut.value().startswith(b"GET /path?q=1 HTTP/1.1")
    up.dataReceived(OK)
    assert ct.value().count(b"HTTP/1.1 200 OK") == 2


def test_it_returns_502_when_upstream_refuses():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    attempt = h.reactor.tcpClients[-1][2]
    attempt.clientConnectionFailed(None, Failure(terror.ConnectionRefusedError()))
    assert ct.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"connection refused" in ct.value()
    assert b"10.0.1.10" not in ct.value()


def test_it_returns_504_when_the_connect_times_out():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(terror.TimeoutError()))
    assert ct.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


def test_it_returns_504_when_the_upstream_is_silent_past_the_response_timeout():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    h.reactor.advance(29)
    assert ct.value() == b""
    h.reactor.advance(1.5)
    assert ct.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert ut.disconnected


def test_error_page_is_json_when_the_client_prefers_json():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nAccept: application/json\r\n\r\n")
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(terror.ConnectionRefusedError()))
    assert b"Content-Type: application/json" in ct.value()
    assert ct.value().endswith(
        b'{"status": 502, "error": "connection refused by the upstream service", "request_id": "t-1"}')


def test_chunked_request_and_response_are_streamed_and_reframed():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"POST /up HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    _, up, ut = h.connect_upstream()
    assert ut.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    client.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
    assert ut.value().endswith(b"3\r\nabc\r\n0\r\n\r\n")
    up.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n")
    assert ct.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n")
    up.dataReceived(b"0\r\n\r\n")
    assert ct.value().endswith(b"0\r\n\r\n")


def test_close_delimited_response_goes_chunked_to_http11_and_raw_to_http10():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, _ = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
    up.connectionLost(Failure(terror.ConnectionDone()))
    assert ct.value() == b"HTTP/1.1 200 OK\r\nX-Request-Id: t-1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    client10, ct10 = h.client()
    client10.dataReceived(b"GET / HTTP/1.0\r\nHost: app.example.test\r\n\r\n")
    _, up, _ = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
    up.connectionLost(Failure(terror.ConnectionDone()))
    assert ct10.value() == b"HTTP/1.1 200 OK\r\nX-Request-Id: t-2\r\nConnection: close\r\n\r\nabc"
    assert ct10.disconnecting


def test_head_response_has_no_body_and_the_connection_is_reused():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"HEAD / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    _, up, ut = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
    assert ct.value() == b"HTTP/1.1 200 OK\r\nX-Request-Id: t-1\r\nContent-Length: 50\r\n\r\n"
    client.dataReceived(GET)
    assert len(h.reactor.tcpClients) == 1
    up.dataReceived(OK)
    assert ct.value().endswith(b"\r\n\r\nhi")


def test_request_over_max_body_size_gets_413_and_never_reaches_upstream():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5000\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 413 ")
    assert h.reactor.tcpClients == []
    assert ct.disconnecting


def test_chunked_body_growing_over_max_body_size_is_cut_with_413():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    _, up, ut = h.connect_upstream()
    client.dataReceived(b"3e8\r\n" + b"x" * 1000 + b"\r\n10\r\n" + b"y" * 16 + b"\r\n")
    assert ct.value().startswith(b"HTTP/1.1 413 ")
    assert ut.disconnected


def test_a_request_refused_within_one_read_sends_nothing_even_on_a_pooled_connection():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    ut.clear()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3e8\r\n" + b"x" * 1000 + b"\r\n10\r\n" + b"y" * 16 + b"\r\n")
    assert ct.value().count(b"HTTP/1.1 413 ") == 1
    assert ut.value() == b"" and ut.disconnected


def test_a_valid_request_pipelined_before_a_bad_one_is_still_forwarded():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    ut.clear()
    client.dataReceived(GET + b"GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: again\r\n\r\n")
    assert ut.value().startswith(b"GET /path?q=1 HTTP/1.1") and b"again" not in ut.value()
    up.dataReceived(OK)
    assert ct.value().count(b"HTTP/1.1 200 OK") == 2 and ct.disconnecting


def test_malformed_requests_get_400_and_close():
    for raw in (
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
    ):
        h = Harness()
        client, ct = h.client()
        client.dataReceived(raw)
        assert ct.value().startswith(b"HTTP/1.1 400 "), raw
        assert ct.disconnecting, raw
        assert h.reactor.tcpClients == [], raw


def test_oversized_headers_get_431():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 431 ")


def test_unknown_http_version_gets_505():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.2\r\nHost: app.example.test\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 505 ")
    assert ct.disconnecting


def test_redirect_dead_and_default_hosts_answer_locally():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET /a?b=1 HTTP/1.1\r\nHost: OLD.example.test:8080\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"Location: https://new.example.test/a?b=1\r\n" in ct.value()
    assert not ct.disconnecting
    ct.clear()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: gone.example.test.\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 404 Not Found\r\n")
    ct.clear()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_default_site_444_closes_without_answering():
    doc = document()
    doc["settings"]["default_site"] = {"action": "444"}
    h = Harness(doc)
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
    assert ct.value() == b"" and ct.disconnected


def test_absolute_form_target_routes_by_authority_and_is_forwarded_as_sent():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET http://old.example.test/x HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    assert b"Location: https://new.example.test/x\r\n" in ct.value()


def test_trusted_proxy_forwarded_for_is_appended():
    h = Harness(peer="10.1.2.3")
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    _, _, ut = h.connect_upstream()
    assert b"X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n" in ut.value()
    assert b"X-Real-IP: 203.0.113.9\r\n" in ut.value()


def test_untrusted_client_cannot_spoof_forwarded_for():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    _, _, ut = h.connect_upstream()
    assert b"203.0.113.9" not in ut.value()


def test_pipelined_requests_are_answered_in_order():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET + b"GET /second HTTP/1.1\r\nHost: old.example.test\r\n\r\n")
    _, up, _ = h.connect_upstream()
    assert ct.value() == b""
    up.dataReceived(OK)
    assert ct.value().index(b"200 OK") < ct.value().index(b"301 Moved")


def test_a_request_finishes_on_the_snapshot_it_started_with():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 4\r\n\r\nab")
    h.factory.swap(parse_snapshot(document(revision=2, proxy_hosts=[])))
    _, up, ut = h.connect_upstream()
    client.dataReceived(b"cd")
    assert ut.value().endswith(b"\r\n\r\nabcd")
    up.dataReceived(OK)
    assert ct.value().endswith(b"hi")
    ct.clear()
    client2, ct2 = h.client()
    client2.dataReceived(GET)
    assert ct2.value().startswith(b"HTTP/1.1 404 ")


def test_backpressure_registers_each_transport_as_producer_of_the_other_for_streamed_bodies():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"POST / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 2\r\n\r\n")
    _, up, ut = h.connect_upstream()
    assert ut.producer is ct
    client.dataReceived(b"ab")
    up.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert ct.producer is ut
    up.dataReceived(b"0\r\n\r\n")
    assert ct.producer is None and ut.producer is None


def test_small_bodiless_exchanges_skip_producer_pairing():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(OK)
    assert ct.producer is None and ut.producer is None and ct.value().endswith(b"hi")


def test_a_dead_pooled_connection_is_retried_once_for_idempotent_requests():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, _ = h.connect_upstream()
    up.dataReceived(OK)
    client.dataReceived(GET)
    up.connectionLost(Failure(terror.ConnectionDone()))
    assert len(h.reactor.tcpClients) == 2
    _, up2, _ = h.connect_upstream()
    up2.dataReceived(OK)
    assert ct.value().count(b"200 OK") == 2


def test_client_going_away_aborts_the_upstream_request():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    client.connectionLost(Failure(terror.ConnectionDone()))
    assert ut.disconnected
    assert h.factory.active == 0


def test_header_timeout_closes_a_slow_client():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app")
    h.reactor.advance(9)
    assert not ct.disconnecting
    h.reactor.advance(2)
    assert ct.value().startswith(b"HTTP/1.1 408 ")
    assert ct.disconnecting


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: gone.example.test\r\n\r\n")
    h.reactor.advance(19)
    assert not ct.disconnecting
    h.reactor.advance(2)
    assert ct.disconnecting


def test_expect_100_continue_is_answered_before_the_body():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"PUT / HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert ct.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    _, _, ut = h.connect_upstream()
    assert b"Expect" not in ut.value()


def test_websocket_upgrade_is_relayed_after_101():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    _, up, ut = h.connect_upstream()
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in ut.value()
    up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nsrv")
    assert ct.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert ct.value().endswith(b"\r\n\r\nsrv")
    ut.clear()
    client.dataReceived(b"\x81\x00frame")
    assert ut.value() == b"\x81\x00frame"


def test_framing_ambiguity_in_an_upstream_response_gives_502_and_drops_that_connection():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert ct.value().startswith(b"HTTP/1.1 502 ")
    assert ut.disconnected
    assert h.factory.pool.idle.get(("http", "10.0.1.10", 3000), []) == []
