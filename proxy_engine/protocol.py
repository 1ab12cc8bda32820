"""The HTTP/1.1 reverse proxy: one plain Twisted `Protocol` per client connection.

Requests are parsed with `httptools.HttpRequestParser` callbacks into `Request` objects.
Connection states (`ProxyProtocol.state`):

- IDLE: between requests on a keep-alive connection; the idle timeout runs;
- HEAD: the first bytes of a request arrived; the header timeout runs (slowloris);
- ACTIVE: a request is routed and being answered (locally, or by an upstream: waiting for a
  connection, streaming the body up, streaming the response down); timeouts are the
  upstream's (connect, response);
- TUNNEL: an allowed Upgrade was answered 101; bytes are relayed both ways until a close;
- CLOSED: we decided to close (or the client left); further input is ignored.

A request captures the router (= snapshot) current when its head completes and finishes on
it. Pipelined requests are queued in order; the next starts when the current answer ends.

Stages of a proxied request (the same names in `h2protocol.H2Stream`), each feature hooking
into its stage with one `if route.<feature> is not None:` so a host without it pays nothing:

1. `_start`: ACME HTTP-01, routing, force-HTTPS redirect, max body size, the path's upstream
   group and header rules;
2. `_gate`: cheap local refusals (block exploits, CORS preflight, rate limit);
3. `_access`: the host's access list (a password check may run in a thread: PENDING, then
   `_access_resumed` carries on with stage 4);
4. `_authorized`: the client may use the host (forward auth);
5. `_dispatch`: answer without the upstream when possible (cache), else `_connect`: pick an
   upstream (load balancing) and get a pooled or new connection to it.

The response comes back through the exchange interface (`upstream_head`, `upstream_body`,
`upstream_done`, `upstream_failed`) that `proxy_engine.upstream` calls.

Backpressure: while an upstream connection is in use, each transport is registered as the
streaming producer of the other, so a slow reader pauses the fast writer.

The hot path (head complete -> route -> pick -> one joined request head -> one send, then
body relay) has no Deferreds, logging or regexes; timers are deadline timestamps that
re-arm one `callLater` only when it has fired. Writes go through `proxy_engine.fastio`
(straight to the socket when nothing is queued); what one upstream read produces for the
client is corked and leaves in one send.
"""
import logging

import httptools
from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol

from proxy_engine.access import ALLOWED, PENDING, strip_authorization
from proxy_engine.balancer import NoHealthyUpstream, choose_for, retry_request
from proxy_engine.cache import ResponseCache
from proxy_engine.errors import CLIENT_ERRORS, EXPLOIT_BLOCKED, REASONS, ClientGone, TlsHandshakeFailed, error_body
from proxy_engine.exploits import CAUSES as EXPLOIT_CAUSES
from proxy_engine.events import NullSink, RequestIds
from proxy_engine.fastio import send, send_sequence
from proxy_engine.forwardauth import ALLOW, DENY, AuthClient, with_cors
from proxy_engine.health import HealthRegistry, is_upstream_fault
from proxy_engine.headers import (LAST_CHUNK, accept_client, client_response_head, first_upstream_write,
                                   upstream_request_head)
from proxy_engine.pages import NOT_FOUND_PAGE, STARTING_PAGE
from proxy_engine.ratelimit import PENDING as LIMIT_PENDING
from proxy_engine.ratelimit import Limiter
from proxy_engine.routing import NOT_ACME, Router, normalize_host
from proxy_engine.upstream import CLOSED as UPSTREAM_CLOSED
from proxy_engine.upstream import UpstreamPool

log = logging.getLogger(__name__)

IDLE, HEAD, ACTIVE, TUNNEL, CLOSED = "idle", "head", "active", "tunnel", "closed"
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_CONNECTION_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HTML = b"text/html; charset=utf-8"
_TEXT = b"text/plain"
_PIPELINE_BUFFER = 1 << 20
_SMALL_BODY = 1 << 16       # responses up to this size are written without pairing producers


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with `status`."""

    def __init__(self, status):
        self.status = status


class Request:
    __slots__ = (
        "method", "target", "version", "headers", "host", "host_count", "content_length",
        "chunked", "expect_continue", "upgrade", "keep_alive", "complete", "buffered",
        "body_bytes", "head_size", "router", "route", "upstream", "conn", "connector",
        "responded", "chunk_out", "close_after", "retried", "max_body", "is_head", "waiting",
        "paired", "request_id", "status", "started", "bytes_out", "cause", "rules", "group", "path", "encoder", "cache",
        "tried", "lb", "set_cookie",
    )

    def __init__(self, request_id):
        self.request_id = request_id
        self.rules = None        # the route's `RouteRules` for this path, when it has header rules
        self.group = None        # the route's `UpstreamGroup` for this path (proxied requests)
        self.path = None         # the target's path without the query, once routed (proxied requests)
        self.tried = None        # addresses whose connection failed (retries: balancer.retry_for)
        self.lb = None           # the group counting this exchange in flight (least_conn), to release
        self.set_cookie = b""    # a sticky session's Set-Cookie line for the response
        self.encoder = None      # a `compress` encoder while the response is being compressed
        self.cache = None        # the `cache.CacheTap` on a cache-enabled location
        self.status = None       # what the client got (or 499: it left before the answer)
        self.target = b""
        self.headers = []
        self.host = None
        self.host_count = 0
        self.content_length = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = None
        self.complete = False
        self.buffered = None
        self.body_bytes = 0
        self.head_size = 0
        self.conn = None
        self.connector = None
        self.responded = False
        self.chunk_out = False
        self.close_after = False
        self.retried = False
        self.max_body = None
        self.waiting = True
        self.paired = 0          # bits: 1 client paces upstream writes, 2 upstream paces client writes, 4 resume client
        self.upstream = None
        self.started = None      # reactor time of the first byte (for the access log)
        self.bytes_out = 0       # response head + body bytes written to the client
        self.cause = None        # the words of an error answer


class ProxyFactory(Factory):
    """Builds one `ProxyProtocol` per connection; holds the served router and the pool.

    `swap(snapshot)` builds the new router fully, then replaces one reference; requests
    in flight keep the router they captured. `events` receives every upstream error with
    its cause (`proxy_engine.events`); request ids are drawn per factory, i.e. per worker.
    """

    def __init__(self, reactor, pool=None, scheme=b"http", header_timeout=30.0,
                 idle_timeout=75.0, max_head_size=16384, max_headers=100, events=None, request_ids=None,
                 access_log=None, https_port=None, traffic=None, cache=None, cache_dir=None, health=None):
        self.reactor = reactor
        self.traffic = traffic           # proxy_engine.traffic.TrafficCounter, or None (off)
        self.https_port = https_port     # served HTTPS port: force-HTTPS redirects (http factory only)
        self.access_log = access_log     # proxy_engine.accesslog.AccessLog, or None (off)
        self.auth_client = None          # proxy_engine.forwardauth.AuthClient, made on first use
        self.pool = pool if pool is not None else UpstreamPool(reactor)
        # Health states and in-flight counts: per worker, shared like the pool (proxy_engine.health).
        self.health = health if health is not None else HealthRegistry(reactor, self.pool)
        self.events = events if events is not None else NullSink()
        self.request_ids = request_ids if request_ids is not None else RequestIds()
        self.scheme = scheme
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.router = None
        self.active = 0
        # Runs password hashing off the reactor (access lists); tests replace it.
        self.run_in_thread = lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)
        # Rate-limit buckets of this worker (kept across snapshots); run_worker shares one with Redis.
        self.limiter = Limiter(reactor)
        # Cached responses (proxy_engine.cache): one store per worker, shared by its factories.
        self.cache = cache if cache is not None else ResponseCache(
            reactor, directory=cache_dir, run_in_thread=lambda f, *a: self.run_in_thread(f, *a))

    def swap(self, snapshot):
        self.health.update(snapshot)
        router = Router(snapshot, self.scheme, self.https_port, self.run_in_thread, self.health,
                        limiter=self.limiter)
        self.cache.swap(snapshot, router, self.scheme)
        self.router = router
        addresses = {u.address for h in snapshot.proxy_hosts for u in h.upstreams}
        addresses.update(u.address for h in snapshot.proxy_hosts for loc in h.locations for u in loc.upstreams)
        self.pool.retain(addresses)
        return router

    def buildProtocol(self, addr):
        return ProxyProtocol(self)


class ProxyProtocol(Protocol):
    __slots__ = (
        "factory", "reactor", "pool", "parser", "state", "parsing", "active", "queue",
        "client_ip", "peer", "trusted", "trusted_for", "deadline", "timer", "reject",
        "head_bytes", "queued_bytes", "tunnel_pending", "discard", "corked", "held",
    )

    def __init__(self, factory):
        self.factory = factory
        self.reactor = factory.reactor
        self.pool = factory.pool
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_version=True)   # so we can answer 505
        self.state = IDLE
        self.parsing = None
        self.active = None
        self.queue = None
        self.trusted = False
        self.trusted_for = None
        self.timer = None
        self.reject = 0
        self.head_bytes = 0
        self.queued_bytes = 0
        self.tunnel_pending = None
        self.discard = False
        self.corked = None       # while an upstream's read is handled: the client's output, sent once
        self.held = None         # while client input is parsed: [(conn, bytes)] for the upstream

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self):
        self.client_ip, self.peer = accept_client(self.transport)
        self._arm(self.factory.header_timeout)

    def dataReceived(self, data):
        state = self.state
        if state is TUNNEL:
            send(self.active.conn.transport, data)
            return
        if state is CLOSED or self.discard:
            return
        if state is not ACTIVE and self.parsing is not None:
            self.head_bytes += len(data)
        # What this input makes us send upstream is held until all of it has parsed: a
        # request refused for framing, size or syntax never reaches the upstream (beyond
        # what earlier reads of it had already sent, when a body streams in over time).
        self.held = held = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._send_held(held)
            self._upgrade_input(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError:
            if self.parsing is not None and self.parsing is not self.active:
                self._send_held(held)        # those bytes belong to the (valid) active request
            else:
                self.held = None
            self._refuse(self.reject or 400)
            return
        if held:
            self._send_held(held)
        else:
            self.held = None
        if self.parsing is not None and self.head_bytes > self.factory.max_head_size and self._in_head():
            self._refuse(431)

    def connectionLost(self, reason=None):
        state = self.state
        self.state = CLOSED
        self._stop_timer()
        request = self.active
        self.active = None
        self.queue = None
        if request is not None:
            self._detach_upstream(request, abort=True)
            if request.cache is not None:
                request.cache.abandon()
            self.factory.active -= 1
            if not request.responded and state is not TUNNEL:
                self._record(request, ClientGone())
            # Closed by us (an error cut the answer) or a finished tunnel keep their status;
            # otherwise the client left before the answer was complete.
            self._log(request, request.status if state is CLOSED or state is TUNNEL else 499)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self):
        self.parsing = request = Request(self.factory.request_ids.next())
        request.started = self.reactor.seconds()
        self.head_bytes = 0
        if self.state is IDLE:
            self.state = HEAD
            self._arm(self.factory.header_timeout)

    def on_url(self, url):
        request = self.parsing
        request.target += url
        request.head_size += len(url)

    def on_header(self, name, value):
        request = self.parsing
        lname = name.lower()
        request.headers.append((lname, name, value))
        request.head_size += len(name) + len(value) + 4
        if request.head_size > self.factory.max_head_size or len(request.headers) > self.factory.max_headers:
            self.reject = 431
            raise _Reject(431)
        if lname == b"host":
            request.host = value
            request.host_count += 1
        elif lname == b"content-length":
            request.content_length = int(value)
        elif lname == b"transfer-encoding":
            # Only one, plain "chunked": anything else is a framing ambiguity.
            if request.chunked or value.strip().lower() != b"chunked":
                self.reject = 400
                raise _Reject(400)
            request.chunked = True
        elif lname == b"expect":
            if value.lower() != b"100-continue":
                self.reject = 417
                raise _Reject(417)
            request.expect_continue = True
        elif lname == b"upgrade":
            request.upgrade = value

    def on_headers_complete(self):
        request = self.parsing
        parser = self.parser
        version = parser.get_http_version()
        request.method = parser.get_method()
        request.is_head = request.method == b"HEAD"
        request.keep_alive = parser.should_keep_alive()
        if version == "1.1":
            request.version = b"1.1"
            if request.host_count != 1:
                self.reject = 400
                raise _Reject(400)
        elif version == "1.0":
            request.version = b"1.0"
            if request.host_count > 1 or request.chunked:
                self.reject = 400
                raise _Reject(400)
        else:
            self.reject = 505
            raise _Reject(505)
        if not parser.should_upgrade():
            request.upgrade = None
        self.head_bytes = 0
        if self.active is not None:
            request.waiting = False
            if self.queue is None:
                self.queue = []
            self.queue.append(request)
        elif request.chunked or request.content_length:
            # A body follows: route now so it can stream. Bodiless requests start once
            # complete (on_message_complete), so their answer can keep the connection.
            self._start(request)

    def on_body(self, body):
        request = self.parsing
        size = request.body_bytes + len(body)
        request.body_bytes = size
        if request.max_body is not None and size > request.max_body:
            self.reject = 413
            raise _Reject(413)
        conn = request.conn
        if conn is not None and request is self.active:
            held = self.held
            if request.chunked:
                held += ((conn, b"%x\r\n" % len(body)), (conn, body), (conn, b"\r\n"))
            else:
                held.append((conn, body))
        elif not request.responded:
            if request.buffered is None:
                request.buffered = []
            request.buffered.append(body)
            if request is not self.active:
                self.queued_bytes += len(body)
                if self.queued_bytes > _PIPELINE_BUFFER:
                    self.transport.pauseProducing()

    def on_message_complete(self):
        request = self.parsing
        request.complete = True
        self.parsing = None
        if request.waiting:
            if self.active is None:
                self._start(request)
            else:
                request.waiting = False
                if self.queue is None:
                    self.queue = []
                self.queue.append(request)
            return
        conn = request.conn
        if conn is not None and request is self.active and request.chunked:
            self.held.append((conn, LAST_CHUNK))

    def _send_held(self, held):
        """Send what was held while client input was parsed (one write per upstream connection)."""
        self.held = None
        conn = None
        parts = []
        for target, piece in held:
            if target is not conn:
                if parts and conn.state is not UPSTREAM_CLOSED:
                    send_sequence(conn.transport, parts)
                conn, parts = target, []
            parts.append(piece)
        if parts and conn.state is not UPSTREAM_CLOSED:
            send_sequence(conn.transport, parts)

    def _record(self, request, failure):
        """Report an upstream failure (full detail, for the operator) to the event sink."""
        request.status = failure.status
        upstream = request.upstream
        self.factory.events.on_upstream_error(
            request.route.host.id, request.request_id,
            f"{upstream.host}:{upstream.port}" if upstream is not None else "",
            failure.status, failure.cause, failure.detail, self.reactor.seconds())

    # -- starting a request -------------------------------------------------------------

    def _start(self, request):
        request.waiting = False
        self.active = request
        self.state = ACTIVE
        self.factory.active += 1
        router = self.factory.router
        if router is None:
            self._respond(request, 503, STARTING_PAGE, close=True)
            return
        request.router = router
        target = request.target
        if target[:1] == b"/":
            host = request.host
            path = target
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            host = rest if slash < 0 else rest[:slash]
            path = b"/" if slash < 0 else rest[slash:]
        elif target == b"*" and request.method == b"OPTIONS":
            host = request.host
            path = b"/"
        else:
            self._refuse(400)
            return
        challenge = router.challenge(path)     # ACME HTTP-01, for any host, before any route
        if challenge is not NOT_ACME:
            if challenge is None:
                self._respond(request, 404, NOT_FOUND_PAGE)
            else:
                self._respond(request, 200, challenge, content_type=_TEXT)
            return
        route = router.route(normalize_host(host or b""))
        request.route = route
        kind = route.kind
        if kind == "proxy":
            if route.force_https is not None:
                location = b"https://" + normalize_host(host or b"") + route.force_https + path
                self._respond(request, 301, b"", extra=b"Location: " + location + b"\r\n")
                return
            max_body = route.max_body_size
            if max_body is not None:
                if request.content_length is not None and request.content_length > max_body:
                    self._refuse(413)
                    return
                request.max_body = max_body
            query = path.find(b"?")
            bare = path if query < 0 else path[:query]
            request.path = bare
            request.group = route.select(bare)
            if route.header_rules is not None:
                request.rules = route.header_rules.for_path(bare)
            self._gate(request, route)
        elif kind == "redirect":
            location = route.location(path)
            self._respond(request, route.code, b"", extra=b"Location: " + location + b"\r\n")
        elif route.close:
            request.responded = True         # closing unanswered is the answer (logged as 444)
            request.status = 444
            self._close(abort=True)
        else:
            self._respond(request, route.status, route.body)

    # -- the stages of a proxied request (see the module doc) ---------------------------

    def _gate(self, request, route):
        """Stage 2: cheap local refusals, each only when its feature is on for the route."""
        if route.exploits is not None:
            kind = route.exploits(request.target, request.headers)
            if kind is not None:
                self._respond(request, 403, None, cause=EXPLOIT_BLOCKED.format(EXPLOIT_CAUSES[kind]))
                return
        if route.cors is not None:       # CORS: a preflight is answered here; allow-origin joins the rules
            preflight = route.cors.preflight(request.method, request.headers)
            if preflight is not None:
                self._respond(request, preflight.status, b"", extra=preflight.lines, cause=preflight.cause)
                return
            request.rules = route.cors.rules_for(request.rules, request.headers)
        if route.rate_limit is not None:
            limit = route.rate_limit.for_path(request.target)
            if limit is not None and not self._rate_limit(request, route, limit):
                return                   # answered 429, or waiting for Redis (`_rate_decided`)
        self._access(request, route)

    def _access(self, request, route):
        """Stage 3: the host's access list (may wait for a password check: `_access_resumed`)."""
        access = route.access
        if access is not None:
            verdict = self._check_access(request, access, request.router)
            if verdict != ALLOWED:
                return                   # answered (401/403), or PENDING
        self._authorized(request, route)

    def _authorized(self, request, route):
        """Stage 4: the client may use the host (forward auth hooks in here)."""
        if route.forward_auth is not None:
            self._forward_auth(request, route)   # `_forward_auth_done` carries on at _dispatch
            return
        self._dispatch(request, route)

    def _dispatch(self, request, route):
        """Stage 5: answer locally if possible (the cache hooks in here), else `_connect`."""
        if route.cache is not None and not route.cache.begin(self, request, self._cache_resumed):
            return                       # answered from the cache, or waiting (collapsed miss, disk read)
        self._connect(request, route)

    def _cache_resumed(self, request):
        """The cache's wait for `request` ended (reactor thread): answer it or go upstream."""
        if self.active is not request or request.responded or self.state is not ACTIVE:
            request.cache.abandon()
            return
        if request.cache.proceed():
            self._connect(request, request.route)

    def _connect(self, request, route):
        """Pick an upstream of the request's group and get a connection to it."""
        group = request.group
        if group.balanced:           # policies, health, sticky (proxy_engine.balancer)
            router = request.router
            upstream, request.set_cookie = choose_for(group, request.headers, self.peer, self.client_ip,
                                                      self.is_trusted(router), router.trusts)
            if upstream is None:
                self._upstream_error(request, NoHealthyUpstream())
                return
            if group.counts:
                request.lb = group
            request.upstream = upstream
        else:
            request.upstream = group.pick()
        if request.expect_continue and not request.complete:
            self._write(_CONTINUE)
        request.connector = self.pool.acquire(request.upstream, route.timeouts.connect, self)

    def _rate_limit(self, request, route, limit):
        """The request's rate limit: True when it may go on now, else it was answered or waits."""
        decision = limit.check(self.peer, self.is_trusted(request.router), request.headers,
                               lambda decision: self._rate_decided(request, route, decision))
        if decision is LIMIT_PENDING:
            return False
        if decision.allowed:
            return True
        self._respond(request, 429, None, cause=CLIENT_ERRORS[429], extra=decision.lines())
        return False

    def _rate_decided(self, request, route, decision):
        """The shared (Redis) rate-limit decision for `request` arrived (reactor thread)."""
        if self.active is not request or request.responded or self.state is not ACTIVE:
            return                       # refused meanwhile (413), or the client left
        if decision.allowed:
            self._access(request, route)
        else:
            self._respond(request, 429, None, cause=CLIENT_ERRORS[429], extra=decision.lines())

    def _check_access(self, request, access, router):
        """The route's access policy on `request`: ALLOWED, PENDING, or answered (401/403)."""
        verdict = access.check(self.peer, self.is_trusted(router), request.headers,
                               lambda outcome: self._access_resumed(request, outcome))
        if verdict == ALLOWED:
            if not access.pass_auth and access.users:
                request.headers = strip_authorization(request.headers)
        elif verdict != PENDING:
            self._respond(request, verdict, None, cause=CLIENT_ERRORS[verdict],
                          extra=access.challenge if verdict == 401 else b"")
        return verdict

    def _access_resumed(self, request, outcome):
        """A password verification for `request` ended (reactor thread)."""
        if self.active is not request or request.responded or self.state is not ACTIVE:
            return                       # refused meanwhile (413), or the client left
        route = request.route
        access = route.access
        if outcome != ALLOWED:
            self._respond(request, outcome, None, cause=CLIENT_ERRORS[outcome], extra=access.challenge)
            return
        if not access.pass_auth:
            request.headers = strip_authorization(request.headers)
        self._authorized(request, route)

    def _forward_auth(self, request, route):
        """Ask the host's authentication service (`proxy_engine.forwardauth`) about `request`."""
        router = request.router
        trusted = self.is_trusted(router)
        factory = self.factory
        if factory.auth_client is None:
            factory.auth_client = AuthClient(self.reactor)
        if not request.complete:
            self.transport.pauseProducing()      # an uploading body waits (in the kernel) meanwhile
        route.forward_auth.ask(factory.auth_client, request.method, request.target, request.host or b"",
                               factory.scheme, self.peer, self.client_ip, trusted, router.trusts,
                               request.headers, lambda decision: self._forward_auth_done(request, decision))

    def _forward_auth_done(self, request, decision):
        """The authentication service decided about `request` (reactor thread)."""
        if self.active is not request or request.responded or self.state is not ACTIVE:
            return                       # refused meanwhile, or the client left
        if not request.complete:
            self.transport.resumeProducing()
        kind = decision.kind
        route = request.route
        if kind is ALLOW:
            request.headers = decision.apply(request.headers)
            self._dispatch(request, route)
            return
        lines, _ = with_cors(route, request.headers, decision.lines if kind is DENY else b"", ())
        if kind is DENY:
            self._respond(request, decision.status, decision.body, extra=lines, cause=decision.cause,
                          content_type=decision.content_type)
        else:
            self.factory.events.on_upstream_error(
                route.host.id, request.request_id, route.forward_auth.service, decision.status, decision.cause,
                decision.detail, self.reactor.seconds())
            self._respond(request, decision.status, None, extra=lines, cause=decision.cause)

    def is_trusted(self, router):
        """Whether the client is a trusted proxy under `router`'s snapshot (cached per router)."""
        if self.trusted_for is not router:
            self.trusted, self.trusted_for = router.trusts(self.peer), router
        return self.trusted

    # -- upstream callbacks (the exchange interface) ------------------------------------

    def upstream_ready(self, conn):
        request = self.active
        if request is None or self.state is CLOSED:
            self.pool.release(conn)
            return
        request.conn = conn
        request.connector = None
        router = request.router
        if self.trusted_for is not router:           # `is_trusted` inlined: every proxied request
            self.trusted, self.trusted_for = router.trusts(self.peer), router
        if request.chunked:
            framing = _CHUNKED
        elif request.content_length is not None:
            framing = b"Content-Length: %d\r\n" % request.content_length
        else:
            framing = b""
        upgrade = request.upgrade if request.route.websockets else None
        rules = request.rules
        head = upstream_request_head(
            request.method, request.target, request.headers, self.client_ip, self.factory.scheme,
            request.host or b"", self.trusted, framing, upgrade, rules and rules.request,
        )
        data = first_upstream_write(head, request.buffered, request.chunked, request.complete)
        request.buffered = None
        held = self.held
        if held is not None:             # called while client input is being parsed
            held += ((conn, piece) for piece in data)
            data = ()
        conn.send(self, data, request.route.timeouts.response, request.is_head, upgrade is not None)
        if request.cache is not None:
            conn.exchange = request.cache        # the cache's tap relays the response to us
        if request.chunked or request.content_length:
            conn.transport.registerProducer(self.transport, True)
            request.paired = 1

    def upstream_connect_failed(self, failure):
        request = self.active
        if request is not None:
            request.connector = None
            if self._retry(request, failure):
                return
            if request.cache is not None and request.cache.connect_failed(failure):
                return                   # a stale entry answered (stale-if-error)
            self._upstream_error(request, failure)

    def _retry(self, request, failure):
        """A connection attempt failed (health learns of it): try another upstream of the
        group if the request is idempotent and sent no body (balancer.retry_request)."""
        upstream = retry_request(request, failure, closed=self.state is CLOSED)
        if upstream is None:
            return False
        request.connector = self.pool.acquire(upstream, request.route.timeouts.connect, self)
        return True

    def upstream_head(self, conn):
        request = self.active
        status = conn.status
        request.responded = True
        request.status = status
        headers, length = conn.headers, conn.content_length
        compression = request.route.compression
        if compression is not None:      # response compression (proxy_engine.compress); a cache
            # store must keep conn.headers (the identity representation), not these edits
            headers, request.encoder = compression.response(
                request.path, request.headers, request.is_head, status, headers, length, request.version == b"1.1")
            if request.encoder is not None:
                length = None
        if request.is_head or status in (204, 304):
            framing = b"Content-Length: %d\r\n" % length if (
                length is not None and status != 204) else b""
        elif status == 101:
            framing = b""
        elif length is not None:
            framing = b"Content-Length: %d\r\n" % length
        elif request.version == b"1.1":
            framing = _CHUNKED
            request.chunk_out = True
        else:
            framing = b""
            request.close_after = True
        if status == 101:
            connection = b"Connection: upgrade\r\nUpgrade: " + (request.upgrade or b"") + b"\r\n"
        elif request.close_after or not request.keep_alive or request.upgrade is not None or not request.complete:
            request.close_after = True
            connection = _CONNECTION_CLOSE
        elif request.version == b"1.0":
            connection = _KEEP_ALIVE
        else:
            connection = b""
        if status == 101 or length is None or length > _SMALL_BODY:
            self._pair(request, conn)
        reason = conn.reason or REASONS.get(status, b"")
        rules = request.rules and request.rules.response
        head = client_response_head(
            b"HTTP/1.1 %d %s\r\n" % (status, reason), headers,
            b"X-Request-Id: %s\r\n%s%s%s" % (
                request.request_id, request.route.hsts if rules is None or not rules.hsts else b"", framing,
                request.set_cookie),
            connection, rules, conn.lines if headers is conn.headers else None)
        request.bytes_out += len(head)
        self._write(head)

    def upstream_body(self, data):
        request = self.active
        if request.encoder is not None:  # (a cache tap must see `data` before this: identity bytes)
            data = request.encoder.compress(data)
            if not data:
                return                   # buffered by the encoder; out at the flush (uncork) or the end
        request.bytes_out += len(data)
        if request.chunk_out:
            self._write_sequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._write(data)

    def upstream_done(self, conn, reusable):
        request = self.active
        if request is None:
            return
        encoder = request.encoder
        if encoder is not None:
            request.encoder = None
            data = encoder.finish()
            if data:                     # (an empty chunk would end the body early)
                request.bytes_out += len(data)
                self._write_sequence((b"%x\r\n" % len(data), data, b"\r\n"))
        if request.chunk_out:
            self._write(LAST_CHUNK)
        self._detach_upstream(request, abort=False)
        if reusable and request.complete and conn.state is not UPSTREAM_CLOSED:
            self.pool.release(conn)
        elif conn.state is not UPSTREAM_CLOSED:
            conn.abort()
        self._finish(request)

    def upstream_failed(self, conn, failure):
        request = self.active
        if request is None:
            return
        self._detach_upstream(request, abort=True)
        if (not request.responded and conn.reused and not conn.got_bytes and not request.retried
                and request.method in _IDEMPOTENT and request.body_bytes == 0 and request.complete):
            # A pooled connection the upstream had closed: retry once on a fresh one.
            request.retried = True
            request.connector = self.pool.connect(request.upstream, request.route.timeouts.connect, self)
            return
        if not request.responded and not conn.got_bytes and isinstance(failure, TlsHandshakeFailed):
            if self._retry(request, failure):
                return
        elif is_upstream_fault(failure):
            request.group.failed(request.upstream, failure)
        self._upstream_error(request, failure)

    def _pair(self, request, conn):
        """Let each side's write buffer pace the other side's reading (streaming bodies)."""
        if not request.paired & 1:
            conn.transport.registerProducer(self.transport, True)
        if not request.paired & 2:
            self.transport.registerProducer(conn.transport, True)
        request.paired = 3

    def upstream_tunnel(self, rest):
        request = self.active
        self.state = TUNNEL
        self._stop_timer()
        if rest:
            self._write(rest)
        pending = self.tunnel_pending
        self.tunnel_pending = None
        if pending:
            send(request.conn.transport, pending)

    def upstream_closed(self):
        self._close(abort=False)

    # -- answering and finishing --------------------------------------------------------

    def _upstream_error(self, request, failure):
        request.cause = failure.cause
        self._record(request, failure)
        if request.responded:
            self._close(abort=True)
            return
        self._respond(request, failure.status, None, cause=failure.cause, close=not request.complete)

    def _refuse(self, status):
        """Refuse the request being parsed (or the active one) and close the connection."""
        active = self.active
        if active is not None and self.parsing is not None and self.parsing is not active:
            # A pipelined request is bad: answer the ones before it, then close.
            self.discard = True
            self.queue = None
            active.close_after = True
            return
        request = active or self.parsing or Request(self.factory.request_ids.next())
        if request.responded or self.state is CLOSED:
            self._close(abort=True)
            return
        if request is self.active:
            self._detach_upstream(request, abort=True)
            if request.cache is not None:
                request.cache.abandon()      # a collapsed miss it led: its followers go on
        request.keep_alive = False
        self.queue = None
        self._respond(request, status, None, cause=CLIENT_ERRORS.get(status, "The request was refused."), close=True,
                      finish=request is self.active)

    def _respond(self, request, status, body, extra=b"", cause=None, close=False, finish=True, content_type=_HTML):
        """A local answer: a page, a redirect, or an error page when `cause` is given."""
        request.responded = True
        request.status = status
        if cause is not None:
            request.cause = cause
            wants_json = any(l == b"accept" and b"json" in v for l, _, v in request.headers)
            content_type, body = error_body(status, cause, wants_json, request.request_id)
        close = close or not request.keep_alive or not request.complete or request.upgrade is not None
        request.close_after = close
        parts = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n" % (
            status, REASONS.get(status, b""), content_type, len(body), request.request_id), extra]
        if status == 204:                # no Content-Type / Content-Length on a 204 (RFC 9110 §8.6)
            parts[0] = b"HTTP/1.1 204 No Content\r\nX-Request-Id: %s\r\n" % request.request_id
        if close:
            parts.append(_CONNECTION_CLOSE)
        elif request.version == b"1.0":
            parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        if not getattr(request, "is_head", False):
            parts.append(body)
        request.bytes_out += sum(map(len, parts))
        self._write_sequence(parts)
        if finish:
            self._finish(request)
        else:
            self._log(request, status)
            self._close(abort=False)

    def _finish(self, request):
        """The answer to `request` is complete: keep the connection, or close it."""
        self._log(request, request.status)
        if self.active is request:
            self.active = None
            self.factory.active -= 1
        if request.close_after or self.state is CLOSED:
            self._close(abort=False)
            return
        if request.paired or self.queued_bytes > _PIPELINE_BUFFER:
            self.transport.resumeProducing()
        queue = self.queue
        if queue:
            following = queue.pop(0)
            self.queued_bytes = 0
            self._start(following)
            return
        self.state = HEAD if self.parsing is not None else IDLE
        self._arm(self.factory.header_timeout if self.parsing is not None else self.factory.idle_timeout)

    def _detach_upstream(self, request, abort):
        conn = request.conn
        connector = request.connector
        if connector is not None:
            request.connector = None
            connector.cancel()
        if conn is not None:
            request.conn = None
            paired = request.paired
            request.paired = 0
            if paired & 2 and self.state is not CLOSED:
                self.transport.unregisterProducer()
            if conn.state is not UPSTREAM_CLOSED:
                if paired & 1:
                    conn.transport.unregisterProducer()
                if paired & 2:
                    conn.transport.resumeProducing()
                if abort:
                    conn.abort()
            if paired & 1:
                request.paired = 4       # the client transport may still be paused: _finish resumes it

    def _close(self, abort):
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._stop_timer()
        if abort:
            self.corked = None
            self.transport.abortConnection()
        else:
            self.uncork()
            self.transport.loseConnection()

    def _log(self, request, status):
        """One access log entry (see `proxy_engine.accesslog` for the tuple's fields), and
        the request counted for its proxy host (`proxy_engine.traffic`)."""
        lb = request.lb
        if lb is not None:               # least_conn: the exchange is no longer in flight
            request.lb = None
            lb.release(request.upstream)
        factory = self.factory
        traffic = factory.traffic
        if traffic is not None:
            route = getattr(request, "route", None)      # unset when refused before routing
            if route is not None and route.kind == "proxy":
                traffic.add(route.host.id, status or 0)
        access_log = factory.access_log
        if access_log is not None:
            now = self.reactor.seconds()
            started = now if request.started is None else request.started
            access_log.record((
                started, request.host, getattr(request, "method", None), request.target, status or 0,
                request.head_size + request.body_bytes, request.bytes_out, now - started,
                request.upstream, self.client_ip, request.request_id, request.cause))

    # -- writing to the client ----------------------------------------------------------

    def cork(self):
        """Until `uncork()`, collect what is written to the client (the upstream
        connection calls this around each read, so a head and body go out in one send)."""
        if self.corked is None:
            self.corked = []

    def uncork(self):
        corked = self.corked
        if corked is not None:
            request = self.active
            if request is not None and request.encoder is not None:
                data = request.encoder.flush()       # an upstream read of unknown length ends here
                if data:
                    request.bytes_out += len(data)
                    corked += (b"%x\r\n" % len(data), data, b"\r\n")
            self.corked = None
            if corked:
                send(self.transport, corked[0] if len(corked) == 1 else b"".join(corked))

    def _write(self, data):
        corked = self.corked
        if corked is not None:
            corked.append(data)
        else:
            send(self.transport, data)

    def _write_sequence(self, parts):
        corked = self.corked
        if corked is not None:
            corked += parts
        else:
            send_sequence(self.transport, parts)

    def _upgrade_input(self, rest):
        """The parser stopped at an Upgrade request; `rest` is what follows its head."""
        request = self.active
        if request is not None and request.conn is not None and self.state is TUNNEL:
            send(request.conn.transport, rest)
        elif rest:
            self.tunnel_pending = (self.tunnel_pending or b"") + rest

    def _in_head(self):
        request = self.parsing
        return request is not None and not hasattr(request, "method")

    # -- timers -------------------------------------------------------------------------

    def _arm(self, timeout):
        self.deadline = deadline = self.reactor.seconds() + timeout
        timer = self.timer
        if timer is None:
            self.timer = self.reactor.callLater(timeout, self._on_timer)
        elif timer.getTime() > deadline:
            timer.reset(timeout)

    def _on_timer(self):
        self.timer = None
        if self.state is not IDLE and self.state is not HEAD:
            return
        left = self.deadline - self.reactor.seconds()
        if left > 0:
            self.timer = self.reactor.callLater(left, self._on_timer)
        elif self.state is HEAD and self.parsing is not None:
            self._respond(self.parsing, 408, None, cause="The request took too long to arrive.",
                          close=True, finish=False)
        else:
            self._close(abort=False)

    def _stop_timer(self):
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()
