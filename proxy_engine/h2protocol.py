"""HTTP/2 for clients (the h2 library), feeding the same core as HTTP/1.1.

One `H2Protocol` per client connection, one `H2Stream` per request. Each stream is an
*exchange* for `proxy_engine.upstream`: the same pool, `UpstreamConnection` and upstream
request head (`headers.upstream_request_head`) as `ProxyProtocol`; upstreams stay HTTP/1.1.
A stream routes with the router (= snapshot) current when its HEADERS arrive and finishes
on it; local answers (redirects, dead hosts, default site, error pages with the request id),
max_body_size (413), timeouts (504), error mapping (502), the error sink and the access log
(one line per stream) are the HTTP/1.1 ones.

Handing over a connection: `H2Protocol(factory)` takes the `ProxyFactory` that
`ProxyProtocol(factory)` takes. Give it a connected transport with `makeConnection(transport)`
(it sends its SETTINGS at once), then feed bytes already read from the client, if any, to
`dataReceived` (starting with the client preface). The TLS listener does this when ALPN
negotiates `h2`.

Connection states (`H2Protocol.state`):

- OPEN: streams are accepted (at most `MAX_STREAMS` at a time, advertised in SETTINGS);
  while no stream is open the idle deadline runs (the header timeout until the first one);
- DRAINING: GOAWAY sent (reactor shutdown, idle deadline) or received; streams already
  started finish, newer ones are refused (REFUSED_STREAM); the connection closes when the
  last one ends;
- CLOSED: closed by us or by the client; nothing more is read or written.

Stream states (`H2Stream.state`):

- WAITING: routed to an upstream, waiting for a connection and then for its response head;
  the request body streams up meanwhile (`complete` tells whether it ended);
- STREAMING: the response HEADERS are sent; upstream bytes become DATA frames;
- ENDING: the answer is complete on our side (upstream done, or a local answer) but DATA is
  still queued for the client's window; END_STREAM goes with the last of it;
- DONE: END_STREAM sent, or the stream was reset (by either side); logged once, forgotten.

Flow control, both ways. Client -> upstream: DATA is acknowledged (WINDOW_UPDATE) only once
it was handed to the upstream connection, and not while that connection's write buffer is
full (the stream is its push producer), so a slow upstream slows the client; before the
upstream connection exists the body waits unacknowledged (bounded by the stream window).
Upstream -> client: response bytes queue per stream and leave as DATA frames no larger than
the peer's window and frame size allow; above `OUT_HIGH` queued bytes the upstream transport
is paused, and resumed below `OUT_LOW` (after a WINDOW_UPDATE, or once the client's
transport, whose producer this protocol is, drains). No server push.

Malformed requests (RFC 9113 §8.1.1, §8.2: connection-specific headers, bad pseudo-headers,
illegal characters) are stream errors: RST_STREAM PROTOCOL_ERROR, logged as 400. A client
reset aborts the stream's upstream exchange (logged as 499). Rapid reset (CVE-2023-44487):
client resets draw from a per-connection budget (`RESET_BURST`, refilled at
`RESETS_PER_SECOND`); a client that exhausts it gets GOAWAY ENHANCE_YOUR_CALM and is
disconnected, so opening and cancelling streams cannot make the engine start upstream
requests without bound. Output of the h2 state machine
is written once per client read and once per upstream read (corked meanwhile).
"""
from collections import deque

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, RemoteSettingsChanged, RequestReceived,
                       StreamEnded, StreamReset, WindowUpdated)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from h2.utilities import HeaderValidationFlags, validate_headers
from hyperframe.frame import GoAwayFrame
from twisted.internet.protocol import Factory, Protocol

from proxy_engine.access import ALLOWED, PENDING, strip_authorization
from proxy_engine.balancer import NoHealthyUpstream, choose_for, retry_request
from proxy_engine.errors import CLIENT_ERRORS, EXPLOIT_BLOCKED, ClientGone, TlsHandshakeFailed, error_body
from proxy_engine.exploits import CAUSES as EXPLOIT_CAUSES
from proxy_engine.fastio import send
from proxy_engine.forwardauth import ALLOW, DENY, AuthClient, with_cors
from proxy_engine.health import is_upstream_fault
from proxy_engine.headers import (HOP_BY_HOP, LAST_CHUNK, accept_client, connection_tokens, first_upstream_write,
                                   upstream_request_head)
from proxy_engine.pages import NOT_FOUND_PAGE, STARTING_PAGE
from proxy_engine.ratelimit import PENDING as LIMIT_PENDING
from proxy_engine.routing import NOT_ACME, normalize_host
from proxy_engine.upstream import CLOSED as UPSTREAM_CLOSED

OPEN, DRAINING, CLOSED = "open", "draining", "closed"
WAITING, STREAMING, ENDING, DONE = "waiting", "streaming", "ending", "done"

MAX_STREAMS = 100
RESET_BURST = 200                # client stream resets allowed at once ...
RESETS_PER_SECOND = 50.0         # ... and refilled at this rate
STREAM_WINDOW = 1 << 18          # what a client may send on one stream before we acknowledge
CONNECTION_WINDOW = 1 << 22      # ... and on all its streams together
OUT_HIGH = 1 << 17               # queued response bytes per stream that pause its upstream
OUT_LOW = 1 << 15                # ... and that resume it

_REQUEST_FLAGS = HeaderValidationFlags(is_client=False, is_trailer=False, is_response_header=False,
                                       is_push_promise=False)
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
_RESPONSE_DROP = HOP_BY_HOP | frozenset((b"content-length",))
_HTML = b"text/html; charset=utf-8"
_TEXT = b"text/plain"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_NO_ERROR = ErrorCodes.NO_ERROR
_CANCEL = ErrorCodes.CANCEL


class Malformed(Exception):
    """A request that RFC 9113 calls malformed: answered with RST_STREAM PROTOCOL_ERROR."""


def request_from_headers(headers):
    """(method, path, host, headers triples, content length, header bytes) of an h2 request.

    `headers` are the decoded (name, value) pairs of a HEADERS block. Validation is h2's own
    (RFC 9113 §8.2, §8.3), run here so a violation resets only its stream (`Malformed`).
    Host comes from :authority (or a Host header); the triples are what
    `upstream_request_head` forwards, with a Host line first.
    """
    try:
        headers = list(validate_headers(headers, _REQUEST_FLAGS))
    except ProtocolError as exc:
        raise Malformed(str(exc)) from None
    method = path = authority = host = content_length = None
    triples = []
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                raise Malformed("extended CONNECT is not enabled")
        elif name == b"host":
            host = value
        else:
            if name == b"content-length":
                content_length = int(value)          # h2 checked it, and checks the body against it
            triples.append((name, name, value))
    if path is None:
        raise Malformed("no :path (CONNECT is not supported)")
    host = authority if authority is not None else host
    if host:
        triples.insert(0, (b"host", b"Host", host))
    return method, path, host, triples, content_length, size


def response_headers(status, headers, request_id, content_length, rules=None):
    """The h2 HEADERS of an upstream's HTTP/1.1 response: :status first, lower-case names,
    hop-by-hop headers (and those Connection names) dropped, the route's response header
    rules (`headerrules.Compiled` or None) applied, X-Request-Id added."""
    drop = connection_tokens(headers)
    out = [(b":status", b"%d" % status)]
    if rules is None:
        out += [(lname, value) for lname, _, value in headers if lname not in _RESPONSE_DROP and lname not in drop]
    else:
        ruled = rules.drop
        out += [(lname, value) for lname, _, value in headers
                if lname not in _RESPONSE_DROP and lname not in drop and lname not in ruled]
        out += rules.pairs
        if rules.defaults:                     # presets: only where the upstream sent none
            out += rules.missing_pairs(headers)
    out.append((b"x-request-id", request_id))
    if content_length is not None and status != 204:
        out.append((b"content-length", b"%d" % content_length))
    return out


def header_pair(line):
    """(lower-case name, value) of one b"Name: value\\r\\n" line."""
    name, _, value = line.rstrip(b"\r\n").partition(b":")
    return name.lower(), value.strip()


class H2Factory(Factory):
    """Hands out `H2Protocol`s for a `ProxyFactory` (h2c with prior knowledge: a plain
    port that speaks only HTTP/2; for development and benchmarks, not served by default)."""

    def __init__(self, factory):
        self.factory = factory

    def buildProtocol(self, addr):
        return H2Protocol(self.factory)


class H2Stream:
    """One request on an HTTP/2 connection; the exchange its upstream connection talks to."""

    __slots__ = (
        "proto", "stream_id", "state", "request_id", "started", "method", "target", "host", "headers",
        "content_length", "complete", "body_bytes", "head_size", "max_body", "buffered", "unacked",
        "upstream_full", "producing", "chunked", "router", "route", "rules", "group", "path", "upstream", "conn", "connector",
        "retried", "responded", "status", "bytes_out", "cause", "out", "out_size", "reading_paused",
        "is_head", "wants_json", "queued", "encoder", "cache", "tried", "lb", "set_cookie",
    )

    def __init__(self, proto, stream_id, request_id, started):
        self.proto = proto
        self.stream_id = stream_id
        self.state = WAITING
        self.request_id = request_id
        self.started = started
        self.method = None
        self.target = b""
        self.host = None
        self.headers = ()
        self.content_length = None
        self.complete = False
        self.body_bytes = 0
        self.head_size = 0
        self.max_body = None
        self.buffered = None
        self.unacked = 0             # flow-controlled bytes received and not yet acknowledged
        self.upstream_full = False   # the upstream's write buffer is full: hold acknowledgements
        self.producing = False       # registered as the producer of the upstream transport
        self.chunked = False
        self.router = None
        self.route = None
        self.rules = None            # the route's `RouteRules` for this path, when it has header rules
        self.group = None            # the route's `UpstreamGroup` for this path
        self.path = None             # the :path without the query, once routed
        self.cache = None            # the `cache.CacheTap` on a cache-enabled location
        self.tried = None            # addresses whose connection failed (retries: balancer.retry_for)
        self.lb = None               # the group counting this exchange in flight (least_conn), to release
        self.set_cookie = b""        # a sticky session's Set-Cookie line for the response
        self.upstream = None
        self.conn = None
        self.connector = None
        self.retried = False
        self.responded = False
        self.status = None
        self.bytes_out = 0
        self.cause = None
        self.out = deque()
        self.out_size = 0
        self.reading_paused = False
        self.is_head = False
        self.wants_json = False
        self.queued = False          # body arrived during a corked upstream read: push at uncork
        self.encoder = None          # a `compress` encoder while the response is being compressed

    # -- the exchange interface (proxy_engine.upstream) ---------------------------------

    def cork(self):
        self.proto.corked += 1

    def uncork(self):
        proto = self.proto
        encoder = self.encoder
        if encoder is not None and self.state is STREAMING:
            data = encoder.flush()               # an upstream read of unknown length ends here
            if data:
                self._queue_encoded(data)
        proto.corked -= 1
        if self.queued:
            self.queued = False
            if self.out:
                proto.push(self)
        proto.send_pending()

    def upstream_ready(self, conn):
        proto = self.proto
        if self.state is DONE:
            proto.pool.release(conn)
            return
        self.conn = conn
        self.connector = None
        buffered = self.buffered
        self.buffered = None
        if self.content_length is not None:
            framing = b"Content-Length: %d\r\n" % self.content_length
        elif self.complete:
            size = sum(map(len, buffered)) if buffered else 0
            framing = b"Content-Length: %d\r\n" % size if size or self.method in _BODY_METHODS else b""
        else:
            framing = _CHUNKED
            self.chunked = True
        head = upstream_request_head(
            self.method, self.target, self.headers, proto.client_ip, proto.factory.scheme,
            self.host, proto.is_trusted(self.router), framing, None, self.rules and self.rules.request)
        data = first_upstream_write(head, buffered, self.chunked, self.complete)
        conn.send(self, data, self.route.timeouts.response, self.is_head, False)
        if self.cache is not None:
            conn.exchange = self.cache           # the cache's tap relays the response to us
        if not self.complete and conn.state is not UPSTREAM_CLOSED:
            conn.transport.registerProducer(self, True)
            self.producing = True
        self._acknowledge()
        proto.send_pending()

    def upstream_connect_failed(self, failure):
        self.connector = None
        if self.state is not DONE:
            if self._retry(failure):
                return
            if self.cache is not None and self.cache.connect_failed(failure):
                return                   # a stale entry answered (stale-if-error)
            self._upstream_error(failure)
            self.proto.send_pending()

    def _retry(self, failure):
        """A connection attempt failed (health learns of it): try another upstream of the
        group if the request is idempotent and sent no body (balancer.retry_request)."""
        upstream = retry_request(self, failure)
        if upstream is None:
            return False
        self.connector = self.proto.pool.acquire(upstream, self.route.timeouts.connect, self)
        return True

    def upstream_head(self, conn):
        status = conn.status
        self.responded = True
        self.status = status
        self.state = STREAMING
        rules = self.rules and self.rules.response
        upstream_headers, length = conn.headers, conn.content_length
        compression = self.route.compression
        if compression is not None:      # response compression (proxy_engine.compress); a cache
            # store must keep conn.headers (the identity representation), not these edits
            upstream_headers, self.encoder = compression.response(
                self.path, self.headers, self.is_head, status, upstream_headers, length, True)
            if self.encoder is not None:
                length = None
        headers = response_headers(status, upstream_headers, self.request_id, length, rules)
        hsts = self.route.hsts
        if hsts and (rules is None or not rules.hsts):
            headers.append(header_pair(hsts))
        if self.set_cookie:
            headers.append(header_pair(self.set_cookie))
        self.bytes_out += sum(len(n) + len(v) + 4 for n, v in headers)
        self.proto.h2.send_headers(self.stream_id, headers)

    def upstream_body(self, data):
        if self.encoder is not None:     # (a cache tap must see `data` before this: identity bytes)
            data = self.encoder.compress(data)
            if not data:
                return                   # buffered by the encoder; out at the flush (uncork) or the end
        self.bytes_out += len(data)
        self.out.append(data)
        self.out_size += len(data)
        if self.proto.corked:
            self.queued = True       # pushed at uncork, with END_STREAM if the answer ends in this read
        else:
            self.proto.push(self)

    def upstream_done(self, conn, reusable):
        if self.state is DONE:
            return
        encoder = self.encoder
        if encoder is not None:
            self.encoder = None
            data = encoder.finish()
            if data:
                self._queue_encoded(data)
        self._detach(abort=False)
        if reusable and self.complete and conn.state is not UPSTREAM_CLOSED:
            self.proto.pool.release(conn)
        elif conn.state is not UPSTREAM_CLOSED:
            conn.abort()
        self.state = ENDING
        self.proto.push(self)
        self.proto.send_pending()

    def _queue_encoded(self, data):
        """Queue compressed bytes produced outside `upstream_body` (a flush, the end)."""
        self.bytes_out += len(data)
        self.out.append(data)
        self.out_size += len(data)
        self.queued = True               # pushed at uncork (or by upstream_done's push)

    def upstream_failed(self, conn, failure):
        if self.state is DONE:
            return
        self._detach(abort=True)
        if (not self.responded and conn.reused and not conn.got_bytes and not self.retried
                and self.method in _IDEMPOTENT and self.body_bytes == 0 and self.complete):
            # A pooled connection the upstream had closed: retry once on a fresh one.
            self.retried = True
            self.connector = self.proto.pool.connect(self.upstream, self.route.timeouts.connect, self)
            return
        if not self.responded and not conn.got_bytes and isinstance(failure, TlsHandshakeFailed):
            if self._retry(failure):
                return
        elif is_upstream_fault(failure):
            self.group.failed(self.upstream, failure)
        self._upstream_error(failure)
        self.proto.send_pending()

    # -- the upstream transport's producer (request body back-pressure) ------------------

    def pauseProducing(self):
        self.upstream_full = True

    def resumeProducing(self):
        self.upstream_full = False
        self._acknowledge()
        self.proto.send_pending()

    def stopProducing(self):
        self.upstream_full = True

    # -- driven by H2Protocol -----------------------------------------------------------

    def start(self, event_headers, ended):
        """Route and answer a request whose HEADERS just arrived."""
        proto = self.proto
        self.complete = ended
        try:
            method, path, host, headers, content_length, size = request_from_headers(event_headers)
        except Malformed as exc:
            self.status = 400
            self.cause = f"{CLIENT_ERRORS[400]} ({exc})"
            self.reset(ErrorCodes.PROTOCOL_ERROR)
            return
        self.method, self.target, self.host, self.headers = method, path, host, headers
        self.content_length, self.head_size = content_length, size
        self.is_head = method == b"HEAD"
        self.wants_json = any(n == b"accept" and b"json" in v for n, _, v in headers)
        factory = proto.factory
        if size > factory.max_head_size or len(headers) > factory.max_headers:
            self.refuse(431)
            return
        if not host:
            self.refuse(400)
            return
        router = factory.router
        if router is None:
            self.respond(503, STARTING_PAGE)
            return
        self.router = router
        if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
            self.refuse(400)
            return
        challenge = router.challenge(path)     # ACME HTTP-01, for any host, before any route
        if challenge is not NOT_ACME:
            if challenge is None:
                self.respond(404, NOT_FOUND_PAGE)
            else:
                self.respond(200, challenge, content_type=_TEXT)
            return
        route = router.route(normalize_host(host))
        self.route = route
        kind = route.kind
        if kind == "proxy":
            if route.force_https is not None:
                location = b"https://" + normalize_host(host) + route.force_https + path
                self.respond(301, b"", ((b"location", location),))
                return
            max_body = route.max_body_size
            if max_body is not None:
                if content_length is not None and content_length > max_body:
                    self.refuse(413)
                    return
                self.max_body = max_body
            query = path.find(b"?")
            bare = path if query < 0 else path[:query]
            self.path = bare
            self.group = route.select(bare)
            if route.header_rules is not None:
                self.rules = route.header_rules.for_path(bare)
            self._gate(route)
        elif kind == "redirect":
            self.respond(route.code, b"", ((b"location", route.location(path)),))
        elif route.close:
            self.status = 444        # closing unanswered is the answer (logged as 444)
            self.reset(_CANCEL)
        else:
            self.respond(route.status, route.body)

    # -- the stages of a proxied request (as in protocol.py's module doc) ---------------

    def _gate(self, route):
        """Stage 2: cheap local refusals, each only when its feature is on for the route."""
        if route.exploits is not None:
            kind = route.exploits(self.target, self.headers)
            if kind is not None:
                self.respond(403, None, cause=EXPLOIT_BLOCKED.format(EXPLOIT_CAUSES[kind]))
                return
        if route.cors is not None:       # CORS: a preflight is answered here; allow-origin joins the rules
            preflight = route.cors.preflight(self.method, self.headers)
            if preflight is not None:
                self.respond(preflight.status, b"", preflight.pairs, cause=preflight.cause)
                return
            self.rules = route.cors.rules_for(self.rules, self.headers)
        if route.rate_limit is not None:
            limit = route.rate_limit.for_path(self.target)
            if limit is not None and not self._rate_limit(route, limit):
                return                   # answered 429, or waiting for Redis (`_rate_decided`)
        self._access(route)

    def _access(self, route):
        """Stage 3: the host's access list (may wait for a password check: `_access_resumed`)."""
        access = route.access
        if access is not None:
            verdict = self._check_access(access, self.router)
            if verdict != ALLOWED:
                return                   # answered (401/403), or PENDING
        self._authorized(route)

    def _authorized(self, route):
        """Stage 4: the client may use the host (forward auth hooks in here)."""
        if route.forward_auth is not None:
            self._forward_auth(route)            # `_forward_auth_done` carries on at _dispatch
            return
        self._dispatch(route)

    def _dispatch(self, route):
        """Stage 5: answer locally if possible (the cache hooks in here), else `_connect`."""
        if route.cache is not None and not route.cache.begin(self, self, self._cache_resumed):
            return                       # answered from the cache, or waiting (collapsed miss, disk read)
        self._connect(route)

    def _cache_resumed(self, stream):
        """The cache's wait for this stream ended (reactor thread): answer it or go upstream."""
        if self.state is not WAITING or self.responded or self.proto.state is CLOSED:
            self.cache.abandon()
            return
        if self.cache.proceed():
            self._connect(self.route)
        self.proto.send_pending()

    def _connect(self, route):
        """Pick an upstream of the stream's group and get a connection to it."""
        proto = self.proto
        group = self.group
        if group.balanced:           # policies, health, sticky (proxy_engine.balancer)
            router = self.router
            upstream, self.set_cookie = choose_for(group, self.headers, proto.peer, proto.client_ip,
                                                   proto.is_trusted(router), router.trusts)
            if upstream is None:
                self._upstream_error(NoHealthyUpstream())
                return
            if group.counts:
                self.lb = group
            self.upstream = upstream
        else:
            self.upstream = upstream = group.pick()
        if not self.complete and any(n == b"expect" and v.lower() == b"100-continue" for n, _, v in self.headers):
            proto.h2.send_headers(self.stream_id, [(b":status", b"100")])
        self.connector = proto.pool.acquire(upstream, route.timeouts.connect, self)

    def _rate_limit(self, route, limit):
        """This request's rate limit: True when it may go on now, else it was answered or waits."""
        proto = self.proto
        decision = limit.check(proto.peer, proto.is_trusted(self.router), self.headers,
                               lambda decision: self._rate_decided(route, decision))
        if decision is LIMIT_PENDING:
            return False
        if decision.allowed:
            return True
        self.respond(429, None, decision.fields(), cause=CLIENT_ERRORS[429])
        return False

    def _rate_decided(self, route, decision):
        """The shared (Redis) rate-limit decision for this stream arrived (reactor thread)."""
        proto = self.proto
        if self.state is not WAITING or self.responded or proto.state is CLOSED:
            return                       # refused meanwhile (413), reset, or the client left
        if decision.allowed:
            self._access(route)
        else:
            self.respond(429, None, decision.fields(), cause=CLIENT_ERRORS[429])
        proto.send_pending()

    def _check_access(self, access, router):
        """The route's access policy on this request: ALLOWED, PENDING, or answered (401/403)."""
        proto = self.proto
        verdict = access.check(proto.peer, proto.is_trusted(router), self.headers, self._access_resumed)
        if verdict == ALLOWED:
            if not access.pass_auth and access.users:
                self.headers = strip_authorization(self.headers)
        elif verdict != PENDING:
            self._deny(access, verdict)
        return verdict

    def _deny(self, access, status):
        extra = (header_pair(access.challenge),) if status == 401 else ()
        self.respond(status, None, extra, cause=CLIENT_ERRORS[status])
        self.proto.send_pending()

    def _access_resumed(self, outcome):
        """A password verification for this stream ended (reactor thread)."""
        proto = self.proto
        if self.state is not WAITING or self.responded or proto.state is CLOSED:
            return                       # refused meanwhile (413), reset, or the client left
        access = self.route.access
        if outcome != ALLOWED:
            self._deny(access, outcome)
            return
        if not access.pass_auth:
            self.headers = strip_authorization(self.headers)
        self._authorized(self.route)
        proto.send_pending()

    def _forward_auth(self, route):
        """Ask the host's authentication service (`proxy_engine.forwardauth`); the body
        waits unacknowledged meanwhile."""
        proto = self.proto
        factory = proto.factory
        if factory.auth_client is None:
            factory.auth_client = AuthClient(proto.reactor)
        router = self.router
        route.forward_auth.ask(factory.auth_client, self.method, self.target, self.host, factory.scheme, proto.peer,
                               proto.client_ip, proto.is_trusted(router), router.trusts, self.headers,
                               self._forward_auth_done)

    def _forward_auth_done(self, decision):
        """The authentication service decided about this stream (reactor thread)."""
        proto = self.proto
        if self.state is not WAITING or self.responded or proto.state is CLOSED:
            return                       # refused meanwhile (413), reset, or the client left
        kind = decision.kind
        route = self.route
        if kind is ALLOW:
            self.headers = decision.apply(self.headers)
            self._dispatch(route)
            proto.send_pending()
            return
        _, pairs = with_cors(route, self.headers, b"", decision.pairs if kind is DENY else ())
        if kind is DENY:
            self.respond(decision.status, decision.body, pairs, cause=decision.cause,
                         content_type=decision.content_type)
        else:
            proto.factory.events.on_upstream_error(
                route.host.id, self.request_id, route.forward_auth.service, decision.status, decision.cause,
                decision.detail, proto.reactor.seconds())
            self.respond(decision.status, None, pairs, cause=decision.cause)
        proto.send_pending()

    def request_data(self, data, flow_length):
        self.unacked += flow_length
        if self.state is ENDING and self.conn is None:
            self._acknowledge()          # answered already: the rest of the body is not read
            return
        size = self.body_bytes + len(data)
        self.body_bytes = size
        max_body = self.max_body
        if max_body is not None and size > max_body:
            if self.responded:
                self.reset(_CANCEL)
            else:
                self._detach(abort=True)
                self.refuse(413)
            return
        conn = self.conn
        if conn is not None:
            if self.chunked:
                send(conn.transport, b"%x\r\n%s\r\n" % (len(data), data))
            else:
                send(conn.transport, data)
            self._acknowledge()
        elif self.state is not DONE:
            if self.buffered is None:
                self.buffered = []
            self.buffered.append(data)
        else:
            self._acknowledge()

    def request_ended(self):
        self.complete = True
        conn = self.conn
        if conn is not None and self.producing:
            if self.chunked:
                send(conn.transport, LAST_CHUNK)
            conn.transport.unregisterProducer()
            self.producing = False

    def client_gone(self):
        """The client reset the stream or closed the connection before the end (nothing
        more may be sent on the stream)."""
        if self.state is DONE:
            return
        self._detach(abort=True)
        if self.cache is not None:
            self.cache.abandon()
        if not self.responded and self.route is not None and self.route.kind == "proxy":
            self._record(ClientGone())
        self.status = 499
        self._done(reset=True)

    def refuse(self, status):
        """A client error answered with its page (the request body is not read)."""
        self.respond(status, None, cause=CLIENT_ERRORS.get(status, "The request was refused."))

    def respond(self, status, body, extra=(), cause=None, content_type=_HTML):
        """A local answer: a page, a redirect, or an error page when `cause` is given."""
        self.responded = True
        self.status = status
        if cause is not None:
            self.cause = cause
            content_type, body = error_body(status, cause, self.wants_json, self.request_id)
        headers = [(b":status", b"%d" % status), (b"content-type", content_type),
                   (b"content-length", b"%d" % len(body)), (b"x-request-id", self.request_id)]
        if status == 204:                # no content-type / content-length on a 204 (RFC 9110 §8.6)
            del headers[1:3]
        headers += extra
        self.bytes_out += sum(len(n) + len(v) + 4 for n, v in headers)
        self.state = ENDING
        if body and not self.is_head:
            self.proto.h2.send_headers(self.stream_id, headers)
            self.bytes_out += len(body)
            self.out.append(body)
            self.out_size += len(body)
            self.proto.push(self)
        else:
            self.proto.h2.send_headers(self.stream_id, headers, end_stream=True)
            self._done(reset=False)

    def reset(self, code):
        """End the stream with RST_STREAM `code` (what was answered so far stands in the log)."""
        if self.state is DONE:
            return
        self._detach(abort=True)
        self.proto.h2.reset_stream(self.stream_id, code)
        self._done(reset=True)

    def ended(self):
        """END_STREAM went out with the last DATA (H2Protocol.push)."""
        self._done(reset=False)

    # -- internals ----------------------------------------------------------------------

    def _upstream_error(self, failure):
        self.cause = failure.cause
        self._record(failure)
        if self.responded:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        self.respond(failure.status, None, cause=failure.cause)

    def _record(self, failure):
        """Report an upstream failure (full detail, for the operator) to the event sink."""
        self.status = failure.status
        upstream = self.upstream
        proto = self.proto
        proto.factory.events.on_upstream_error(
            self.route.host.id, self.request_id,
            f"{upstream.host}:{upstream.port}" if upstream is not None else "",
            failure.status, failure.cause, failure.detail, proto.reactor.seconds())

    def _acknowledge(self):
        unacked = self.unacked
        if unacked and not self.upstream_full and self.proto.state is not CLOSED:
            self.unacked = 0
            self.proto.h2.acknowledge_received_data(unacked, self.stream_id)

    def _detach(self, abort):
        connector = self.connector
        if connector is not None:
            self.connector = None
            connector.cancel()
        conn = self.conn
        if conn is not None:
            self.conn = None
            if conn.state is not UPSTREAM_CLOSED:
                if self.producing:
                    conn.transport.unregisterProducer()
                if self.reading_paused:
                    conn.transport.resumeProducing()
                if abort:
                    conn.abort()
            self.producing = False
            self.reading_paused = False

    def _done(self, reset):
        """The stream is over on our side: stop its input, release its window, log it."""
        self.state = DONE
        self.out.clear()
        self.out_size = 0
        proto = self.proto
        if not self.complete and not reset and proto.state is not CLOSED:
            # Answered before the request ended: tell the client to stop sending (§8.1).
            proto.h2.reset_stream(self.stream_id, _NO_ERROR)
        self.upstream_full = False
        self._acknowledge()
        proto.stream_done(self)


class H2Protocol(Protocol):
    """An HTTP/2 client connection (see the module docstring for its states)."""

    __slots__ = (
        "factory", "reactor", "pool", "h2", "state", "streams", "corked", "write_paused",
        "client_ip", "peer", "trusted", "trusted_for", "deadline", "timer", "shutdown_trigger",
        "last_stream_id", "reset_budget", "reset_at",
    )

    def __init__(self, factory):
        self.factory = factory
        self.reactor = factory.reactor
        self.pool = factory.pool
        self.h2 = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        self.state = OPEN
        self.streams = {}
        self.corked = 0
        self.write_paused = False
        self.trusted = False
        self.trusted_for = None
        self.timer = None
        self.shutdown_trigger = None
        self.last_stream_id = None       # set when we send GOAWAY: streams above it are refused
        self.reset_budget = float(RESET_BURST)
        self.reset_at = 0.0

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self):
        self.client_ip, self.peer = accept_client(self.transport)
        h2 = self.h2
        h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: 2 * self.factory.max_head_size,
        })
        h2.decoder.max_header_list_size = 2 * self.factory.max_head_size
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.transport.registerProducer(self, True)
        self.shutdown_trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.go_away)
        self.deadline = self.reactor.seconds() + self.factory.header_timeout
        self.timer = self.reactor.callLater(self.factory.header_timeout, self._on_timer)
        self.send_pending()

    def dataReceived(self, data):
        if self.state is CLOSED:
            return
        self.corked += 1
        try:
            try:
                events = self.h2.receive_data(data)
            except ProtocolError:
                self._close()                # after the GOAWAY h2 queued with the error
                return
            for event in events:
                handler = _HANDLERS.get(event.__class__)
                if handler is not None:
                    handler(self, event)
        finally:
            if self.corked:
                self.corked -= 1
        self.send_pending()

    def connectionLost(self, reason=None):
        self.state = CLOSED
        self._stop_timer()
        trigger = self.shutdown_trigger
        if trigger is not None:
            self.shutdown_trigger = None
            self.reactor.removeSystemEventTrigger(trigger)
        for stream in list(self.streams.values()):
            stream.client_gone()

    # -- the client transport's producer ------------------------------------------------

    def pauseProducing(self):
        self.write_paused = True

    def resumeProducing(self):
        self.write_paused = False
        for stream in list(self.streams.values()):
            if stream.out:
                self.push(stream)
        self.send_pending()

    def stopProducing(self):
        self.write_paused = True

    # -- h2 events ----------------------------------------------------------------------

    def _on_request(self, event):
        stream_id = event.stream_id
        factory = self.factory
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, stream_id, factory.request_ids.next(), self.reactor.seconds())
        self.streams[stream_id] = stream
        factory.active += 1
        stream.start(event.headers, event.stream_ended is not None)

    def _on_data(self, event):
        stream = self.streams.get(event.stream_id)
        if stream is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.request_data(event.data, event.flow_controlled_length)

    def _on_stream_ended(self, event):
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_ended()

    def _on_stream_reset(self, event):
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.client_gone()
        now = self.reactor.seconds()
        budget = min(RESET_BURST, self.reset_budget + (now - self.reset_at) * RESETS_PER_SECOND) - 1
        self.reset_budget, self.reset_at = budget, now
        if budget < 0 and self.state is not CLOSED:
            self.h2.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            self._close()

    def _on_window_updated(self, event):
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.out:
                self.push(stream)
            return
        self._push_all()

    def _on_settings_changed(self, event):
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._push_all()

    def _on_terminated(self, event):
        """The client sent GOAWAY: finish what it started, then close."""
        if self.state is OPEN:
            self.state = DRAINING
        if not self.streams:
            self._close()

    # -- writing ------------------------------------------------------------------------

    def push(self, stream):
        """Send what `stream` has queued, as far as the peer's windows allow (END_STREAM with
        the last piece once the stream is ENDING)."""
        if self.state is CLOSED:
            return
        h2 = self.h2
        out = stream.out
        stream_id = stream.stream_id
        ending = stream.state is ENDING
        if out:
            if self.write_paused:
                return
            while out:
                window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = out[0]
                if len(piece) <= window:
                    out.popleft()
                    h2.send_data(stream_id, piece, end_stream=ending and not out)
                    stream.out_size -= len(piece)
                else:
                    h2.send_data(stream_id, piece[:window])
                    out[0] = piece[window:]
                    stream.out_size -= window
            if stream.conn is not None:
                if stream.reading_paused:
                    if stream.out_size <= OUT_LOW:
                        stream.reading_paused = False
                        stream.conn.transport.resumeProducing()
                elif stream.out_size > OUT_HIGH:
                    stream.reading_paused = True
                    stream.conn.transport.pauseProducing()
            if out:
                return
        elif ending:
            h2.end_stream(stream_id)
        if ending:
            stream.ended()

    def _push_all(self):
        for stream in list(self.streams.values()):
            if stream.out:
                self.push(stream)

    def send_pending(self):
        """Write what the h2 state machine produced (unless corked: then at uncork)."""
        if self.corked or self.state is CLOSED:
            return
        data = self.h2.data_to_send()
        if data:
            send(self.transport, data)

    # -- stream bookkeeping and shutdown ------------------------------------------------

    def is_trusted(self, router):
        """Whether the client is a trusted proxy under `router`'s snapshot (cached per router)."""
        if self.trusted_for is not router:
            self.trusted, self.trusted_for = router.trusts(self.peer), router
        return self.trusted

    def stream_done(self, stream):
        if self.streams.pop(stream.stream_id, None) is None:
            return
        factory = self.factory
        factory.active -= 1
        lb = stream.lb
        if lb is not None:               # least_conn: the exchange is no longer in flight
            stream.lb = None
            lb.release(stream.upstream)
        traffic = factory.traffic
        if traffic is not None:
            route = stream.route
            if route is not None and route.kind == "proxy":
                traffic.add(route.host.id, stream.status or 0)
        access_log = factory.access_log
        if access_log is not None:
            now = self.reactor.seconds()
            access_log.record((
                stream.started, stream.host, stream.method, stream.target, stream.status or 0,
                stream.head_size + stream.body_bytes, stream.bytes_out, now - stream.started,
                stream.upstream, self.client_ip, stream.request_id, stream.cause))
        if not self.streams:
            if self.state is DRAINING:
                self._close()
            else:
                self.deadline = self.reactor.seconds() + factory.idle_timeout

    def go_away(self):
        """Graceful shutdown: GOAWAY (NO_ERROR) naming the last stream we will finish; the
        connection closes once those streams end."""
        if self.state is not OPEN:
            return
        self.state = DRAINING
        # h2's own close_connection() would refuse to send anything more, so the frame is
        # built here and written after what h2 has queued.
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = _NO_ERROR
        send(self.transport, self.h2.data_to_send() + frame.serialize())
        if not self.streams:
            self._close()

    def _close(self):
        """Close after writing what h2 has queued (even while corked: nothing follows it)."""
        if self.state is CLOSED:
            return
        data = self.h2.data_to_send()
        if data:
            send(self.transport, data)
        self.state = CLOSED
        self._stop_timer()
        self.transport.loseConnection()

    # -- the idle timer -----------------------------------------------------------------

    def _on_timer(self):
        self.timer = None
        if self.state is CLOSED:
            return
        if self.streams:
            self.timer = self.reactor.callLater(self.factory.idle_timeout, self._on_timer)
            return
        left = self.deadline - self.reactor.seconds()
        if left > 0:
            self.timer = self.reactor.callLater(left, self._on_timer)
        else:
            self.go_away()

    def _stop_timer(self):
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()


_HANDLERS = {
    RequestReceived: H2Protocol._on_request,
    DataReceived: H2Protocol._on_data,
    StreamEnded: H2Protocol._on_stream_ended,
    StreamReset: H2Protocol._on_stream_reset,
    WindowUpdated: H2Protocol._on_window_updated,
    RemoteSettingsChanged: H2Protocol._on_settings_changed,
    ConnectionTerminated: H2Protocol._on_terminated,
}
