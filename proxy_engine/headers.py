"""Header rewriting as pure functions, applied in both directions.

Headers travel as lists of `(lower_name, name, value)` bytes triples, built once by the
parser callbacks, so nothing is lower-cased twice. The functions return whole message heads
built with one `b"".join`.

Hop-by-hop headers (one named list, both directions): Connection and every header it names,
Keep-Alive, Proxy-Connection, Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade.
Framing (Content-Length / Transfer-Encoding) is re-added by the caller from what it actually
sends. Headers the proxy adds itself are appended after filtering, so a client naming them in
Connection cannot remove them.
"""
import ipaddress

HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade",
))
# Dropped from requests besides hop-by-hop: re-framed, answered by the proxy, or re-set.
_REQUEST_DROP = HOP_BY_HOP | frozenset((
    b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-real-ip",
))
_RESPONSE_DROP = HOP_BY_HOP | frozenset((b"content-length",))
_EMPTY = frozenset()


# Connection values seen on nearly every message, and the names they add to the drop list.
_COMMON_CONNECTION = {
    b"keep-alive": _EMPTY, b"Keep-Alive": _EMPTY, b"upgrade": _EMPTY, b"Upgrade": _EMPTY,
    b"close": frozenset((b"close",)), b"Close": frozenset((b"close",)),
}


def connection_tokens(headers):
    """Lower-case names listed in Connection headers (the extra hop-by-hop headers)."""
    tokens = None
    for lname, _, value in headers:
        if lname == b"connection":
            common = _COMMON_CONNECTION.get(value)
            if common is not None and tokens is None:
                tokens = common
                continue
            tokens = set(tokens or ())
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens) if tokens else _EMPTY


def forwarded_values(headers, client_ip, proto, host, trusted):
    """(X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Real-IP) for the upstream.

    Incoming X-Forwarded-* and X-Real-IP are kept only when the peer is a trusted proxy;
    otherwise they are replaced by what this proxy saw.
    """
    if not trusted:
        return client_ip, proto, host, client_ip
    xff = []
    xproto = xhost = real = None
    for lname, _, value in headers:
        if lname == b"x-forwarded-for":
            xff.append(value.strip())
        elif lname == b"x-forwarded-proto" and xproto is None:
            xproto = value.strip()
        elif lname == b"x-forwarded-host" and xhost is None:
            xhost = value.strip()
        elif lname == b"x-real-ip" and real is None:
            real = value.strip()
    if xff:
        chain = b", ".join(xff)
        forwarded_for = chain + b", " + client_ip
        if real is None:
            real = chain.rsplit(b",", 1)[-1].strip()
    else:
        forwarded_for = client_ip
    return forwarded_for, xproto or proto, xhost or host, real or client_ip


def upstream_request_head(method, target, headers, client_ip, proto, host, trusted, framing,
                          upgrade=None, rules=None):
    """The request head sent upstream (HTTP/1.1, target as sent, Host preserved).

    `framing` is the exact framing line(s) for the body we will send (b"" for none);
    `upgrade` is the Upgrade value to pass through (the host allows it) or None;
    `rules` the route's compiled request header rules (`headerrules.Compiled`) or None.
    """
    drop = connection_tokens(headers)
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    xff, xproto, xhost, real = forwarded_values(headers, client_ip, proto, host, trusted)
    if rules is None:
        parts += [name + b": " + value + b"\r\n" for lname, name, value in headers
                  if lname not in _REQUEST_DROP and lname not in drop]
        parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", xproto,
                  b"\r\nX-Forwarded-Host: ", xhost, b"\r\nX-Real-IP: ", real, b"\r\n", framing)
    else:
        ruled = rules.drop
        parts += [name + b": " + value + b"\r\n" for lname, name, value in headers
                  if lname not in _REQUEST_DROP and lname not in drop and lname not in ruled]
        for lname, line, value in ((b"x-forwarded-for", b"X-Forwarded-For: ", xff),
                                   (b"x-forwarded-proto", b"X-Forwarded-Proto: ", xproto),
                                   (b"x-forwarded-host", b"X-Forwarded-Host: ", xhost),
                                   (b"x-real-ip", b"X-Real-IP: ", real)):
            if lname not in ruled:
                parts += (line, value, b"\r\n")
        parts += (rules.lines, framing)
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def response_lines(headers):
    """The end-to-end header lines of `headers` as the client gets them without header rules
    (what `client_response_head` writes; a cached response keeps them joined)."""
    drop = connection_tokens(headers)
    return b"".join([name + b": " + value + b"\r\n" for lname, name, value in headers
                     if lname not in _RESPONSE_DROP and lname not in drop])


def client_response_head(status_line, headers, framing, connection=b"", rules=None, lines=None):
    """The response head sent to the client.

    `status_line` is the full first line with CRLF; `framing` the framing line(s) for the
    body as we send it; `connection` an optional b"Connection: ...\\r\\n" line of our own;
    `rules` the route's compiled response header rules or None; `lines`, when given (and
    `rules` is None), is `response_lines(headers)` already joined.
    """
    if rules is None and lines is not None:
        return b"".join((status_line, lines, framing, connection, b"\r\n"))
    drop = connection_tokens(headers)
    parts = [status_line]
    if rules is None:
        parts += [name + b": " + value + b"\r\n" for lname, name, value in headers
                  if lname not in _RESPONSE_DROP and lname not in drop]
    else:
        ruled = rules.drop
        parts += [name + b": " + value + b"\r\n" for lname, name, value in headers
                  if lname not in _RESPONSE_DROP and lname not in drop and lname not in ruled]
        parts.append(rules.lines)
        if rules.defaults:                     # presets: only where the upstream sent none
            parts.append(rules.missing(headers))
    parts += (framing, connection, b"\r\n")
    return b"".join(parts)


def accept_client(transport):
    """A new client connection: (its IP as bytes, its parsed address or None); sets
    TCP_NODELAY where the transport has it."""
    host = getattr(transport.getPeer(), "host", "127.0.0.1")
    try:
        peer = ipaddress.ip_address(host)
    except ValueError:
        peer = None
    nodelay = getattr(transport, "setTcpNoDelay", None)
    if nodelay is not None:
        nodelay(True)
    return host.encode("ascii"), peer


LAST_CHUNK = b"0\r\n\r\n"


def first_upstream_write(head, buffered, chunked, complete):
    """What goes to the upstream first: the request head, the body bytes that arrived before
    the connection was ready (re-framed as chunks when the request is chunked) and, for a
    complete chunked body, the last chunk."""
    data = [head]
    if buffered:
        if chunked:
            for piece in buffered:
                data += (b"%x\r\n" % len(piece), piece, b"\r\n")
        else:
            data += buffered
    if complete and chunked:
        data.append(LAST_CHUNK)
    return data
