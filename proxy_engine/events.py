"""What the engine reports about its requests: request ids and upstream error events.

`RequestIds` hands out ids that are cheap (a counter formatted in hex) and unique across
workers and restarts (each process draws its own random prefix; build one per worker,
after the fork). The id goes out in `X-Request-Id` on every response and in every error
page, so the dashboard can look a 502 up by what the user saw.

`UpstreamErrorSink` is the engine-side end of the upstream error records, with a
Django-free interface: the protocol calls `on_upstream_error(...)` on the reactor thread
(never blocking: an append to a bounded deque); at most every `interval` seconds the
buffered events are handed, as one list, to `write(events, dropped)` in a thread. While a
write runs, new events wait for the next one. When more than `capacity` events wait, the
oldest are dropped and counted (`dropped`, reported to the next `write` and kept in total
in `dropped_total`). States: IDLE (nothing buffered) -> SCHEDULED (a flush is due) ->
WRITING (a write runs in a thread) -> IDLE or SCHEDULED.

`NullSink` is the sink of an engine that records nothing.
"""
import logging
import os
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer, threads

log = logging.getLogger(__name__)

IDLE, SCHEDULED, WRITING = "idle", "scheduled", "writing"


class RequestIds:
    """`next()` -> bytes such as b"9f3a61c2-1b": process prefix, dash, counter in hex."""

    __slots__ = ("prefix", "counter")

    def __init__(self, prefix=None):
        self.prefix = (prefix or os.urandom(4).hex()).encode("ascii") + b"-"
        self.counter = 0

    def next(self):
        self.counter += 1
        return b"%s%x" % (self.prefix, self.counter)


@dataclass(frozen=True, slots=True)
class UpstreamErrorEvent:
    host_id: int            # the proxy host's id in the snapshot (None if not routed to one)
    request_id: str
    upstream: str           # "host:port", never shown to clients
    status: int             # what the client got (502, 504, ...) or 499 when it went away
    cause: str              # the words of the error page
    detail: str             # the underlying error, e.g. "Connection refused (111)"
    timestamp: float        # seconds since the epoch (the reactor's clock)


class NullSink:
    def on_upstream_error(self, host_id, request_id, upstream, status, cause, detail, timestamp):
        pass

    def stop(self):
        return defer.succeed(None)


class UpstreamErrorSink:
    def __init__(self, reactor, write, interval=1.0, capacity=1000, run_in_thread=None):
        self.reactor = reactor
        self.write = write
        self.interval = interval
        self.pending = deque(maxlen=capacity)
        self.dropped = 0
        self.dropped_total = 0
        self.state = IDLE
        self.run_in_thread = run_in_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self._call = None
        self._writing = None

    def on_upstream_error(self, host_id, request_id, upstream, status, cause, detail, timestamp):
        pending = self.pending
        if len(pending) == pending.maxlen:
            self.dropped += 1
            self.dropped_total += 1
        if isinstance(request_id, bytes):
            request_id = request_id.decode("ascii")
        pending.append(UpstreamErrorEvent(host_id, request_id, upstream, status, cause, detail, timestamp))
        if self.state is IDLE:
            self._schedule()

    def flush(self):
        """Hand what is buffered to `write` now (unless a write runs); the Deferred fires
        when that write ends."""
        if self.state is WRITING:
            return self._writing
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self.pending:
            self.state = IDLE
            return defer.succeed(None)
        events = list(self.pending)
        self.pending.clear()
        dropped, self.dropped = self.dropped, 0
        self.state = WRITING
        done = self._writing = defer.Deferred()
        d = self.run_in_thread(self.write, events, dropped)
        d.addErrback(self._write_failed, len(events))
        d.addBoth(self._written, done)
        return done

    def stop(self):
        """Write what is left (for the reactor's "before shutdown" trigger)."""
        d = self.flush()
        return d.addCallback(lambda _: self.flush() if self.pending else None)

    def _schedule(self):
        self.state = SCHEDULED
        self._call = self.reactor.callLater(self.interval, self.flush)

    def _write_failed(self, failure, count):
        log.error("could not record %s upstream error(s): %s", count, failure.getErrorMessage())

    def _written(self, _, done):
        self._writing = None
        if self.pending:
            self._schedule()
        else:
            self.state = IDLE
        done.callback(None)


def log_upstream_errors(events, dropped):
    """A `write` for an engine without a database (`python -m proxy_engine`): log lines."""
    for e in events:
        log.warning("upstream error host=%s request=%s upstream=%s status=%s: %s (%s)",
                    e.host_id, e.request_id, e.upstream, e.status, e.cause, e.detail)
    if dropped:
        log.warning("%s upstream error event(s) dropped (buffer full)", dropped)
