"""The access log: batching on a Clock, JSON lines, size rotation, the writer thread, and what
the protocol records per request (status, bytes, cause, 499)."""
import json
import os
import threading

from twisted.internet import error as terror
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxy_engine.accesslog import AccessLog, FileWriter, ThreadedWriter, format_entry, open_access_log
from tests.engine.support import Harness, document
from tests.engine.test_process import doc_for
from tests.live import engine_process, start_upstream, stop_upstream, write_doc

GET = b"GET /path?q=1 HTTP/1.1\r\nHost: app.example.test\r\n\r\n"


class Upstream:
    host, port = "10.0.1.10", 3000


def entry(**changes):
    values = dict(started=1700000000.25, host=b"app.example.test", method=b"GET", target=b'/a"b\\c?x=1',
                  status=200, bytes_in=40, bytes_out=1100, duration=0.0123, upstream=Upstream(),
                  client_ip=b"192.0.2.7", request_id=b"t-1", cause=None)
    values.update(changes)
    return tuple(values.values())


class ListWriter:
    def __init__(self):
        self.batches = []
        self.stopped = False

    def submit(self, batch):
        self.batches.append(batch)

    def stop(self):
        self.stopped = True


class DirectReactor(MemoryReactorClock):
    """callFromThread for the writer thread's last call (the test joins the thread first)."""

    def callFromThread(self, function, *args):
        function(*args)


def test_entries_are_batched_and_handed_over_once_per_interval():
    reactor, writer = MemoryReactorClock(), ListWriter()
    access_log = AccessLog(reactor, writer, interval=0.25)
    access_log.record(entry())
    access_log.record(entry(status=404))
    assert writer.batches == [] and len(reactor.getDelayedCalls()) == 1
    reactor.advance(0.25)
    assert [len(b) for b in writer.batches] == [2]
    assert not reactor.getDelayedCalls(), "no timer while nothing is buffered"


def test_a_full_batch_is_handed_over_at_once_and_stop_flushes_the_rest():
    reactor, writer = MemoryReactorClock(), ListWriter()
    access_log = AccessLog(reactor, writer, interval=0.25, max_batch=3)
    for _ in range(4):
        access_log.record(entry())
    assert [len(b) for b in writer.batches] == [3]
    access_log.stop()
    assert [len(b) for b in writer.batches] == [3, 1] and writer.stopped
    assert not reactor.getDelayedCalls()


def test_a_line_is_json_with_every_field():
    line = format_entry(entry(cause="connection refused by the upstream service", status=502))
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    record = json.loads(line)
    assert record == {
        "time": "2023-11-14T22:13:20.250Z", "host": "app.example.test", "method": "GET",
        "path": '/a"b\\c?x=1', "status": 502, "bytes_in": 40, "bytes_out": 1100, "duration_ms": 12.3,
        "upstream": "10.0.1.10:3000", "client_ip": "192.0.2.7", "request_id": "t-1",
        "cause": "connection refused by the upstream service",
    }
    assert json.loads(format_entry(entry(upstream=None, method=None, target=b"/\xff")))["path"] == "/\xff"


def test_the_file_rotates_by_size_and_keeps_the_configured_number_of_backups(tmp_path):
    path = str(tmp_path / "logs" / "access.log")
    writer = FileWriter(path, max_bytes=1000, backups=2)
    line_size = len(format_entry(entry()))
    for _ in range(12):
        writer.write_batch([format_entry(entry())] * 2)
    writer.close()
    names = sorted(os.listdir(tmp_path / "logs"))
    assert names == ["access.log", "access.log.1", "access.log.2", "access.log.lock"]
    for name in names[:-1]:
        size = os.path.getsize(tmp_path / "logs" / name)
        assert 0 < size <= 1000 and size % line_size == 0


def test_a_writer_follows_a_rotation_made_by_another_worker(tmp_path):
    path = str(tmp_path / "access.log")
    first, second = FileWriter(path, max_bytes=1000), FileWriter(path, max_bytes=1000)
    first.write_batch([format_entry(entry())])
    for _ in range(6):
        second.write_batch([format_entry(entry())] * 2)              # rotates the file `first` has open
    first.write_batch([format_entry(entry(request_id=b"after"))])
    with open(path, encoding="ascii") as handle:
        assert json.loads(handle.readlines()[-1])["request_id"] == "after"
    first.close()
    second.close()


def test_the_writer_thread_drops_and_counts_batches_when_it_falls_behind(tmp_path):
    path = str(tmp_path / "access.log")
    release = threading.Event()

    class SlowFile(FileWriter):
        def write_batch(self, batch, dropped=0):
            release.wait()
            super().write_batch(batch, dropped)

    reactor = DirectReactor()
    writer = ThreadedWriter(reactor, SlowFile(path), max_backlog=2).start()
    for _ in range(10):
        writer.submit([format_entry(entry())])         # never blocks, whatever the writer does
    assert writer.dropped_total >= 7                   # one being written, two waiting
    done = writer.stop()
    release.set()
    writer.thread.join()
    assert done.called
    with open(path, encoding="ascii") as handle:
        records = [json.loads(line) for line in handle]
    assert records[-1]["dropped"] == writer.dropped_total
    assert len(records) == 10 - writer.dropped_total + 1


def test_off_means_no_access_log():
    assert open_access_log(MemoryReactorClock(), "off") is None
    assert open_access_log(MemoryReactorClock(), "") is None


def logged_harness():
    h = Harness()
    writer = ListWriter()
    h.factory.access_log = AccessLog(h.reactor, writer, interval=0.25)
    return h, writer


def records(h, writer):
    h.factory.access_log.flush()
    return [json.loads(line) for batch in writer.batches for line in batch]


def test_a_proxied_request_is_logged_with_its_upstream_and_sizes():
    h, writer = logged_harness()
    client, ct = h.client()
    client.dataReceived(GET)
    _, up, _ = h.connect_upstream()
    h.reactor.advance(0.002)
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    [record] = records(h, writer)
    assert record["status"] == 200 and record["method"] == "GET" and record["path"] == "/path?q=1"
    assert record["host"] == "app.example.test" and record["upstream"] == "10.0.1.10:3000"
    assert record["client_ip"] == "192.0.2.7" and record["request_id"] == "t-1"
    assert record["bytes_out"] == len(ct.value()) and record["bytes_in"] > 0
    assert record["duration_ms"] == 2.0 and record["cause"] is None


def test_an_upstream_error_is_logged_with_its_cause():
    h, writer = logged_harness()
    client, ct = h.client()
    client.dataReceived(GET)
    h.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(terror.ConnectionRefusedError()))
    [record] = records(h, writer)
    assert record["status"] == 502 and "refused" in record["cause"]
    assert record["bytes_out"] == len(ct.value())


def test_a_client_that_leaves_before_the_answer_is_logged_as_499():
    h, writer = logged_harness()
    client, _ = h.client()
    client.dataReceived(GET)
    h.connect_upstream()
    client.connectionLost(Failure(terror.ConnectionDone()))
    [record] = records(h, writer)
    assert record["status"] == 499


def test_a_client_that_leaves_in_the_middle_of_a_body_is_logged_as_499():
    h, writer = logged_harness()
    client, _ = h.client()
    client.dataReceived(GET)
    _, up, _ = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    client.connectionLost(Failure(terror.ConnectionDone()))
    [record] = records(h, writer)
    assert record["status"] == 499 and record["bytes_out"] > 5


def test_local_answers_and_refusals_are_logged():
    h, writer = logged_harness()
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere.example.test\r\n\r\n")
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    statuses = [r["status"] for r in records(h, writer)]
    assert statuses == [404, 400]


def test_a_slow_request_head_is_logged_as_408():
    h, writer = logged_harness()
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app")
    h.reactor.advance(11)
    assert [r["status"] for r in records(h, writer)] == [408]


def test_the_engine_process_writes_its_access_log_and_flushes_it_on_stop(tmp_path):
    upstream = start_upstream("a")
    try:
        doc_path = tmp_path / "snapshot.json"
        write_doc(doc_path, doc_for(1, upstream.server_address[1]))
        log_path = tmp_path / "logs" / "access.log"
        engine = engine_process(doc_path, "--access-log", str(log_path))
        try:
            engine.wait_for(lambda r, d: r.status == 200)
            response, _ = engine.request("GET", "/logged?x=1")
            request_id = response.getheader("X-Request-Id")
        finally:
            engine.stop()
        with open(log_path, encoding="ascii") as handle:
            records = [json.loads(line) for line in handle]
        [record] = [r for r in records if r["request_id"] == request_id]
        assert record["path"] == "/logged?x=1" and record["status"] == 200
        assert record["upstream"] == f"127.0.0.1:{upstream.server_address[1]}"
    finally:
        stop_upstream(upstream)


def test_a_default_site_that_closes_unanswered_is_logged_as_444():
    doc = document(settings={"default_site": {"action": "444"}, "trusted_proxies": []})
    h = Harness(doc)
    writer = ListWriter()
    h.factory.access_log = AccessLog(h.reactor, writer)
    client, _ = h.client()
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere.example.test\r\n\r\n")
    client.connectionLost(Failure(terror.ConnectionAborted()))
    assert [r["status"] for r in records(h, writer)] == [444]
    assert h.events.events == [], "not an upstream error"
