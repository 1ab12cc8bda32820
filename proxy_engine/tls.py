"""TLS: server contexts chosen by SNI, the HTTP/1.1 / HTTP/2 hand-off, upstream TLS options.

Built off the reactor. `build_table(snapshot, alpn_select)` runs in the reload thread with the
snapshot (`attach(snapshot, server)` returns the snapshot with its `tls` field set): it parses
every PEM and builds one pyOpenSSL context per certificate that an enabled proxy host
references in `ssl.certificate`. Each context: TLS 1.2 and 1.3 only, Mozilla "intermediate"
TLS 1.2 ciphers (ECDHE + AEAD; the TLS 1.3 suites are OpenSSL's, all AEAD), curves X25519,
P-256, P-384, no compression, no renegotiation, the chain served after the leaf, ECDSA or RSA
keys (whatever the certificate has). The table maps each referencing host's domains to its
context: `exact[b"name"]` and `wildcard[b"*.rest"]`, each `(context, h2_allowed)`.

A certificate that does not parse, whose key does not match, or that is missing from
`certificates` is skipped and logged with the reason (`TlsTable.problems`); its hosts fall
back as an unknown name would. The snapshot is never refused for it. A host whose certificate
does not cover one of its domains is still served that certificate (as nginx would) and a
warning is logged: clients see the name mismatch, which says more than a fallback would.

`TlsServer` is built once per process, before workers fork (so they share the session-ticket
keys of its context and a resumed session works whichever worker accepts): the dispatching
context with the default certificate (self-signed, generated at start, or a PEM file holding
certificate and key), the SNI callback and the ALPN callback. The SNI callback only looks the
name up in `server.table` (the current snapshot's, swapped with it): exact, then wildcard
(one extra label), then `settings.tls_fallback`: the default certificate, or "reject": the
handshake fails with the `unrecognized_name` alert. No name (SNI absent) is an unknown name.
Session resumption: tickets (TLS 1.2 and 1.3) and the server-side session cache.

ALPN offers `h2` only for names whose host has `ssl.http2` and only when an HTTP/2 protocol
class is plugged in; otherwise `http/1.1` is selected (or none, if the client offers neither).

The HTTP/2 seam. `HttpsFactory(proxy_factory)` is the factory wrapped by Twisted's
`TLSMemoryBIOFactory`, whose per-connection protocol is `TlsTransport` (Twisted's memory-BIO
TLS with a shorter record path: no deferred small-write aggregation, direct `fastio` sends). Each connection starts as a `TlsSession`, which only waits for the
handshake (bounded by `proxy_factory.header_timeout`). On `handshakeCompleted` it reads
`transport.negotiatedProtocol`: if that is `b"h2"` and `proxy_factory.h2_protocol_class` is
set, it builds `h2_protocol_class(proxy_factory)`, otherwise `ProxyProtocol(proxy_factory)`;
it makes that the TLS transport's `wrappedProtocol` and calls its `makeConnection(transport)`.
From then on the TLS layer talks to the chosen protocol directly (no extra call per read).
`server.py` sets `h2_protocol_class` from `proxy_engine.h2protocol.H2Protocol` when that
module exists; an HTTP/2 protocol class only needs `__init__(factory)` and the ordinary
Twisted `Protocol` methods, and reads `factory.router` / `factory.scheme` like ProxyProtocol.

Upstream TLS: `client_creator(upstream)` gives the connection creator for an https upstream:
`optionsForClientTLS(host)` (SNI when the host is a name, service-identity hostname or IP
check) with `ca_pem` as trust root when given, else the platform's; with `verify` False,
no verification at all but still SNI. The table holds one per https upstream address of the
snapshot (`TlsTable.upstreams`), so no PEM is parsed on the reactor.
"""
import datetime
import logging
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import ssl as tssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from proxy_engine.fastio import send as _send_now

log = logging.getLogger(__name__)

CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
           b"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
CURVES = b"X25519:P-256:P-384"
_TLSEXT_ERR_OK, _TLSEXT_ERR_ALERT_FATAL, _AD_UNRECOGNIZED_NAME = 0, 2, 112
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TlsError(ValueError):
    """A certificate that cannot be served (the reason never quotes the key)."""


def configure(ctx):
    """The settings every server context shares (the dispatching one included: OpenSSL keeps
    its protocol versions and ciphers after SNI switches the certificate's context)."""
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_cipher_list(CIPHERS)
    if not _lib.SSL_CTX_set1_curves_list(ctx._context, CURVES):
        raise TlsError("OpenSSL refused the curve list")
    ctx.set_session_id(b"gatehouse")
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return ctx


def server_context(certificate_pem, key_pem, chain_pem="", alpn_select=None):
    """A configured context serving this certificate (leaf first, then the chain)."""
    certs = _PEM_CERT.findall(_bytes(certificate_pem)) + _PEM_CERT.findall(_bytes(chain_pem))
    if not certs:
        raise TlsError("no certificate in certificate_pem")
    try:
        parsed = [x509.load_pem_x509_certificate(pem) for pem in certs]
    except ValueError as exc:
        raise TlsError(f"certificate does not parse: {exc}") from None
    try:
        key = serialization.load_pem_private_key(_bytes(key_pem), password=None)
    except (ValueError, TypeError):
        raise TlsError("key_pem is not an unencrypted private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, _rsa_key_type())):
        raise TlsError(f"unsupported key type {type(key).__name__}")
    ctx = configure(SSL.Context(SSL.TLS_SERVER_METHOD))
    try:
        ctx.use_certificate(parsed[0])
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        for extra in parsed[1:]:
            ctx.add_extra_chain_cert(extra)
    except SSL.Error:
        raise TlsError("the key does not match the certificate") from None
    if alpn_select is not None:
        ctx.set_alpn_select_callback(alpn_select)
    ctx.leaf = parsed[0]
    return ctx


def _rsa_key_type():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.RSAPrivateKey


def _bytes(text):
    return text.encode("ascii", "replace") if isinstance(text, str) else (text or b"")


def covers(leaf, name):
    """Whether `name` (str) is among the certificate's DNS names (wildcards one label)."""
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    name = name.lower()
    for pattern in names:
        pattern = pattern.lower()
        if pattern == name or (pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]):
            return True
    return False


class TlsTable:
    """One snapshot's TLS state: name -> (context, h2 allowed), the hosts that have a usable
    certificate (force HTTPS only redirects those), the fallback, the upstream creators."""
    __slots__ = ("exact", "wildcard", "reject_unknown", "served_hosts", "upstreams", "problems")

    def __init__(self, exact=None, wildcard=None, reject_unknown=False, served_hosts=frozenset(),
                 upstreams=None, problems=()):
        self.exact = exact or {}
        self.wildcard = wildcard or {}
        self.reject_unknown = reject_unknown
        self.served_hosts = served_hosts
        self.upstreams = upstreams or {}
        self.problems = problems

    def lookup(self, name):
        """(context, h2) for an SNI name (bytes, or None), or None when unknown."""
        if not name:
            return None
        name = name.lower().rstrip(b".")
        entry = self.exact.get(name)
        if entry is None:
            dot = name.find(b".")
            if dot > 0:
                entry = self.wildcard.get(b"*" + name[dot:])
        return entry


def build_table(snapshot, alpn_select=None):
    """Parse the certificates enabled hosts reference and index them by the hosts' domains.
    Runs in the reload thread; never raises for a bad certificate (it is skipped, logged)."""
    by_name = {c.name: c for c in snapshot.certificates}
    contexts = {}
    problems = []
    exact, wildcard, served = {}, {}, set()
    for host in snapshot.proxy_hosts:
        name = host.ssl.certificate
        if name is None:
            continue
        if name not in contexts:
            cert = by_name.get(name)
            if cert is None:
                contexts[name] = None
                problems.append((name, "not among the snapshot's certificates"))
            else:
                try:
                    contexts[name] = server_context(cert.certificate_pem, cert.key_pem, cert.chain_pem, alpn_select)
                except TlsError as exc:
                    contexts[name] = None
                    problems.append((name, str(exc)))
        ctx = contexts[name]
        if ctx is None:
            continue
        served.add(host.id)
        for domain in host.domains:
            if not covers(ctx.leaf, domain):
                log.warning("certificate %r does not cover %s (proxy host %s); serving it anyway",
                            name, domain, host.id)
            key = domain.encode("ascii")
            (wildcard if key.startswith(b"*.") else exact)[key] = (ctx, host.ssl.http2)
    for name, reason in problems:
        log.error("certificate %r skipped: %s; its hosts get the TLS fallback", name, reason)
    upstreams = {}
    for host in snapshot.proxy_hosts:
        for upstream in host.upstreams + tuple(u for loc in host.locations for u in loc.upstreams):
            if upstream.scheme == "https" and upstream.address not in upstreams:
                try:
                    upstreams[upstream.address] = client_creator(upstream)
                except Exception as exc:       # a bad ca_pem: that upstream answers 502
                    log.error("upstream %s:%s TLS options: %s", upstream.host, upstream.port, exc)
    return TlsTable(exact, wildcard, snapshot.settings.tls_fallback == "reject", frozenset(served),
                    upstreams, tuple(problems))


def attach(snapshot, server=None):
    """The snapshot with its TLS table (reload thread)."""
    import dataclasses
    return dataclasses.replace(snapshot, tls=build_table(snapshot, server.select_alpn if server else None))


def default_certificate(path=None):
    """(certificate PEM, key PEM) of the fallback certificate: read from `path` (one file
    with both), or a fresh self-signed ECDSA P-256 one for "gatehouse.invalid"."""
    if path:
        with open(path, "rb") as handle:
            data = handle.read()
        return data, data
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("gatehouse.invalid")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@implementer(IOpenSSLServerConnectionCreator)
class TlsServer:
    """The process-wide server side: the dispatching context (default certificate, SNI and
    ALPN callbacks) and the current snapshot's `table`."""

    def __init__(self, default_pem=None, h2_enabled=False):
        cert_pem, key_pem = default_pem or default_certificate()
        self.table = TlsTable()
        self.h2_enabled = h2_enabled
        self.context = server_context(cert_pem, key_pem, "", self.select_alpn)
        self._install_sni(self.context)

    def swap(self, table):
        if table is not None:
            self.table = table

    def serverConnectionForTLS(self, protocol):
        return SSL.Connection(self.context, None)

    def _install_sni(self, ctx):
        # pyOpenSSL's own wrapper cannot choose the alert (and prints a traceback to refuse),
        # so this is the same cffi callback with the unrecognized_name alert.
        connections = SSL.Connection._reverse_mapping

        def on_servername(ssl, alert, arg):
            try:
                conn = connections[ssl]
                entry = self.table.lookup(conn.get_servername())
                if entry is not None:
                    conn.set_context(entry[0])
                elif self.table.reject_unknown:
                    alert[0] = _AD_UNRECOGNIZED_NAME
                    return _TLSEXT_ERR_ALERT_FATAL
            except Exception:
                log.exception("SNI callback failed")
                return _TLSEXT_ERR_ALERT_FATAL
            return _TLSEXT_ERR_OK

        self._sni_callback = _ffi.callback("int (*)(SSL *, int *, void *)", on_servername)
        _lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, self._sni_callback)

    def select_alpn(self, conn, offered):
        if b"h2" in offered and self.h2_enabled:
            entry = self.table.lookup(conn.get_servername())
            if entry is not None and entry[1]:
                return b"h2"
        if b"http/1.1" in offered:
            return b"http/1.1"
        return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IHandshakeListener)
class TlsSession(Protocol):
    """A TLS connection until its handshake completes; then it hands the transport to the
    protocol ALPN chose (see the module docstring). Before that, only a timeout runs."""

    def __init__(self, factory):
        self.factory = factory
        self.timer = None

    def connectionMade(self):
        self.timer = self.factory.reactor.callLater(self.factory.header_timeout, self._timed_out)

    def _timed_out(self):
        self.timer = None
        self.transport.abortConnection()

    def handshakeCompleted(self):
        self._stop()
        transport = self.transport
        h2 = getattr(self.factory, "h2_protocol_class", None)
        if h2 is not None and transport.negotiatedProtocol == b"h2":
            protocol = h2(self.factory)
        else:
            from proxy_engine.protocol import ProxyProtocol
            protocol = ProxyProtocol(self.factory)
        transport.wrappedProtocol = protocol
        protocol.makeConnection(transport)

    def dataReceived(self, data):
        """Never called: application data only follows the handshake."""

    def connectionLost(self, reason=None):
        self._stop()

    def _stop(self):
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None


class HttpsFactory(Factory):
    """The factory `TLSMemoryBIOFactory` wraps: one `TlsSession` per connection."""

    def __init__(self, proxy_factory):
        self.proxy_factory = proxy_factory

    def buildProtocol(self, addr):
        return TlsSession(self.proxy_factory)


class TlsTransport(TLSMemoryBIOProtocol):
    """Twisted's `TLSMemoryBIOProtocol` (handshake, shutdown, producers, errors unchanged)
    with a shorter path per record, for the HTTPS listener:

    - no small-write aggregation (Twisted's default `BufferingTLSTransport` defers every
      write to a `callLater(0)`): the engine's protocols already cork a response into one
      write, so it is encrypted at once, in one `SSL_write` (up to 64 KiB), not per 16 KiB;
    - the ciphertext leaves through `fastio.send`: straight to the socket when nothing is
      queued (one `send`, no `epoll_ctl` pair and no extra reactor pass), else queued;
    - a read stops asking OpenSSL for plaintext once neither the SSL object nor the memory
      BIO holds anything (no `recv` that only raises `WantReadError`)."""

    def dataReceived(self, data):
        if not self._handshakeDone or self._appSendBuffer:
            TLSMemoryBIOProtocol.dataReceived(self, data)
            return
        into = self._tlsConnection._into_ssl
        written = _lib.BIO_write(into, data, len(data))
        if written <= 0:
            self._tlsConnection._handle_bio_errors(into, written)
        self._flushReceiveBIO()

    def _flushSendBIO(self):
        out = self._tlsConnection._from_ssl
        while True:
            got = _lib.BIO_read(out, _OUT, _BUF_SIZE)
            if got <= 0:
                return              # empty (a memory BIO's read fails only when empty)
            _send_now(self.transport, _ffi.buffer(_OUT, got)[:])
            if got < _BUF_SIZE:
                return

    def _flushReceiveBIO(self):
        conn = self._tlsConnection
        ssl, into = conn._ssl, conn._into_ssl
        while not self._lostTLSConnection:
            got = _lib.SSL_read(ssl, _IN, _BUF_SIZE)
            if got > 0:
                if not self._aborted:
                    self.wrappedProtocol.dataReceived(_ffi.buffer(_IN, got)[:])
                if not _lib.SSL_pending(ssl) and not _lib.BIO_get_mem_data(into, _PTR):
                    break
                continue
            try:
                conn._raise_ssl_error(ssl, got)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                break
        if self._tlsConnection is not None:
            self._flushSendBIO()

    def _write(self, data):
        if self._lostTLSConnection:
            return
        conn = self._tlsConnection
        ssl = conn._ssl
        done, size = 0, len(data)
        with _ffi.from_buffer(data) as buf:
            while done < size:
                got = _lib.SSL_write(ssl, buf + done, min(size - done, _BUF_SIZE))
                if got > 0:
                    done += got
                    continue
                try:
                    conn._raise_ssl_error(ssl, got)
                except SSL.WantReadError:
                    self._flushSendBIO()
                    self._bufferedWrite(data[done:])
                    return
                except SSL.Error:
                    self._tlsShutdownFinished(Failure())
                    return
                break
        self._flushSendBIO()


# Buffers shared by every connection: the reactor thread alone touches them, and what is
# read into them is copied out at once.
_BUF_SIZE = 1 << 16
_IN = _ffi.new("char[]", _BUF_SIZE)
_OUT = _ffi.new("char[]", _BUF_SIZE)
_PTR = _ffi.new("char **")      # BIO_get_mem_data's out-pointer


def https_factory(server, proxy_factory):
    factory = TLSMemoryBIOFactory(server, False, HttpsFactory(proxy_factory))
    factory.protocol = TlsTransport
    return factory


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """Upstream TLS without verification (self-signed homelab services), SNI still sent."""

    def __init__(self, hostname):
        self.context = tssl.CertificateOptions(verify=False).getContext()
        is_ip = isIPAddress(hostname) or isIPv6Address(hostname)
        self.server_name = None if is_ip else hostname.encode("idna")

    def clientConnectionForTLS(self, protocol):
        conn = SSL.Connection(self.context, None)
        if self.server_name:
            conn.set_tlsext_host_name(self.server_name)
        return conn


def client_creator(upstream):
    """The connection creator for an https upstream (see the module docstring)."""
    if not upstream.verify:
        return _Unverified(upstream.host)
    if upstream.ca_pem:
        roots = [tssl.Certificate.loadPEM(pem) for pem in _PEM_CERT.findall(_bytes(upstream.ca_pem))]
        trust = tssl.trustRootFromCertificates(roots)
    else:
        trust = tssl.platformTrust()
    return tssl.optionsForClientTLS(upstream.host, trustRoot=trust)
