"""Upstream connections and the keep-alive pool, keyed by address so they outlive snapshots.

`UpstreamConnection` is the client side of one TCP connection to an upstream. States:

- CONNECTING: TCP connect in progress (the connector's own timeout is the connect timeout);
- BUSY: owned by one exchange (a `ProxyProtocol` request): the request head and body go
  out, the response is parsed with httptools and handed to the exchange through
  `upstream_head` / `upstream_body` / `upstream_done` / `upstream_failed`;
- IDLE: parked in the pool, owned by nobody; a close from the upstream just removes it;
- TUNNEL: after a 101 answer, bytes are relayed raw to the exchange until one side closes;
- CLOSED: gone; never reused.

The response timeout runs from the moment the request is sent and measures silence: every
read from the upstream moves it on. It is one `callLater` per connection that re-arms itself
for the remaining time instead of being reset on every read, and is not cancelled when an
exchange ends: the next exchange reuses it (moving it only if its deadline is earlier), and
on an idle connection it lapses on its own.

While a read from the upstream is handled, the exchange is corked (`cork()`/`uncork()`):
what it writes to its client (a response head and the body that arrived with it) leaves in
one send. Writes go through `proxy_engine.fastio`, straight to the socket when nothing waits.

An https upstream is the same over Twisted's TLS (`connectSSL` with the connection creator
from `proxy_engine.tls`: SNI, service-identity verification against `ca_pem` or the
platform's roots, or none when `verify` is off). The request is written at once and leaves
when the handshake is done; a connection lost to a TLS error before any response byte is
`TlsHandshakeFailed` (502).

`UpstreamPool` keeps idle connections per address (`Upstream.address`: `(scheme, host, port)`,
plus the TLS options for https), bounded by `idle_limit`;
connections idle longer than `idle_timeout` are closed by a lazy sweep. `retain()` drains
the pools of addresses no longer in the served snapshot: idle connections at once, busy ones
when their exchange ends.
"""
import httptools
from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError
from twisted.internet.protocol import ClientFactory, Protocol

from proxy_engine.errors import (
    BadResponse,
    ResponseTimeout,
    TlsHandshakeFailed,
    UpstreamReset,
    failure_for_connect_error,
)
from proxy_engine.fastio import send, send_sequence

CONNECTING, BUSY, IDLE, TUNNEL, CLOSED = "connecting", "busy", "idle", "tunnel", "closed"


class UpstreamConnection(Protocol):
    __slots__ = (
        "pool", "address", "state", "exchange", "reused", "idle_since", "parser", "headers",
        "reason", "status", "content_length", "chunked", "no_body", "got_bytes", "head_done",
        "last_read", "timeout", "timer", "reset_parser", "upgrade_ok", "connect_factory",
    )

    lines = None             # (a cached response's joined header lines: see cache.CachedResponse)

    def __init__(self, pool, address):
        self.pool = pool
        self.address = address
        self.state = CONNECTING
        self.exchange = None
        self.reused = False
        self.idle_since = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self.timer = None
        self.reset_parser = False
        self.connect_factory = None
        self._clear()

    def _clear(self):
        self.headers = []
        self.reason = b""
        self.status = 0
        self.content_length = None
        self.chunked = False
        self.got_bytes = False
        self.head_done = False
        self.no_body = False
        self.upgrade_ok = False

    # -- driven by the exchange -------------------------------------------------------

    def send(self, exchange, data, timeout, no_body, upgrade_ok):
        """Start an exchange: write the request head (plus any buffered body pieces)."""
        self.state = BUSY
        self.exchange = exchange
        self.no_body = no_body
        self.upgrade_ok = upgrade_ok
        self.timeout = timeout
        reactor = self.pool.reactor
        self.last_read = now = reactor.seconds()
        timer = self.timer
        if timer is None:
            self.timer = reactor.callLater(timeout, self._check_timeout)
        elif timer.getTime() > now + timeout:
            timer.reset(timeout)
        if data:
            send_sequence(self.transport, data)

    def abort(self):
        """The exchange gave up (client gone, body too large): never reuse this connection."""
        self.exchange = None
        self._stop_timer()
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.abortConnection()

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self):
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)
        factory = self.connect_factory
        if factory is not None:
            self.connect_factory = None
            factory.made(self)

    def dataReceived(self, data):
        self.last_read = self.pool.reactor.seconds()
        state = self.state
        if state is TUNNEL:
            send(self.exchange.transport, data)
            return
        if state is not BUSY:
            # Bytes from an idle upstream: it is out of step; drop it.
            self.state = CLOSED
            self.pool.forget(self)
            self.transport.abortConnection()
            return
        self.got_bytes = True
        exchange = self.exchange
        if exchange is None:
            self._feed(data)
            return
        exchange.cork()
        try:
            self._feed(data)
        finally:
            exchange.uncork()

    def _feed(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.status == 101 and self.upgrade_ok and self.exchange is not None:
                self._stop_timer()
                self.state = TUNNEL
                self.exchange.upstream_tunnel(data[upgrade.args[0]:])
            else:
                self._fail(BadResponse(f"unexpected upgrade to {self.status} response"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid response: {exc.__context__ or exc}"))
            return
        if self.reset_parser:
            self.reset_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def connectionLost(self, reason=None):
        state = self.state
        self.state = CLOSED
        self._stop_timer()
        if state is IDLE:
            self.pool.forget(self)
            return
        exchange = self.exchange
        self.exchange = None
        if exchange is None:
            return
        if state is TUNNEL:
            exchange.upstream_closed()
        elif not self.got_bytes and reason is not None and reason.check(SSLError, VerificationError):
            exchange.upstream_failed(self, TlsHandshakeFailed(str(reason.value) or type(reason.value).__name__))
        elif self.head_done and self.content_length is None and not self.chunked and not self.no_body:
            exchange.upstream_done(self, False)        # response delimited by close
        else:
            exchange.upstream_failed(self, UpstreamReset(
                "closed after the response head" if self.head_done else "closed before a response"))

    # -- httptools callbacks ------------------------------------------------------------

    def on_status(self, reason):
        self.reason += reason

    def on_header(self, name, value):
        lname = name.lower()
        self.headers.append((lname, name, value))
        if lname == b"content-length":
            self.content_length = int(value)
        elif lname == b"transfer-encoding":
            # Only one, plain "chunked" (llhttp lets a repeated or non-final one through).
            if self.chunked or value.strip().lower() != b"chunked":
                raise ValueError("Transfer-Encoding other than one final chunked")
            self.chunked = True

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        self.status = status
        if 100 <= status < 200 and status != 101:
            return                                      # interim answer: wait for the real one
        self.head_done = True
        if status in (204, 304):
            self.no_body = True
        if self.exchange is not None:
            self.exchange.upstream_head(self)
        if self.no_body and status not in (204, 304) and self.state is BUSY:
            # A HEAD answer: llhttp cannot be told there is no body, so end it here and
            # parse the next answer with a fresh parser.
            self.reset_parser = True
            self._done(self.parser.should_keep_alive())

    def on_body(self, body):
        if self.exchange is not None and not self.reset_parser:
            self.exchange.upstream_body(body)

    def on_message_complete(self):
        status = self.status
        if (100 <= status < 200 and status != 101) or not self.head_done:
            self._clear()
            return
        if status == 101 or self.reset_parser:
            return
        self._done(self.parser.should_keep_alive())

    # -- internals ----------------------------------------------------------------------

    def _done(self, reusable):
        exchange = self.exchange
        self.exchange = None
        self._clear()
        if exchange is not None:
            exchange.upstream_done(self, reusable)

    def _fail(self, failure):
        exchange = self.exchange
        self.abort()
        self.pool.forget(self)
        if exchange is not None:
            exchange.upstream_failed(self, failure)

    def _stop_timer(self):
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()

    def _check_timeout(self):
        self.timer = None
        if self.state is not BUSY:
            return
        silent = self.pool.reactor.seconds() - self.last_read
        if silent >= self.timeout:
            self._fail(ResponseTimeout(f"no bytes from the upstream for {self.timeout:g}s"))
        else:
            self.timer = self.pool.reactor.callLater(self.timeout - silent, self._check_timeout)


class _Connect(ClientFactory):
    """One connection attempt on behalf of one exchange (None once the exchange left)."""

    def __init__(self, pool, address, exchange):
        self.pool = pool
        self.address = address
        self.exchange = exchange
        self.connector = None

    def cancel(self):
        """The exchange no longer wants this connection (a late one goes to the pool)."""
        self.exchange = None
        connector = self.connector
        if connector is not None and getattr(connector, "state", None) == "connecting":
            connector.stopConnecting()

    def buildProtocol(self, addr):
        conn = UpstreamConnection(self.pool, self.address)
        conn.connect_factory = self
        return conn

    def made(self, conn):
        exchange = self.exchange
        self.exchange = None
        if exchange is None:
            self.pool.release(conn)
        else:
            conn.state = BUSY
            exchange.upstream_ready(conn)

    def clientConnectionFailed(self, connector, reason):
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.upstream_connect_failed(failure_for_connect_error(reason))


class UpstreamPool:
    """Idle keep-alive connections per upstream address; state that outlives snapshots."""

    def __init__(self, reactor, idle_limit=64, idle_timeout=60.0):
        self.reactor = reactor
        self.idle_limit = idle_limit
        self.idle_timeout = idle_timeout
        self.idle = {}
        self.served = None       # addresses of the served snapshot (None: keep every address)
        self.client_tls = {}     # https address -> connection creator (proxy_engine.tls, per snapshot)
        self._sweep_call = None

    def acquire(self, upstream, connect_timeout, exchange):
        """Give `exchange` a connection: at once from the pool (returns None), or by
        connecting (returns the attempt, whose `cancel()` the exchange may call)."""
        address = upstream.address
        idle = self.idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.state is IDLE:
                conn.state = BUSY
                conn.reused = True
                exchange.upstream_ready(conn)
                return None
        return self.connect(upstream, connect_timeout, exchange)

    def connect(self, upstream, connect_timeout, exchange):
        attempt = _Connect(self, upstream.address, exchange)
        if upstream.scheme == "https":
            creator = self.client_tls.get(upstream.address)
            if creator is None:          # an address the served snapshot's table lacks
                from proxy_engine.tls import client_creator
                creator = self.client_tls[upstream.address] = client_creator(upstream)
            attempt.connector = self.reactor.connectSSL(upstream.host, upstream.port, attempt, creator,
                                                        timeout=connect_timeout)
        else:
            attempt.connector = self.reactor.connectTCP(upstream.host, upstream.port, attempt,
                                                        timeout=connect_timeout)
        return attempt

    def release(self, conn):
        """Park a connection whose last exchange ended cleanly (unless its address is no
        longer served: a request that started on an older snapshot finished with it)."""
        if conn.state is CLOSED:
            return
        conn.exchange = None
        served = self.served
        idle = self.idle.setdefault(conn.address, []) if served is None or conn.address in served else None
        if idle is None or len(idle) >= self.idle_limit:
            conn.state = CLOSED
            conn.transport.loseConnection()
            return
        conn.state = IDLE
        conn.idle_since = self.reactor.seconds()
        idle.append(conn)
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(self.idle_timeout / 2, self._sweep)

    def forget(self, conn):
        idle = self.idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def retain(self, addresses):
        """Close idle connections to addresses that are no longer served; those still busy
        are closed when their exchange ends."""
        self.served = frozenset(addresses)
        for address in list(self.idle):
            if address not in addresses:
                for conn in self.idle.pop(address):
                    conn.state = CLOSED
                    conn.transport.loseConnection()

    def close_all(self):
        self.retain(())
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None

    def _sweep(self):
        self._sweep_call = None
        cutoff = self.reactor.seconds() - self.idle_timeout
        remaining = 0
        for address, idle in list(self.idle.items()):
            keep = []
            for conn in idle:
                if conn.idle_since <= cutoff:
                    conn.state = CLOSED
                    conn.transport.loseConnection()
                else:
                    keep.append(conn)
            if keep:
                self.idle[address] = keep
                remaining += len(keep)
            else:
                del self.idle[address]
        if remaining:
            self._sweep_call = self.reactor.callLater(self.idle_timeout / 2, self._sweep)
