"""Forward auth (nginx `auth_request` style, for Authelia, Authentik, oauth2-proxy, ...).

Before a request of a host with `forward_auth` reaches its upstream, the engine asks the
authentication service: a GET to the configured `url` (http or https) with no body,
carrying the client's Cookie, Authorization, Proxy-Authorization, User-Agent, Accept,
Accept-Language and X-Requested-With, plus what the service needs to know about the
original request: X-Forwarded-Method, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Uri,
X-Forwarded-For (the real client address: through trusted proxies, as access lists see it),
X-Original-URL (the full URL) and X-Original-Method.

The service's answer decides (`ForwardAuth.decide`):

- 2xx, ALLOW: the request goes on; each name of `response_headers` is taken from the
  service's answer into the upstream request. The client's own headers of those names are
  always removed first, even when the answer lacks them, so a client cannot pose as
  `Remote-User: admin`.
- 3xx / 4xx, DENY: that answer goes back to the client (status, Location, Set-Cookie,
  WWW-Authenticate, Content-Type and at most `BODY_LIMIT` bytes of body; a 4xx without a
  body gets the proxy's error page). This is how a login redirect (302 to the portal) or a
  401 reaches the browser.
- unreachable, timed out (`timeout` covers connecting, the answer and its body), TLS
  failure, an invalid answer, or 5xx / 1xx / 304, FAIL: the client gets a 502 (504 for a timeout)
  whose cause names the authentication service, never the upstream; nothing is forwarded
  (fail closed). The detail goes to the error sink like an upstream error.

Every decision is made by the service: nothing is cached, because Authelia's and
Authentik's answers depend on the URL, the method and the client address as well as the
cookie, so a cache keyed by Cookie + Authorization would be unsafe, and a key with all of
them would hardly ever hit.

Non-blocking: `AuthClient(reactor)` is one `twisted.web.client.Agent` per worker listener
(`ProxyFactory.auth_client`, made on first use) with a persistent `HTTPConnectionPool`
(keep-alive to the service, `MAX_PER_HOST` idle connections, closed after `IDLE_TIMEOUT`),
so connections outlive snapshots. https URLs are verified against the system's roots with
service-identity hostname checks (`BrowserLikePolicyForHTTPS`); a test may pass its own
policy.

`ForwardAuth(options)` is built once per snapshot (routing.py, `ProxyRoute.forward_auth`,
None without forward auth, so other hosts pay nothing). `check(client, ..., done)` always
answers later: `done(decision)` runs on the reactor thread with an `Allowed`, `Denied` or
`Failed`. The protocols wait in their `_authorized` stage meanwhile; an HTTP/1.1 body still
uploading is held by pausing the client's reads, an HTTP/2 body waits unacknowledged.
"""
import logging
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet import error as terror
from twisted.internet.protocol import Protocol
from twisted.web import client as wclient
from twisted.web.http_headers import Headers

from proxy_engine.access import client_address
from proxy_engine.headers import forwarded_values

log = logging.getLogger(__name__)

BODY_LIMIT = 64 * 1024
MAX_PER_HOST = 16
IDLE_TIMEOUT = 60.0
ALLOW, DENY, FAIL = "allow", "deny", "fail"

# Client headers the service sees (lower-case name -> the name sent).
_PASSED = {
    b"cookie": b"Cookie", b"authorization": b"Authorization", b"proxy-authorization": b"Proxy-Authorization",
    b"user-agent": b"User-Agent", b"accept": b"Accept", b"accept-language": b"Accept-Language",
    b"x-requested-with": b"X-Requested-With",
}
# Headers of a denial that go back to the client (Content-Type is passed separately).
_RETURNED = {b"location": b"Location", b"set-cookie": b"Set-Cookie", b"www-authenticate": b"WWW-Authenticate"}


class Allowed:
    kind = ALLOW
    __slots__ = ("drop", "copied")

    def __init__(self, drop, copied):
        self.drop = drop             # lower-case names the client may not send upstream
        self.copied = copied         # [(lower-case name, name, value)] from the service

    def apply(self, headers):
        """`headers` (triples) as they go upstream: the client's copies of the service's
        names removed, the service's values appended."""
        drop = self.drop
        return [h for h in headers if h[0] not in drop] + self.copied


class Denied:
    kind = DENY
    __slots__ = ("status", "lines", "pairs", "body", "content_type", "cause")

    def __init__(self, status, returned, body, content_type):
        self.status = status
        self.lines = b"".join(name + b": " + value + b"\r\n" for name, value in returned)
        self.pairs = tuple((name.lower(), value) for name, value in returned)
        self.body = body
        self.content_type = content_type or b"text/plain; charset=utf-8"
        # A 4xx without a body gets the proxy's error page (with the headers above).
        self.cause = "The authentication service refused this request." if status >= 400 and not body else None


def with_cors(route, headers, lines, pairs):
    """`lines` / `pairs` of a local answer plus the route's CORS headers, when it has CORS."""
    cors = route.cors
    if cors is None:
        return lines, pairs
    extra = cors.local_lines(headers)
    return lines + extra, tuple(pairs) + tuple(
        (n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in extra.split(b"\r\n") if line))


class Failed:
    kind = FAIL
    __slots__ = ("status", "cause", "detail")

    def __init__(self, status, cause, detail):
        self.status = status
        self.cause = cause
        self.detail = detail


class _Body(Protocol):
    """Reads a response body up to `limit` bytes; beyond that the connection is dropped."""

    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0
        self.deferred = defer.Deferred(lambda d: self.transport.stopProducing())

    def dataReceived(self, data):
        if self.size >= self.limit:
            return
        room = self.limit - self.size
        self.parts.append(data[:room])
        self.size += min(len(data), room)
        if self.size >= self.limit:
            self.transport.stopProducing()       # enough: the rest is not read (connection closed)

    def connectionLost(self, reason):
        if self.deferred.called:
            return
        if reason.check(wclient.ResponseDone, wclient.PotentialDataLoss) or self.size >= self.limit:
            self.deferred.callback(b"".join(self.parts))
        else:
            self.deferred.errback(reason)


_CONTROL = bytes(c for c in range(32) if c != 9) + b"\x7f"


def _clean(value):
    """Whether a header value of the service may be passed on (no control characters)."""
    return len(value.translate(None, _CONTROL)) == len(value)


class Answer:
    """The service's answer: `status`, `headers` ((lower-case name, value), ...), `body`."""
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


class AuthClient:
    """The HTTP client that talks to authentication services (one per worker listener)."""

    def __init__(self, reactor, tls_policy=None, max_per_host=MAX_PER_HOST, idle_timeout=IDLE_TIMEOUT):
        self.reactor = reactor
        self.pool = wclient.HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.cachedConnectionTimeout = idle_timeout
        self.pool.retryAutomatically = True
        self.agent = wclient.Agent(reactor, contextFactory=tls_policy or wclient.BrowserLikePolicyForHTTPS(),
                                   pool=self.pool)
        self.requests = 0            # subrequests started (for the tests)

    def get(self, url, headers, timeout):
        """A Deferred firing with an `Answer` (body read up to `BODY_LIMIT`, only for
        non-2xx answers), or failing; cancelled, with its connection, after `timeout`."""
        self.requests += 1
        d = self.agent.request(b"GET", url, Headers(headers), None)

        def got(response):
            pairs = tuple((name.lower(), value) for name, values in response.headers.getAllRawHeaders()
                          for value in values if _clean(value))
            body = _Body(0 if 200 <= response.code < 300 else BODY_LIMIT)
            response.deliverBody(body)     # a 2xx body is read and discarded (keeps the connection)
            return body.deferred.addCallback(lambda data: Answer(response.code, pairs, data))

        d.addCallback(got)
        d.addTimeout(timeout, self.reactor)
        return d

    def close(self):
        return self.pool.closeCachedConnections()


def _service_failure(failure):
    """A `Failed` for why the service could not be asked (cause in words, detail for the log)."""
    exc = failure.value
    reasons = getattr(exc, "reasons", None)      # ResponseNeverReceived, RequestTransmissionFailed, ...
    inner = reasons[0].value if reasons else exc
    detail = f"{type(inner).__name__}: {inner}".strip()
    # Only the timeout cancels a subrequest; the Agent reports it wrapped (ResponseNeverReceived).
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError)) or isinstance(
            inner, (defer.CancelledError, terror.TimeoutError)):
        return Failed(504, "the authentication service timed out", detail)
    if isinstance(inner, (terror.ConnectionRefusedError, terror.ConnectError, terror.DNSLookupError)):
        return Failed(502, "the authentication service is unreachable", detail)
    name = type(inner).__module__ + type(inner).__name__
    if "SSL" in name or "VerificationError" in name or "ssl" in name:
        return Failed(502, "TLS handshake with the authentication service failed", detail)
    if isinstance(inner, (wclient.ResponseFailed, terror.ConnectionLost, terror.ConnectionDone)) or reasons:
        return Failed(502, "the authentication service closed the connection", detail)
    return Failed(502, "the authentication service failed", detail)


class ForwardAuth:
    __slots__ = ("url", "service", "timeout", "drop", "copy")

    def __init__(self, options):
        self.url = options.url.encode("ascii")
        self.service = "forward auth " + (urlsplit(options.url).netloc or options.url)
        self.timeout = options.timeout
        self.copy = tuple((name.lower().encode("ascii"), name.encode("ascii")) for name in options.response_headers)
        self.drop = frozenset(lname for lname, _ in self.copy)

    def request_headers(self, method, target, host, proto, client_address, headers):
        """The headers of the subrequest (a dict for twisted's `Headers`)."""
        out = {}
        for lname, _, value in headers:
            name = _PASSED.get(lname)
            if name is not None:
                out.setdefault(name, []).append(value)
        cookies = out.get(b"Cookie")
        if cookies is not None and len(cookies) > 1:          # HTTP/2 splits cookies (RFC 9113 §8.2.3)
            out[b"Cookie"] = [b"; ".join(cookies)]
        if target[:1] == b"/":
            uri = target
        else:                                                  # absolute-form: keep its path and query
            rest = target.split(b"://", 1)[-1]
            slash = rest.find(b"/")
            uri = b"/" if slash < 0 else rest[slash:]
        out.update({
            b"X-Forwarded-Method": [method], b"X-Original-Method": [method],
            b"X-Forwarded-Proto": [proto], b"X-Forwarded-Host": [host], b"X-Forwarded-Uri": [uri],
            b"X-Forwarded-For": [client_address], b"X-Original-URL": [proto + b"://" + host + uri],
        })
        return out

    def check(self, client, method, target, host, proto, client_address, headers, done):
        """Ask the service about a request; `done(decision)` is called later (reactor thread)."""
        d = client.get(self.url, self.request_headers(method, target, host, proto, client_address, headers),
                       self.timeout)
        d.addCallbacks(self.decide, _service_failure)
        d.addCallback(done)
        d.addErrback(lambda failure: log.error("forward auth: resuming a request failed",
                                               exc_info=(failure.type, failure.value, failure.tb)))
        return d

    def ask(self, client, method, target, host, scheme, peer, client_ip, trusted, trusts, headers, done):
        """`check` for a request as a protocol holds it: the forwarded proto and host (a
        trusted proxy's X-Forwarded-Proto / -Host count), the client address through
        trusted proxies (X-Forwarded-For)."""
        _, proto, host, _ = forwarded_values(headers, client_ip, scheme, host, trusted)
        address = client_address(peer, trusted, headers, trusts)
        xff = client_ip if address is None else str(address).encode("ascii")
        return self.check(client, method, target, host, proto, xff, headers, done)

    def decide(self, answer):
        """`Allowed`, `Denied` or `Failed` for the service's `Answer`."""
        status = answer.status
        if 200 <= status < 300:
            copied = []
            for lname, name in self.copy:
                copied += [(lname, name, value) for key, value in answer.headers if key == lname]
            return Allowed(self.drop, copied)
        if 300 <= status < 500 and status != 304:
            returned = []
            content_type = None
            for key, value in answer.headers:
                name = _RETURNED.get(key)
                if name is not None:
                    returned.append((name, value))
                elif key == b"content-type" and content_type is None:
                    content_type = value
            return Denied(status, returned, answer.body, content_type)
        return Failed(502, "the authentication service failed", f"it answered {status}")
