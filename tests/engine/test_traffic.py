"""Per-host request/error counters: counted where requests finish, flushed per 10 s bucket."""
from twisted.internet import error as terror
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxy_engine.traffic import TrafficCounter
from tests.engine.support import Harness
from tests.engine.test_events import FakeThreads

GET = b"GET /path HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def wired(start=1000.0):
    h = Harness()
    h.reactor.advance(start)
    written = []
    threads = FakeThreads()
    traffic = TrafficCounter(h.reactor, lambda bucket, counts: written.append((bucket, counts)),
                             interval=10.0, run_in_thread=threads)
    h.factory.traffic = traffic
    traffic.start()
    return h, traffic, threads, written


def test_requests_and_errors_are_counted_per_host_and_written_after_the_bucket():
    h, traffic, threads, written = wired(start=1003.0)
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, _ = h.connect_upstream()
    up.dataReceived(OK)
    for _ in range(2):                              # the kept-alive upstream connection
        client.dataReceived(GET)
        up.dataReceived(OK)
    client.dataReceived(GET)
    up.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")   # an error
    other, _ = h.client()
    attempts = len(h.reactor.tcpClients)
    other.dataReceived(GET)                         # a 502 from the engine: an error too
    h.reactor.tcpClients[-1][2].clientConnectionFailed(
        None, Failure(terror.ConnectionRefusedError("Connection refused")))
    assert len(h.reactor.tcpClients) == attempts + 1
    assert ct.value().count(b"HTTP/1.1 200 OK") == 3 and b"HTTP/1.1 503" in ct.value()
    assert threads.calls == [], "nothing is written before the bucket ends"
    h.reactor.advance(7)                            # 1010: the bucket 1000..1010 ends
    threads.finish()
    assert written == [(1000.0, {1: (5, 2)})]


def test_other_answers_are_not_counted_and_a_client_that_leaves_is_not_an_error():
    h, traffic, threads, written = wired()
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: gone.example.test\r\n\r\n")    # 404 host
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: old.example.test\r\n\r\n")     # redirection
    client.dataReceived(GET)
    h.connect_upstream()
    client.connectionLost(Failure(terror.ConnectionLost()))                      # 499
    h.reactor.advance(10)
    threads.finish()
    assert written == [(1000.0, {1: (1, 0)})]


def test_an_empty_bucket_is_not_written_and_buckets_follow_the_clock():
    h, traffic, threads, written = wired()
    h.reactor.advance(10)
    assert threads.calls == []
    traffic.add(1, 200)
    traffic.add(2, 503)
    h.reactor.advance(10)
    threads.finish()
    assert written == [(1010.0, {1: (1, 0), 2: (1, 1)})]


def test_buckets_wait_while_a_write_runs_and_the_backlog_is_bounded():
    reactor = MemoryReactorClock()
    written = []
    threads = FakeThreads()
    traffic = TrafficCounter(reactor, lambda b, c: written.append((b, c)), interval=10.0, backlog=2,
                             run_in_thread=threads)
    traffic.start()
    for _ in range(4):
        traffic.add(7, 200)
        reactor.advance(10)
    assert len(threads.calls) == 1, "one write at a time"
    assert traffic.dropped == 1 and len(traffic.waiting) == 2
    threads.finish(0)
    threads.finish(1)
    threads.finish(2)
    assert [b for b, _ in written] == [0.0, 20.0, 30.0]


def test_stop_writes_the_partial_bucket():
    h, traffic, threads, written = wired(start=1004.0)
    traffic.add(1, 200)
    d = traffic.stop()
    threads.finish()
    assert written == [(1000.0, {1: (1, 0)})]
    assert d.called
