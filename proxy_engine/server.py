"""Process entry point of the engine, free of Django: listening sockets, workers, shutdown.

`run(...)` serves until SIGINT/SIGTERM. With `workers=1` it runs the reactor in this process.
With `workers=N>1` this process becomes a supervisor: it forks N workers *before* any reactor
exists; each worker binds its own listening socket with SO_REUSEPORT (the kernel spreads
connections across them) and adopts it with `reactor.adoptStreamPort`. The supervisor
forwards SIGTERM/SIGINT to every worker, restarts a worker that dies (with a short pause if
it dies quickly), and exits when all workers are gone after a stop signal.

Worker lifecycle: STARTING (listening, 503 until the first good snapshot) -> SERVING ->
DRAINING (on shutdown: stop accepting, wait up to `drain_timeout` for in-flight requests)
-> stopped.

HTTPS (`https_port`): the same requests through Twisted's TLS, certificates chosen by SNI
(`proxy_engine.tls`). The `TlsServer` (default certificate, dispatching context) is made
once, before forking, so every worker has the same session-ticket keys; each snapshot's TLS
table is built with it in the reload thread. The HTTPS side has its own `ProxyFactory`
(scheme https: X-Forwarded-Proto, HSTS) sharing the pool, the error sink, the request ids
and the access log with the plain one (which gets the HTTPS port for force-HTTPS 301s).

`load_document()` and `current_revision()` are blocking callables; they only ever run in
the reactor's thread pool (see `proxy_engine.reload`). So does `record_upstream_errors(events,
dropped)`, the writer of the upstream error sink (`proxy_engine.events`), when given; what
is still buffered is written after the drain, before the worker exits. So does
`on_status(revision, error, hosts, health)`, the worker's status report (`ConfigWatcher`;
`health` is the worker's `HealthRegistry.report()`, sent again soon after an upstream flips).
"""
import ctypes
import logging
import os
import signal
import socket
import time

from proxy_engine import tls
from proxy_engine.accesslog import open_access_log
from proxy_engine.traffic import TrafficCounter
from proxy_engine.events import NullSink, UpstreamErrorSink
from proxy_engine.protocol import ProxyFactory
from proxy_engine.ratelimit import Limiter
from proxy_engine.reload import ConfigWatcher
from proxy_engine.snapshot import parse_snapshot

log = logging.getLogger(__name__)


def listening_socket(address, port, backlog=1024, reuse_port=True):
    """A bound, listening, non-blocking socket with SO_REUSEADDR (+ SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(reactor, factory, addresses, port, reuse_port=True):
    """Adopt one listening socket per address into `reactor`; returns the listening ports."""
    ports = []
    for address in addresses:
        sock = listening_socket(address, port, reuse_port=reuse_port)
        family = sock.family
        ports.append(reactor.adoptStreamPort(sock.fileno(), family, factory))
        sock.close()                  # the reactor holds its own duplicate
    return ports


def _drain(reactor, factories, ports, timeout):
    from twisted.internet import defer

    for port in ports:
        port.stopListening()
    done = defer.Deferred()
    deadline = reactor.seconds() + timeout

    def poll():
        if sum(f.active for f in factories) <= 0 or reactor.seconds() >= deadline:
            factories[0].pool.close_all()
            done.callback(None)
        else:
            reactor.callLater(0.05, poll)

    poll()
    return done


def run_worker(*, http_port, addresses, load_document, current_revision, redis_url=None,
               poll_interval=2.0, reuse_port=True, drain_timeout=10.0, record_upstream_errors=None,
               access_log="off", https_port=None, tls_server=None, on_status=None,
               on_traffic=None, traffic_interval=10.0, cache_dir=None, on_exit=None):
    """Run one reactor serving the engine until it is stopped (signals stop it).

    `on_exit()` is called in a thread once the worker has drained (the manager deletes the
    worker's status row, so a restarted engine's old worker does not count as live).

    `access_log` is a path, "-" (stdout) or "off" (`proxy_engine.accesslog.open_access_log`).
    `on_traffic(bucket_start, {host_id: (requests, errors)})` is called in a thread every
    `traffic_interval` seconds (`proxy_engine.traffic`); None counts nothing.
    """
    from proxy_engine.reactor import install

    reactor = install()

    reactor.suggestThreadPoolSize(4)
    events = UpstreamErrorSink(reactor, record_upstream_errors) if record_upstream_errors else NullSink()
    requests_log = open_access_log(reactor, access_log)
    traffic = TrafficCounter(reactor, on_traffic, interval=traffic_interval) if on_traffic else None
    serve_https = bool(https_port and tls_server is not None)
    factory = ProxyFactory(reactor, events=events, access_log=requests_log, traffic=traffic, cache_dir=cache_dir,
                           https_port=https_port if serve_https else None)
    factories = [factory]
    if serve_https:
        secure = ProxyFactory(reactor, pool=factory.pool, health=factory.health, scheme=b"https", events=events,
                              cache=factory.cache,
                              request_ids=factory.request_ids, access_log=requests_log,
                              traffic=traffic)
        secure.h2_protocol_class = _h2_protocol_class() if tls_server.h2_enabled else None
        factories.append(secure)
    # One set of rate-limit buckets per worker for both factories, shared through Redis when
    # there is a URL (proxy_engine.ratelimit).
    limiter = Limiter(reactor, redis_url)
    for f in factories:
        f.limiter = limiter

    def parse(document):                 # reload thread: the snapshot and its TLS table
        return tls.attach(parse_snapshot(document), tls_server if serve_https else None)

    def swap(snapshot):
        if serve_https:
            tls_server.swap(snapshot.tls)
        factory.pool.client_tls = snapshot.tls.upstreams
        for f in factories:
            f.swap(snapshot)

    watcher = ConfigWatcher(reactor, load_document, current_revision, swap, parse=parse,
                            redis_url=redis_url, poll_interval=poll_interval, on_status=on_status,
                            health=factory.health.report)
    factory.health.on_change = watcher.health_changed
    ports = serve(reactor, factory, addresses, http_port, reuse_port=reuse_port)
    log.info("engine worker %s listening on %s port %s", os.getpid(), ", ".join(addresses), http_port)
    if serve_https:
        ports += serve(reactor, tls.https_factory(tls_server, secure), addresses, https_port, reuse_port=reuse_port)
        log.info("engine worker %s serving HTTPS on port %s", os.getpid(), https_port)
    reactor.callWhenRunning(watcher.start)
    reactor.callWhenRunning(limiter.start)
    if traffic is not None:
        reactor.callWhenRunning(traffic.start)
    reactor.addSystemEventTrigger("before", "shutdown", watcher.stop)
    reactor.addSystemEventTrigger("before", "shutdown", limiter.stop)
    reactor.addSystemEventTrigger("before", "shutdown", factory.health.stop)
    reactor.addSystemEventTrigger(
        "before", "shutdown",
        lambda: _drain(reactor, factories, ports, drain_timeout).addCallback(lambda _: events.stop())
        .addCallback(lambda _: requests_log.stop() if requests_log is not None else None)
        .addCallback(lambda _: traffic.stop() if traffic is not None else None)
        .addCallback(lambda _: _call_in_thread(reactor, on_exit) if on_exit is not None else None))
    stopping = []

    def stop_once():
        # Ctrl-C reaches a worker twice (the terminal's process group, and the supervisor).
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    def on_signal(signum, frame):
        reactor.callFromThread(stop_once)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reactor.run(installSignalHandlers=False)


def run(*, http_port, load_document, current_revision, bind="0.0.0.0", workers=1,
        redis_url=None, poll_interval=2.0, https_port=None, drain_timeout=10.0, before_fork=None,
        record_upstream_errors=None, access_log="off", default_certificate=None, on_status=None,
        on_traffic=None, traffic_interval=10.0, cache_dir=None, on_exit=None):
    """Serve the engine until SIGINT/SIGTERM, in this process or as N SO_REUSEPORT workers.

    `https_port` (None/0: no HTTPS); `default_certificate`: a PEM file with the certificate
    and key of the TLS fallback (default: a self-signed one made at start); `cache_dir`: the
    directory of the cache's disk tier (used only when the snapshot's settings.cache.disk_bytes > 0).
    """
    addresses = [a.strip() for a in bind.split(",") if a.strip()] or ["0.0.0.0"]
    tls_server = None
    if https_port:
        tls_server = tls.TlsServer(tls.default_certificate(default_certificate),
                                   h2_enabled=_h2_protocol_class() is not None)
    kwargs = dict(http_port=http_port, addresses=addresses, load_document=load_document,
                  current_revision=current_revision, redis_url=redis_url,
                  poll_interval=poll_interval, drain_timeout=drain_timeout,
                  record_upstream_errors=record_upstream_errors, access_log=access_log,
                  https_port=https_port, tls_server=tls_server, on_status=on_status,
                  on_traffic=on_traffic, traffic_interval=traffic_interval, cache_dir=cache_dir,
                  on_exit=on_exit)
    if workers <= 1:
        run_worker(reuse_port=False, **kwargs)
        return 0
    for address in addresses:           # fail fast, before forking, if a port is taken
        for port in (http_port, https_port) if https_port else (http_port,):
            listening_socket(address, port).close()
    if before_fork is not None:
        before_fork()
    return supervise(workers, lambda: run_worker(reuse_port=True, **kwargs))


def _call_in_thread(reactor, function):
    """`function()` in the reactor's thread pool; a failure is logged, never raised."""
    from twisted.internet import threads

    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), function)
    d.addErrback(lambda failure: log.warning("exit hook failed: %s", failure.value))
    return d


def _h2_protocol_class():
    """The HTTP/2 protocol class when `proxy_engine.h2protocol` provides one (the TLS seam,
    see `proxy_engine.tls`), else None: ALPN then never selects h2."""
    try:
        from proxy_engine.h2protocol import H2Protocol
    except ImportError:
        return None
    return H2Protocol


def _die_with_parent(parent):
    """A worker must never outlive its supervisor (even one killed with SIGKILL): with
    SO_REUSEPORT an orphan would keep serving the port unsupervised."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def supervise(workers, target):
    """Fork `workers` children running `target()`; restart dead ones; forward stop signals."""
    children = {}
    stopping = False

    def spawn():
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _die_with_parent(parent)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                target()
            except BaseException:
                log.exception("engine worker crashed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for _ in range(workers):
        spawn()
    log.info("engine supervisor %s running %s workers", os.getpid(), workers)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        log.warning("engine worker %s exited (status %s); restarting", pid, status)
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)
        if not stopping:
            spawn()
    return 0
