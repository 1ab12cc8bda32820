"""Per proxy host request and error counters, flushed in 10 s buckets off the reactor thread.

Reactor side: `TrafficCounter.add(host_id, status)` is called once per finished request
that was routed to a proxy host (`ProxyProtocol._log`, `H2Protocol.stream_done`). It is one
dict lookup and one or two integer increments on a two-item list; the list is allocated on
the first request of a host in a bucket only. Nothing else per request: no Deferred, no
logging, no copy. Requests that were not routed to a proxy host (redirections, 404 hosts,
the default site, ACME challenges, refused before routing) are not counted.

An **error** is an answer with status >= 500: the engine's own 502/503/504 and the
upstream's 5xx. 499 (the client left before the answer) and every 4xx count as requests
only: they say something about the client, not about the host.

Buckets are aligned to the wall clock (multiples of `interval` seconds since the epoch, as
the reactor's clock tells), so the buckets of several workers and nodes add up. At the end
of each bucket the counts dict is swapped for a fresh one (on the reactor: one reference
swap) and handed to `write(bucket_start, {host_id: (requests, errors)})` in a thread; an
empty bucket is not written. At most one write runs at a time; buckets that wait meanwhile
are kept up to `backlog` (drop-oldest, counted in `dropped`), so a stuck database never
grows memory nor blocks the reactor. States: COUNTING -> WRITING (a write runs) -> COUNTING.
"""
import logging
from collections import deque

from twisted.internet import defer, threads

log = logging.getLogger(__name__)


class TrafficCounter:
    __slots__ = ("reactor", "write", "interval", "counts", "waiting", "dropped", "run_in_thread",
                 "_call", "_writing")

    def __init__(self, reactor, write, interval=10.0, backlog=30, run_in_thread=None):
        self.reactor = reactor
        self.write = write
        self.interval = interval
        self.counts = {}
        self.waiting = deque(maxlen=backlog)      # (bucket_start, counts) not yet written
        self.dropped = 0                          # buckets dropped because the writer fell behind
        self.run_in_thread = run_in_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self._call = None
        self._writing = None

    def add(self, host_id, status):
        """Count one finished request of proxy host `host_id` (reactor thread)."""
        counts = self.counts.get(host_id)
        if counts is None:
            counts = self.counts[host_id] = [0, 0]
        counts[0] += 1
        if status >= 500:
            counts[1] += 1

    def start(self):
        self._schedule()

    def _schedule(self):
        now = self.reactor.seconds()
        self._call = self.reactor.callLater(self.interval - now % self.interval, self.flush)

    def bucket_start(self, now=None):
        """The start of the bucket `now` (default: the reactor's time) falls in."""
        now = self.reactor.seconds() if now is None else now
        return now - now % self.interval

    def flush(self, final=False):
        """End the current bucket: hand its counts to the writer. Returns a Deferred that
        fires once what waits has been written (or immediately if a write is running)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        # Called at (or just after) a bucket's end: the counts belong to the bucket before now.
        now = self.reactor.seconds()
        bucket = self.bucket_start(now if final else now - self.interval / 2)
        counts, self.counts = self.counts, {}
        if counts:
            if len(self.waiting) == self.waiting.maxlen:
                self.dropped += 1
            self.waiting.append((bucket, counts))
        if not final:
            self._schedule()
        return self._write_next()

    def _write_next(self):
        if self._writing is not None:
            return self._writing
        if not self.waiting:
            return defer.succeed(None)
        bucket, counts = self.waiting.popleft()
        d = self.run_in_thread(self._write, bucket, counts)
        d.addErrback(lambda f: log.error("could not record traffic of %s host(s): %s",
                                         len(counts), f.getErrorMessage()))
        self._writing = d
        d.addBoth(self._written)
        return d

    def _write(self, bucket, counts):        # in a thread
        self.write(bucket, {host_id: (c[0], c[1]) for host_id, c in counts.items()})

    def _written(self, _):
        self._writing = None
        if self.waiting:
            self._write_next()

    def stop(self):
        """Write the current, partial bucket and what waits (the "before shutdown" trigger)."""
        self.flush(final=True)
        return self._drain()

    def _drain(self):
        writing = self._writing or self._write_next()
        if self._writing is None:
            return writing
        return writing.addCallback(lambda _: self._drain())


def log_traffic(bucket_start, counts):
    """A `write` for an engine without a database (`python -m proxy_engine`): debug lines."""
    for host_id, (requests, errors) in sorted(counts.items(), key=lambda item: str(item[0])):
        log.debug("traffic bucket=%d host=%s requests=%d errors=%d", bucket_start, host_id, requests, errors)
