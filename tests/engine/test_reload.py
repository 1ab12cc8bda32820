"""ConfigWatcher on a Clock, with blocking work run inline by a stand-in for deferToThread."""
import logging

from twisted.internet import defer
from twisted.internet.task import Clock

from proxy_engine.reload import ConfigWatcher, _parse_revision
from tests.engine.support import document


def inline(f, *args):
    return defer.maybeDeferred(f, *args)


class Source:
    def __init__(self, doc):
        self.doc = doc
        self.loads = 0
        self.checks = 0
        self.fail_load = None

    def load_document(self):
        self.loads += 1
        if self.fail_load:
            raise self.fail_load
        return self.doc

    def current_revision(self):
        self.checks += 1
        return self.doc["revision"]


def make(doc=None):
    clock = Clock()
    source = Source(doc or document())
    served = []
    watcher = ConfigWatcher(clock, source.load_document, source.current_revision, served.append,
                            run_in_thread=inline)
    return clock, source, served, watcher


def test_it_loads_the_first_snapshot_on_start():
    clock, source, served, watcher = make()
    watcher.start()
    assert [s.revision for s in served] == [1]
    assert watcher.revision == 1


def test_polling_every_two_seconds_picks_up_a_new_revision_and_skips_unchanged_ones():
    clock, source, served, watcher = make()
    watcher.start()
    clock.advance(2)
    assert source.loads == 1 and source.checks == 2
    source.doc = document(revision=2)
    clock.advance(1.9)
    assert len(served) == 1
    clock.advance(0.2)
    assert [s.revision for s in served] == [1, 2]


def test_a_bad_document_is_refused_and_the_last_good_one_keeps_serving(caplog):
    clock, source, served, watcher = make()
    watcher.start()
    bad = document(revision=2)
    bad["proxy_hosts"][0]["upstreams"][0]["port"] = 0
    source.doc = bad
    with caplog.at_level(logging.ERROR):
        clock.advance(2)
    assert [s.revision for s in served] == [1]
    assert "proxy_hosts[0].upstreams[0].port: 0 out of range" in caplog.text
    loads = source.loads
    clock.advance(2)
    assert source.loads == loads        # the same refused revision is not parsed again
    source.doc = document(revision=3)
    clock.advance(2)
    assert [s.revision for s in served] == [1, 3]


def test_a_failed_load_is_retried_on_the_next_tick_and_logs_no_document(caplog):
    clock, source, served, watcher = make()
    source.fail_load = RuntimeError("database is locked")
    with caplog.at_level(logging.ERROR):
        watcher.start()
    assert served == [] and "database is locked" in caplog.text
    source.fail_load = None
    clock.advance(2)
    assert [s.revision for s in served] == [1]


def test_a_redis_message_with_the_served_revision_is_skipped_and_a_new_one_loads():
    clock, source, served, watcher = make()
    watcher.start()
    watcher.notify(1)
    assert source.loads == 1
    source.doc = document(revision=5)
    watcher.notify(5)
    assert [s.revision for s in served] == [1, 5]


def test_triggers_during_a_load_are_coalesced_into_one_more_check():
    clock = Clock()
    pending = []

    def deferred_thread(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    source = Source(document())
    served = []
    watcher = ConfigWatcher(clock, source.load_document, source.current_revision, served.append,
                            run_in_thread=deferred_thread)
    watcher.start()
    watcher.check()
    watcher.notify(7)
    assert len(pending) == 1
    d, f, args = pending.pop()
    d.callback(f(*args))                 # revision check
    d, f, args = pending.pop()
    source.doc = document(revision=7)
    d.callback(f(*args))                 # load (now sees revision 7)
    assert watcher.state == "checking"   # the coalesced trigger asks again
    assert [s.revision for s in served] == [7]


def test_stop_cancels_polling():
    clock, source, served, watcher = make()
    watcher.start()
    watcher.stop()
    clock.advance(10)
    assert source.checks == 1


def test_revision_messages_are_ascii_digits():
    assert _parse_revision(b"42") == 42
    assert _parse_revision(b" 7\n") == 7
    assert _parse_revision(b"x") is None
