"""Request ids, the upstream error sink, and what the protocol reports to it (fake time)."""
import json
import re

from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxy_engine.events import RequestIds, UpstreamErrorSink
from tests.engine.support import Harness

GET = b"GET /path HTTP/1.1\r\nHost: app.example.test\r\n\r\n"


class FakeThreads:
    """Stands in for the thread pool: records each call, fires its Deferred when told."""

    def __init__(self):
        self.calls = []

    def __call__(self, function, *args):
        d = defer.Deferred()
        self.calls.append((function, args, d))
        return d

    def finish(self, index=-1, result=None):
        function, args, d = self.calls[index]
        if isinstance(result, Exception):
            d.errback(Failure(result))
        else:
            d.callback(function(*args))


def make_sink(capacity=100):
    reactor = MemoryReactorClock()
    written = []
    threads = FakeThreads()
    sink = UpstreamErrorSink(reactor, lambda events, dropped: written.append((events, dropped)),
                             interval=1.0, capacity=capacity, run_in_thread=threads)
    return reactor, sink, threads, written


def report(sink, n):
    sink.on_upstream_error(1, b"abc-%x" % n, "10.0.0.1:80", 502, "refused", "detail", 1000.0 + n)


# -- request ids -------------------------------------------------------------------------

def test_request_ids_are_a_process_prefix_and_a_hex_counter():
    ids = RequestIds()
    first, second = ids.next(), ids.next()
    assert re.fullmatch(rb"[0-9a-f]{8}-1", first) and second == first[:-1] + b"2"
    assert RequestIds().prefix != ids.prefix, "two processes (or restarts) must not share a prefix"


# -- the sink ----------------------------------------------------------------------------

def test_sink_writes_buffered_events_in_one_batch_after_the_interval():
    reactor, sink, threads, written = make_sink()
    report(sink, 1)
    report(sink, 2)
    assert threads.calls == []
    reactor.advance(0.9)
    assert threads.calls == []
    reactor.advance(0.1)
    assert len(threads.calls) == 1
    threads.finish()
    events, dropped = written[0]
    assert [e.request_id for e in events] == ["abc-1", "abc-2"] and dropped == 0
    assert events[0].upstream == "10.0.0.1:80" and events[0].timestamp == 1001.0
    assert sink.state == "idle" and not reactor.getDelayedCalls()


def test_events_arriving_during_a_write_wait_for_the_next_one():
    reactor, sink, threads, written = make_sink()
    report(sink, 1)
    reactor.advance(1)
    report(sink, 2)
    reactor.advance(5)
    assert len(threads.calls) == 1, "never two writes at once"
    threads.finish()
    assert len(written) == 1 and [e.request_id for e in written[0][0]] == ["abc-1"]
    reactor.advance(1)
    threads.finish()
    assert [e.request_id for e in written[1][0]] == ["abc-2"]


def test_a_full_buffer_drops_the_oldest_and_counts_them():
    reactor, sink, threads, written = make_sink(capacity=3)
    for n in range(5):
        report(sink, n)
    reactor.advance(1)
    threads.finish()
    events, dropped = written[0]
    assert [e.request_id for e in events] == ["abc-2", "abc-3", "abc-4"]
    assert dropped == 2 and sink.dropped_total == 2 and sink.dropped == 0


def test_a_failed_write_is_logged_and_later_events_are_still_written(caplog):
    reactor, sink, threads, written = make_sink()
    report(sink, 1)
    reactor.advance(1)
    threads.finish(result=RuntimeError("database is down"))
    assert "database is down" in caplog.text
    report(sink, 2)
    reactor.advance(1)
    threads.finish()
    assert [e.request_id for e in written[0][0]] == ["abc-2"]


def test_stop_writes_what_is_left_without_waiting_for_the_interval():
    reactor, sink, threads, written = make_sink()
    report(sink, 1)
    done = sink.stop()
    threads.finish()
    assert done.called and [e.request_id for e in written[0][0]] == ["abc-1"]
    assert not reactor.getDelayedCalls()


# -- what the protocol reports -----------------------------------------------------------

def test_a_502_carries_its_request_id_in_the_header_the_page_and_the_record():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(GET)
    h.reactor.tcpClients[-1][2].clientConnectionFailed(
        None, Failure(terror.ConnectionRefusedError("Connection refused")))
    answer = ct.value()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"\r\nX-Request-Id: t-1\r\n" in answer
    assert b"Request id t-1" in answer.split(b"\r\n\r\n", 1)[1]
    assert b"10.0.1.10" not in answer and b"3000" not in answer
    [event] = h.events.events
    assert event["host_id"] == 1 and event["request_id"] == b"t-1" and event["status"] == 502
    assert event["upstream"] == "10.0.1.10:3000"
    assert event["cause"] == "connection refused by the upstream service"
    assert "Connection refused" in event["detail"]


def test_a_response_timeout_is_recorded_as_504_with_its_detail():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\nAccept: application/json\r\n\r\n")
    h.connect_upstream()
    h.reactor.advance(31)
    body = json.loads(ct.value().split(b"\r\n\r\n", 1)[1])
    assert body == {"status": 504, "error": "the upstream service timed out", "request_id": "t-1"}
    [event] = h.events.events
    assert event["status"] == 504 and event["detail"] == "no bytes from the upstream for 30s"
    assert event["timestamp"] == h.reactor.seconds()


def test_local_answers_and_refusals_carry_a_request_id_too():
    h = Harness()
    client, ct = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: gone.example.test\r\n\r\n")
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: gone.example.test\r\nHost: x\r\n\r\n")
    answers = ct.value()
    assert b"HTTP/1.1 404 Not Found\r\n" in answers and b"HTTP/1.1 400 Bad Request\r\n" in answers
    assert re.findall(rb"X-Request-Id: (\S+)\r\n", answers) == [b"t-1", b"t-2"]
    assert h.events.events == [], "client errors are not upstream errors"


def test_a_client_that_leaves_aborts_the_upstream_exchange_and_is_recorded_as_499():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    request = client.active
    _, up, ut = h.connect_upstream()
    assert ut.value().startswith(b"GET /path")
    client.connectionLost(Failure(terror.ConnectionLost()))
    assert ut.disconnected, "the upstream request must be aborted"
    assert h.factory.pool.idle == {}, "an aborted exchange never goes back to the pool"
    assert request.status == 499
    [event] = h.events.events
    assert event["status"] == 499 and event["request_id"] == b"t-1" and event["host_id"] == 1


def test_a_client_that_leaves_while_the_upstream_connects_cancels_the_attempt():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    request = client.active
    attempt = h.reactor.tcpClients[-1][2]
    client.connectionLost(Failure(terror.ConnectionLost()))
    assert attempt.exchange is None and request.status == 499
    assert [e["status"] for e in h.events.events] == [499]


def test_a_client_that_leaves_after_its_answer_is_not_a_499():
    h = Harness()
    client, _ = h.client()
    client.dataReceived(GET)
    _, up, ut = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    client.connectionLost(Failure(terror.ConnectionDone()))
    assert h.events.events == [] and not ut.disconnected
    assert len(h.factory.pool.idle[("http", "10.0.1.10", 3000)]) == 1
