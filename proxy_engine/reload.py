"""Live reload: watch the configuration revision and swap whole snapshots.

`ConfigWatcher` states:

- STOPPED: before `start()` / after `stop()`;
- WAITING: serving `revision` (None before the first good snapshot); a check happens on
  every poll tick (`poll_interval`, default 2 s) and on every Redis message;
- CHECKING: `current_revision()` is running in a thread;
- LOADING: `load_document()` and `parse_snapshot()` are running in a thread.

Triggers that arrive while CHECKING or LOADING set `again`, so one more check follows and
none is lost. A Redis message carries the revision: if it equals the served one the check
is skipped; otherwise the document is loaded directly. A revision whose document failed to
parse is not re-parsed until the revision changes; a failed *load* (database down) is retried
on the next tick. On success `on_snapshot(snapshot)` is called on the reactor thread; on
failure the error is logged (a `SnapshotError` lists paths and problems, never secret values)
and the last good snapshot keeps serving.

Status hook: when given, `on_status(revision, error, hosts, health)` is called in a thread
(never on the reactor thread) after every swap and every failed load or parse, and at least
every `status_interval` seconds as a heartbeat: `revision` is the served one (None before the
first good snapshot), `error` the last load/parse error (None once a later revision is served),
`hosts` the ids of the proxy hosts a `SnapshotError` names by path (`proxy_hosts[2]...`) and
`health` what the `health()` callable returns on the reactor thread (the upstream health of
checked hosts, `proxy_engine.health.HealthRegistry.report`; None without one).
`health_changed()` (an upstream went up or down) sends a report soon: at once if none went
out in the last `health_report_delay` seconds, else when that delay is over (one report for a
burst of flips). Its failures are logged and otherwise ignored.

The Redis subscriber is a daemon thread using redis-py: it subscribes to `gatehouse:config`,
hands each message to the reactor with `callFromThread`, and reconnects with exponential
backoff (capped) when Redis is down. After every (re)subscribe it asks for a check, in case a
message was missed meanwhile. Blocking work never runs on the reactor thread.
"""
import logging
import re
import threading

from twisted.internet import threads

from proxy_engine.snapshot import SnapshotError, parse_snapshot

log = logging.getLogger(__name__)

CHANNEL = "gatehouse:config"
STOPPED, WAITING, CHECKING, LOADING = "stopped", "waiting", "checking", "loading"


_HOST_PATH = re.compile(r"^proxy_hosts\[(\d+)\]")


def _load_and_parse(load_document, parse):
    document = load_document()
    try:
        return parse(document)
    except SnapshotError as exc:
        revision = document.get("revision") if isinstance(document, dict) else None
        exc.revision = revision if isinstance(revision, int) else None
        exc.host_ids = _failing_host_ids(document, exc)
        raise


def _failing_host_ids(document, exc):
    """The `id` of every proxy host a SnapshotError path points at (`proxy_hosts[2]...`)."""
    hosts = document.get("proxy_hosts") if isinstance(document, dict) else None
    ids = []
    for error in getattr(exc, "errors", ()):
        match = _HOST_PATH.match(error)
        if match and isinstance(hosts, list) and int(match.group(1)) < len(hosts):
            host = hosts[int(match.group(1))]
            host_id = host.get("id") if isinstance(host, dict) else None
            if isinstance(host_id, int) and host_id not in ids:
                ids.append(host_id)
    return tuple(ids)


class ConfigWatcher:
    def __init__(self, reactor, load_document, current_revision, on_snapshot, redis_url=None,
                 poll_interval=2.0, parse=parse_snapshot, run_in_thread=None, channel=CHANNEL,
                 on_status=None, status_interval=30.0, clock=None, health=None, health_report_delay=1.0):
        self.reactor = reactor
        self.load_document = load_document
        self.current_revision = current_revision
        self.on_snapshot = on_snapshot
        self.redis_url = redis_url or None
        self.poll_interval = poll_interval
        self.parse = parse
        self.channel = channel
        self.run_in_thread = run_in_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self.state = STOPPED
        self.revision = None
        self.refused_revision = None
        self.last_error = None
        self.again = False
        self.on_status = on_status
        self.status_interval = status_interval
        self.error_hosts = ()
        self.health = health
        self.health_report_delay = health_report_delay
        self._health_call = None
        self._clock = clock or reactor.seconds
        self._status_sent_at = None
        self._poll_call = None
        self._stopping = threading.Event()
        self._thread = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self):
        self.state = WAITING
        self._stopping.clear()
        if self.redis_url:
            self._thread = threading.Thread(target=self._subscribe_loop, name="gatehouse-redis",
                                            daemon=True)
            self._thread.start()
        self._tick()

    def stop(self):
        self.state = STOPPED
        self._stopping.set()
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        if self._health_call is not None and self._health_call.active():
            self._health_call.cancel()
        self._health_call = None

    # -- triggers (reactor thread) ------------------------------------------------------

    def _tick(self):
        self._poll_call = None
        if self.state is STOPPED:
            return
        self.check()
        if self._status_sent_at is not None and self._clock() - self._status_sent_at >= self.status_interval:
            self._report_status()
        self._poll_call = self.reactor.callLater(self.poll_interval, self._tick)

    def notify(self, revision):
        """A Redis message said `revision` is current."""
        if self.state is STOPPED or revision == self.revision or revision == self.refused_revision:
            return
        self.check(revision)

    def check(self, known_revision=None):
        if self.state is STOPPED:
            return
        if self.state is not WAITING:
            self.again = True
            return
        if known_revision is not None:
            self._load()
            return
        self.state = CHECKING
        d = self.run_in_thread(self.current_revision)
        d.addCallbacks(self._checked, self._load_failed)

    # -- results (reactor thread) -------------------------------------------------------

    def _checked(self, revision):
        if self.state is STOPPED:
            return
        self.state = WAITING
        if revision == self.revision or (revision == self.refused_revision and revision is not None):
            self._maybe_again()
            return
        self._load()

    def _load(self):
        self.state = LOADING
        d = self.run_in_thread(_load_and_parse, self.load_document, self.parse)
        d.addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, snapshot):
        if self.state is STOPPED:
            return
        self.state = WAITING
        if snapshot.revision != self.revision:
            try:
                self.on_snapshot(snapshot)
            except Exception:
                log.exception("could not apply configuration revision %s", snapshot.revision)
            else:
                self.revision = snapshot.revision
                self.last_error = None
                self.error_hosts = ()
                log.info("serving configuration revision %s", snapshot.revision)
                self._report_status()
        self._maybe_again()

    def _load_failed(self, failure):
        if self.state is STOPPED:
            return
        self.state = WAITING
        exc = failure.value
        if isinstance(exc, SnapshotError):
            self.refused_revision = getattr(exc, "revision", None)
            self.error_hosts = getattr(exc, "host_ids", ())
            message = str(exc)
        else:
            # Only the type and message: never the document, which holds secrets.
            self.error_hosts = ()
            message = f"could not load: {type(exc).__name__}: {exc}"
        changed = message != self.last_error
        if changed:
            log.error("configuration not applied, keeping revision %s: %s", self.revision, message)
        self.last_error = message
        if changed or self._status_sent_at is None:
            self._report_status()
        self._maybe_again()

    def health_changed(self):
        """An upstream's health flipped: report soon, without flooding (module docstring)."""
        if self.on_status is None or self.state is STOPPED or self._health_call is not None:
            return
        sent = self._status_sent_at
        wait = 0.0 if sent is None else max(0.0, sent + self.health_report_delay - self._clock())
        self._health_call = self.reactor.callLater(wait, self._health_report)

    def _health_report(self):
        self._health_call = None
        if self.state is not STOPPED:
            self._report_status()

    def _report_status(self):
        """Hand (served revision, last error, failing host ids, health) to `on_status` in a thread."""
        if self.on_status is None:
            return
        self._status_sent_at = self._clock()
        try:
            health = self.health() if self.health is not None else None
        except Exception:
            log.exception("could not collect the upstream health")
            health = None
        d = self.run_in_thread(self.on_status, self.revision, self.last_error, self.error_hosts, health)
        d.addErrback(lambda failure: log.warning("could not report the engine status: %s", failure.value))

    def _maybe_again(self):
        if self.again:
            self.again = False
            self.check()

    # -- Redis (subscriber thread) ------------------------------------------------------

    def _subscribe_loop(self):
        import redis

        delay = 0.5
        warned = False
        while not self._stopping.is_set():
            client = None
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3,
                                              socket_keepalive=True, health_check_interval=15)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                if warned:
                    log.info("reconnected to Redis")
                warned = False
                delay = 0.5
                self.reactor.callFromThread(self.check)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        revision = _parse_revision(message.get("data"))
                        self.reactor.callFromThread(self._on_message, revision)
            except Exception as exc:
                if not warned:
                    log.warning("Redis unavailable (%s); polling every %ss, retrying", exc, self.poll_interval)
                    warned = True
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
            finally:
                if client is not None:
                    try:
                        client.close()
                    except Exception:
                        pass

    def _on_message(self, revision):
        if revision is None:
            self.check()
        else:
            self.notify(revision)


def _parse_revision(data):
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    data = str(data).strip()
    return int(data) if data.isdigit() else None
