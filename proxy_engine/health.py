"""Upstream health: active checks, passive marking, and the registry that outlives snapshots.

`HealthRegistry(reactor, pool)` is owned by the worker (like `UpstreamPool`, shared by the
http and https factories). `update(snapshot)` keeps one `HealthState` per key
`(upstream address, HealthCheck, PassiveCheck)` for every upstream (host and location ones)
of a host with active or passive checks: a state whose key is still served keeps its
history across the swap; the states of keys no longer served stop their checks and are
forgotten. `state(upstream, check, passive)` is what the balancer's groups hold on to.
It also holds the per-address in-flight counts of least_conn groups (`inflight`).

`HealthState` (one per key):

- `up` (a plain attribute the balancer reads) = active verdict up AND not passively down;
  until the first active result an upstream counts as up;
- active: every `interval` seconds one GET of `path` (`_Probe`), bounded by `timeout`; a
  status within `expect` (inclusive) is a success, anything else (other status, refused,
  reset, timeout, TLS failure) a failure; `healthy` consecutive successes bring a down
  upstream up, `unhealthy` consecutive failures take an up one down;
- passive: `exchange_failed(failure)` (connect failures, resets, response timeouts, bad
  responses, TLS failures of real requests) counts failures in a sliding `window`; reaching
  `failures` marks the upstream down for `cooldown` seconds, after which it is up again
  (unless the active check says otherwise);
- every flip records `since` (unix time) and a short `reason`, is logged, and calls the
  registry's `on_change` (the worker sends a status report soon; `reload.ConfigWatcher`).

A probe is a minimal HTTP/1.1 request over the pool's own machinery (`pool.connect`, the
`UpstreamConnection` parser), so https upstreams are checked over TLS with the same
verification options (the pool's connection creators) as real requests; its connection is
never pooled and is closed as soon as the status line is read. Nothing here blocks: timers
are `callLater`s on the given reactor (`twisted.internet.task.Clock` in tests).

`report()` is the health part of the worker's status report:
`{"<host_id>": {"<host>:<port>": {"state": "up"|"down", "since": float, "reason": str}}}`.
"""
import collections
import logging

from proxy_engine.errors import UpstreamFailure

log = logging.getLogger(__name__)

_USER_AGENT = b"Gatehouse-HealthCheck/1"


def label(upstream):
    """"host:port" ([v6]:port) of an upstream, as the status report names it."""
    host = upstream.host
    return f"[{host}]:{upstream.port}" if ":" in host else f"{host}:{upstream.port}"


def request_target(path):
    """The check's path as request-target bytes (non-ASCII characters percent-encoded as UTF-8)."""
    return b"".join(b"%%%02X" % byte if byte >= 0x80 else bytes((byte,)) for byte in path.encode("utf-8"))


class HealthState:
    __slots__ = ("registry", "upstream", "check", "passive", "up", "since", "reason", "active_up", "checked",
                 "ok_run", "fail_run", "failures", "passive_down", "_cooldown", "_timer", "_probe", "stopped")

    def __init__(self, registry, upstream, check, passive):
        self.registry = registry
        self.upstream = upstream
        self.check = check
        self.passive = passive
        self.up = True
        self.since = registry.reactor.seconds()
        self.reason = "not checked yet" if check is not None else "no failures"
        self.active_up = True
        self.checked = False
        self.ok_run = 0
        self.fail_run = 0
        self.failures = collections.deque()
        self.passive_down = False
        self._cooldown = None
        self._timer = None
        self._probe = None
        self.stopped = False

    # -- active checks ------------------------------------------------------------------

    def start(self):
        if self.check is not None and self._timer is None and not self.stopped:
            self._timer = self.registry.reactor.callLater(0, self._run_check)

    def _run_check(self):
        self._timer = None
        if self.stopped:
            return
        reactor = self.registry.reactor
        if self._probe is None:          # a probe still running (timeout > interval) is not doubled
            self._probe = _Probe(self, reactor, self.registry.pool)
            self._probe.start()
        self._timer = reactor.callLater(self.check.interval, self._run_check)

    def probe_result(self, ok, reason):
        self._probe = None
        if self.stopped:
            return
        self.checked = True
        check = self.check
        if ok:
            self.fail_run = 0
            self.ok_run += 1
            if not self.active_up and self.ok_run >= check.healthy:
                self.active_up = True
                self._settle(f"health check passed {self.ok_run} times")
        else:
            self.ok_run = 0
            self.fail_run += 1
            if self.active_up and self.fail_run >= check.unhealthy:
                self.active_up = False
                self._settle(f"health check failed {self.fail_run} times: {reason}")

    # -- passive ------------------------------------------------------------------------

    def exchange_failed(self, failure):
        passive = self.passive
        if passive is None or self.stopped or self.passive_down:
            return                       # (failures of requests already under way while it is down)
        now = self.registry.reactor.seconds()
        failures = self.failures
        failures.append(now)
        horizon = now - passive.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(failures) >= passive.failures and not self.passive_down:
            failures.clear()
            self.passive_down = True
            self._cooldown = self.registry.reactor.callLater(passive.cooldown, self._cooldown_over)
            cause = getattr(failure, "cause", None) or str(failure)
            self._settle(f"{passive.failures} failed requests within {passive.window:g}s: {cause}")

    def _cooldown_over(self):
        self._cooldown = None
        self.passive_down = False
        if not self.stopped:
            self._settle(f"cooldown of {self.passive.cooldown:g}s over")

    # -- common -------------------------------------------------------------------------

    def _settle(self, reason):
        up = self.active_up and not self.passive_down
        if up == self.up:
            if not up:
                self.reason = reason
            return
        self.up = up
        self.since = self.registry.reactor.seconds()
        self.reason = reason
        (log.info if up else log.warning)("upstream %s is %s: %s", label(self.upstream), "up" if up else "down", reason)
        self.registry.changed(self)

    def stop(self):
        self.stopped = True
        for name in ("_timer", "_cooldown"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        probe = self._probe
        self._probe = None
        if probe is not None:
            probe.cancel()

    def report(self):
        return {"state": "up" if self.up else "down", "since": self.since, "reason": self.reason}


class _Probe:
    """One active check: a GET over a fresh upstream connection; the exchange that
    `proxy_engine.upstream` talks to. Ends once (`state.probe_result`)."""

    __slots__ = ("state", "reactor", "pool", "attempt", "conn", "guard", "done")

    def __init__(self, state, reactor, pool):
        self.state = state
        self.reactor = reactor
        self.pool = pool
        self.attempt = None
        self.conn = None
        self.guard = None
        self.done = False

    def start(self):
        timeout = self.state.check.timeout
        self.guard = self.reactor.callLater(timeout, self._timed_out)
        try:
            self.attempt = self.pool.connect(self.state.upstream, timeout, self)
        except Exception as exc:         # e.g. a TLS creator that cannot be built
            self._end(False, f"could not connect: {exc}")

    def _end(self, ok, reason):
        if self.done:
            return
        self.done = True
        guard = self.guard
        self.guard = None
        if guard is not None and guard.active():
            guard.cancel()
        attempt = self.attempt
        self.attempt = None
        if attempt is not None:
            attempt.cancel()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()
        self.state.probe_result(ok, reason)

    def cancel(self):
        """The state stopped (its host left the snapshot): drop the probe silently."""
        self.done = True
        guard, self.guard = self.guard, None
        if guard is not None and guard.active():
            guard.cancel()
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _timed_out(self):
        self.guard = None
        self._end(False, f"no answer within {self.state.check.timeout:g}s")

    # -- the exchange interface ---------------------------------------------------------

    def cork(self):
        pass

    def uncork(self):
        pass

    def upstream_ready(self, conn):
        self.attempt = None
        if self.done:
            conn.abort()
            return
        self.conn = conn
        upstream = self.state.upstream
        host = label(upstream).encode("ascii", "replace")
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\nConnection: close\r\n\r\n" % (
            request_target(self.state.check.path), host, _USER_AGENT)
        conn.send(self, [head], self.state.check.timeout, False, False)

    def upstream_connect_failed(self, failure):
        self.attempt = None
        self._end(False, failure.cause)

    def upstream_head(self, conn):
        low, high = self.state.check.expect
        status = conn.status
        self._end(low <= status <= high, f"status {status}")

    def upstream_body(self, data):
        pass

    def upstream_done(self, conn, reusable):
        self.conn = None
        if conn.state != "closed":
            conn.abort()
        self._end(False, "no response")

    def upstream_failed(self, conn, failure):
        self.conn = None
        self._end(False, failure.cause)

    def upstream_tunnel(self, rest):
        self._end(False, "unexpected upgrade")

    def upstream_closed(self):
        pass


class HealthRegistry:
    """Health states that outlive snapshots (see the module docstring)."""

    def __init__(self, reactor, pool, on_change=None):
        self.reactor = reactor
        self.pool = pool
        self.on_change = on_change       # called with no argument after any state flips
        self.states = {}                 # (address, check, passive) -> HealthState
        self.hosts = {}                  # host id -> ((label, HealthState), ...)
        self.inflight = {}               # address -> in-flight exchanges (least_conn groups)
        self._snapshot = None

    def update(self, snapshot):
        """Keep/create the states `snapshot` needs, start their checks, stop the others.
        Idempotent for one snapshot (both factories call it on a swap)."""
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        states = {}
        hosts = {}
        for host in snapshot.proxy_hosts:
            check, passive = host.health_check, host.passive
            if check is None and passive is None:
                continue
            rows = []
            seen = set()
            upstreams = list(host.upstreams)
            for location in host.locations:
                upstreams += location.upstreams
            for upstream in upstreams:
                key = (upstream.address, check, passive)
                state = states.get(key) or self.states.get(key)
                if state is None:
                    state = HealthState(self, upstream, check, passive)
                states[key] = state
                name = label(upstream)
                if name not in seen:
                    seen.add(name)
                    rows.append((name, state))
            hosts[host.id] = tuple(rows)
        for key, state in self.states.items():
            if key not in states:
                state.stop()
        self.states = states
        self.hosts = hosts
        for state in states.values():
            state.start()

    def state(self, upstream, check, passive):
        """The state for this key (created if `update` has not seen it: a group built on
        a snapshot that was not passed to `update`, as in unit tests)."""
        key = (upstream.address, check, passive)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = HealthState(self, upstream, check, passive)
            state.start()
        return state

    def changed(self, state):
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("health change hook failed")

    def report(self):
        """{"<host id>": {"<host>:<port>": {"state", "since", "reason"}}} for checked hosts."""
        return {str(host_id): {name: state.report() for name, state in rows} for host_id, rows in self.hosts.items()}

    def stop(self):
        for state in self.states.values():
            state.stop()
        self.states = {}
        self.hosts = {}
        self._snapshot = None


def is_upstream_fault(failure):
    """Whether an exchange failure counts against the upstream (not the client leaving)."""
    return isinstance(failure, UpstreamFailure) and failure.status != 499
