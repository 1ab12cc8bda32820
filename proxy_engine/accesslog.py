"""The access log: one JSON line per request, written off the reactor thread.

Reactor side (`AccessLog`): `record(entry)` formats one JSON line (about 2 us: bytes
%-formatting, the time's seconds part and upstream addresses cached) and appends it to a
list: no I/O, no lock. The first line of a batch arms one `callLater(interval)`; when it
fires (or when `max_batch` lines wait) the list is handed whole to the writer and a new one
starts. Formatting stays on the reactor on purpose: done in the writer thread it would hold
the GIL for milliseconds per batch and stall the reactor at each of its system calls (the
GIL convoy), which measured worse than paying per request. When the writer falls more than
`max_backlog` batches behind (a stuck disk), new batches are dropped and counted instead of
growing memory, and the count is written as a line of its own. Nothing on the reactor
thread ever waits for the writer.

Writer side (`FileWriter` in a `ThreadedWriter`): appends each batch with one `write` and
rotates by size (`path` -> `path.1` -> ... -> `path.<backups>`). Several worker processes may share one
file: each opens it with O_APPEND, rotation happens under an `flock` on `path + ".lock"`,
and a writer whose file was rotated by another process reopens the new one.

The entry tuple, in order: start time (epoch seconds), Host, method, target, status, bytes
in, bytes out, duration (seconds), upstream (an object with `host` and `port`, or None),
client IP, request id, cause (words for an error answer, or None). Bytes arrive as bytes
and are written as latin-1 text (every byte kept), escaped as JSON.
"""
import fcntl
import json
import logging
import os
import queue
import re
import sys
import threading
import time

from twisted.internet import defer

log = logging.getLogger(__name__)

FIELDS = ("time", "host", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms",
          "upstream", "client_ip", "request_id", "cause")

_quote = json.encoder.encode_basestring_ascii       # the C string encoder behind json.dumps
_LINE = (b'{"time":"%s.%03dZ","host":%s,"method":%s,"path":%s,"status":%d,"bytes_in":%d,'
         b'"bytes_out":%d,"duration_ms":%.3f,"upstream":%s,"client_ip":%s,"request_id":%s,'
         b'"cause":%s}\n')
_NEEDS_ESCAPE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')   # anything but printable ASCII, " and \\


def _text(value):
    """A JSON string (bytes) for bytes, str or None; bytes are read as latin-1."""
    if value is None:
        return b"null"
    if isinstance(value, bytes):
        if _NEEDS_ESCAPE.search(value) is None:
            return b'"' + value + b'"'
        value = value.decode("latin-1")
    return _quote(value).encode("ascii")


class _Formatter:
    """Entry tuple -> JSON line (bytes); caches the seconds part of the time and the
    upstream addresses (it runs in the writer thread only)."""

    def __init__(self):
        self.second = None
        self.second_text = b""
        self.upstreams = {}

    def __call__(self, entry):
        (started, host, method, target, status, bytes_in, bytes_out, duration, upstream,
         client_ip, request_id, cause) = entry
        second = int(started)
        if second != self.second:
            self.second = second
            self.second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode("ascii")
        if upstream is None:
            upstream_text = b"null"
        else:
            upstream_text = self.upstreams.get(upstream)
            if upstream_text is None:
                if len(self.upstreams) > 10000:
                    self.upstreams.clear()
                upstream_text = self.upstreams[upstream] = _text(f"{upstream.host}:{upstream.port}")
        # method (an HTTP token: llhttp checked it), client IP and request id (ours) need no escaping
        return _LINE % (self.second_text, int((started - second) * 1000), _text(host),
                        b'"%s"' % method if method else b"null", _text(target), status, bytes_in, bytes_out,
                        duration * 1000.0, upstream_text, b'"%s"' % client_ip, b'"%s"' % request_id,
                        b"null" if cause is None else _text(cause))


def format_entry(entry):
    """One JSON line (bytes, with its newline) for one entry tuple."""
    return _Formatter()(entry)


class AccessLog:
    """The reactor-thread end: buffers entries, hands batches to `writer.submit(batch)`."""

    def __init__(self, reactor, writer, interval=0.25, max_batch=2000):
        self.reactor = reactor
        self.writer = writer
        self.interval = interval
        self.max_batch = max_batch
        self.pending = []
        self.format = _Formatter()
        self._call = None

    def record(self, entry):
        pending = self.pending
        pending.append(self.format(entry))
        if len(pending) == 1:
            self._call = self.reactor.callLater(self.interval, self.flush)
        elif len(pending) >= self.max_batch:
            self.flush()

    def flush(self):
        call = self._call
        self._call = None
        if call is not None and call.active():
            call.cancel()
        batch = self.pending
        if batch:
            self.pending = []
            self.writer.submit(batch)

    def stop(self):
        """Write what is buffered and stop the writer; the Deferred fires once it is written."""
        self.flush()
        return self.writer.stop()


class FileWriter:
    """Appends batches of lines to a file (or a stream), rotating by size.

    Runs in the writer thread only (`ThreadedWriter`); tests call `write_batch` directly.
    """

    def __init__(self, path, max_bytes=10 << 20, backups=5, stream=None):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.stream = stream
        self.handle = None
        self.inode = None

    def write_batch(self, lines, dropped=0):
        data = b"".join(lines)
        if dropped:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            data += json.dumps({"time": now, "dropped": dropped}).encode("ascii") + b"\n"
        if self.stream is not None:
            self.stream.write(data)
            self.stream.flush()
            return
        handle = self._open()
        if self.max_bytes and os.fstat(handle.fileno()).st_size + len(data) > self.max_bytes:
            handle = self._rotate()
        handle.write(data)
        handle.flush()

    def close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _open(self):
        handle = self.handle
        if handle is not None:
            try:
                if os.stat(self.path).st_ino == self.inode:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()                  # another process rotated it away
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.handle = handle = open(self.path, "ab", buffering=0)
        self.inode = os.fstat(handle.fileno()).st_ino
        return handle

    def _rotate(self):
        with open(self.path + ".lock", "ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            # Unless another process has just rotated it, shift the files along.
            if current is not None and current.st_ino == self.inode and current.st_size > 0:
                for index in range(self.backups - 1, 0, -1):
                    older = f"{self.path}.{index}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{index + 1}")
                if self.backups:
                    os.replace(self.path, f"{self.path}.1")
                else:
                    os.unlink(self.path)
            return self._open()


class ThreadedWriter:
    """Runs a `FileWriter` in one daemon thread fed by a queue; `submit` never blocks."""

    def __init__(self, reactor, file_writer, max_backlog=64):
        self.reactor = reactor
        self.file_writer = file_writer
        self.max_backlog = max_backlog
        self.queue = queue.SimpleQueue()
        self.dropped = 0                     # batches' entries dropped, not yet reported
        self.dropped_total = 0
        self._stopped = None
        self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def submit(self, batch):
        if self.queue.qsize() >= self.max_backlog:
            self.dropped += len(batch)
            self.dropped_total += len(batch)
            return
        dropped, self.dropped = self.dropped, 0
        self.queue.put((batch, dropped))

    def stop(self):
        """Write what was submitted (and the count of what was dropped), then end the thread."""
        if self._stopped is None:
            self._stopped = defer.Deferred()
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                self.queue.put(([], dropped))
            self.queue.put(None)
        return self._stopped

    def _run(self):
        get = self.queue.get
        while True:
            item = get()
            if item is None:
                break
            try:
                self.file_writer.write_batch(*item)
            except Exception:
                log.exception("could not write %s access log line(s)", len(item[0]))
        self.file_writer.close()
        self.reactor.callFromThread(self._stopped.callback, None)


def open_access_log(reactor, target, max_bytes=10 << 20, backups=5):
    """The engine's access log for `target`: a path, "-" (stdout) or "off"/"" (None)."""
    if not target or target == "off":
        return None
    if target == "-":
        file_writer = FileWriter(None, stream=sys.stdout.buffer)
    else:
        file_writer = FileWriter(target, max_bytes=max_bytes, backups=backups)
    return AccessLog(reactor, ThreadedWriter(reactor, file_writer).start())
