""""Test upstream": reach a proxy host's upstreams as the engine would, from the manager's
process, and say in words what a request through the engine would meet.

For each upstream: resolve the name, connect over TCP (the host's connect timeout, capped),
for https do the TLS handshake with the host's settings (SNI = the upstream's name; its CA
bundle or the system's; no verification when `verify` is off), send `GET / HTTP/1.1` with
the host's first domain and read the status line (the response timeout, capped). Each
failure is explained with the status and cause the engine's error page would show
(`proxy_engine.errors`). The manager usually runs next to the engine, so what it reaches is
what the engine reaches; this is stated on the page.
"""
import socket
import ssl
import time
from dataclasses import dataclass

MAX_CONNECT_TIMEOUT = 5.0
MAX_RESPONSE_TIMEOUT = 10.0


@dataclass
class ProbeResult:
    upstream: str            # scheme://host:port as configured
    address: str             # ip:port that was tried ("" when the name did not resolve)
    ok: bool
    status: int | None       # the upstream's status when ok, else what the engine would answer
    summary: str             # one sentence for the page
    detail: str = ""         # the underlying error
    elapsed_ms: int = 0


def _address(sockaddr):
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_context(verify, ca_pem):
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return ssl.create_default_context()


def _failure(upstream, address, status, summary, detail, started):
    return ProbeResult(upstream, address, False, status, summary, detail,
                       int((time.monotonic() - started) * 1000))


def probe(upstream, domain, connect_timeout=5.0, response_timeout=10.0):
    """Probe one upstream (the engine's canonical dict: scheme, host, port, verify, ca_pem)."""
    scheme, host, port = upstream.get("scheme", "http"), upstream["host"], int(upstream["port"])
    label = f"{scheme}://{host}:{port}"
    connect_timeout = min(float(connect_timeout or MAX_CONNECT_TIMEOUT), MAX_CONNECT_TIMEOUT)
    response_timeout = min(float(response_timeout or MAX_RESPONSE_TIMEOUT), MAX_RESPONSE_TIMEOUT)
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return _failure(label, "", 502, f"the engine would answer 502: the upstream host name {host} was not found",
                        str(exc), started)
    family, kind, proto, _, sockaddr = infos[0]
    address = _address(sockaddr)
    sock = socket.socket(family, kind, proto)
    sock.settimeout(connect_timeout)
    try:
        try:
            sock.connect(sockaddr)
        except ConnectionRefusedError as exc:
            return _failure(label, address, 502, f"the engine would answer 502: connection refused by {address}",
                            str(exc), started)
        except (socket.timeout, TimeoutError) as exc:
            return _failure(label, address, 504,
                            f"the engine would answer 504: connecting to {address} timed out after "
                            f"{connect_timeout:g} s", str(exc) or "timed out", started)
        except OSError as exc:
            return _failure(label, address, 502, f"the engine would answer 502: {address} is unreachable "
                            f"({exc.strerror or exc})", str(exc), started)
        sock.settimeout(response_timeout)
        if scheme == "https":
            try:
                context = _tls_context(upstream.get("verify", True), upstream.get("ca_pem"))
                sock = context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                return _failure(label, address, 502, "the engine would answer 502: TLS handshake with the upstream "
                                f"failed: its certificate was not accepted ({exc.verify_message})", str(exc), started)
            except (ssl.SSLError, ValueError) as exc:
                return _failure(label, address, 502, "the engine would answer 502: TLS handshake with the upstream "
                                f"failed ({getattr(exc, 'reason', None) or exc})", str(exc), started)
            except (socket.timeout, TimeoutError) as exc:
                return _failure(label, address, 504, "the engine would answer 504: the TLS handshake with "
                                f"{address} did not finish within {response_timeout:g} s", str(exc), started)
            except OSError as exc:
                return _failure(label, address, 502, "the engine would answer 502: the upstream service closed "
                                "the connection during the TLS handshake", str(exc), started)
        request = (f"GET / HTTP/1.1\r\nHost: {domain}\r\nUser-Agent: Gatehouse-upstream-test\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii", "replace")
        try:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except (socket.timeout, TimeoutError) as exc:
            return _failure(label, address, 504, f"the engine would answer 504: {address} accepted the connection "
                            f"but sent no answer within {response_timeout:g} s", str(exc) or "timed out", started)
        except OSError as exc:
            return _failure(label, address, 502, f"the engine would answer 502: {address} closed the connection "
                            "without answering", str(exc), started)
    finally:
        sock.close()
    if not head:
        return _failure(label, address, 502, f"the engine would answer 502: {address} closed the connection "
                        "without answering", "empty response", started)
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        return _failure(label, address, 502, f"the engine would answer 502: {address} sent an invalid response "
                        "(not HTTP/1.x)", repr(line[:100]), started)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    elapsed = int((time.monotonic() - started) * 1000)
    return ProbeResult(label, address, True, status,
                       f"reachable: {address} answered {status} {reason}".rstrip() +
                       f" in {elapsed} ms; the engine would pass this answer on", "", elapsed)


def probe_host(host):
    """Probe every upstream of a ProxyHost, in order."""
    domain = host.domains[0] if host.domains else "localhost"
    return [probe(u, domain, host.connect_timeout, host.response_timeout) for u in host.upstreams]
