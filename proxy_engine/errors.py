"""Every failure the engine answers for itself, mapped to a status in one place.

Upstream causes are typed (`UpstreamFailure` subclasses) so the mapping never parses
strings: refused/unreachable/reset/DNS/bad response -> 502, timeouts -> 504. Client-side
problems (malformed request, too large) have their own statuses. The answer names the cause
in words, never the upstream address; it is HTML, or JSON when the client prefers JSON.
"""
import json

from twisted.internet import error as terror

from proxy_engine.pages import page

REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 301: b"Moved Permanently",
    302: b"Found", 307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout", 417: b"Expectation Failed", 413: b"Content Too Large",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large", 499: b"Client Closed Request",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


class UpstreamFailure(Exception):
    """Why an upstream exchange failed; `status` and `cause` are what the client sees,
    `detail` (the underlying error, may name addresses) is only recorded for the operator."""
    status = 502
    cause = "the upstream service failed"

    def __init__(self, detail=""):
        super().__init__(detail)
        self.detail = detail or self.cause


class ConnectRefused(UpstreamFailure):
    cause = "connection refused by the upstream service"


class ConnectUnreachable(UpstreamFailure):
    cause = "the upstream service is unreachable"


class NameNotFound(UpstreamFailure):
    cause = "the upstream host name was not found"


class ConnectTimeout(UpstreamFailure):
    status = 504
    cause = "timed out connecting to the upstream service"


class ResponseTimeout(UpstreamFailure):
    status = 504
    cause = "the upstream service timed out"


class UpstreamReset(UpstreamFailure):
    cause = "the upstream service closed the connection"


class BadResponse(UpstreamFailure):
    cause = "the upstream service sent an invalid response"


class TlsHandshakeFailed(UpstreamFailure):
    """The upstream's certificate was not trusted or did not match its name, or the TLS
    handshake failed otherwise; `detail` has OpenSSL's or service-identity's words."""
    cause = "TLS handshake with the upstream failed"


class ClientGone(UpstreamFailure):
    """Not an answer (nobody is left to read it): what a request is recorded as when its
    client closed the connection before the answer was complete."""
    status = 499
    cause = "the client closed the connection before the answer was complete"


def failure_for_connect_error(reason):
    """Map a Twisted connection failure (Failure or exception) to an UpstreamFailure."""
    exc = getattr(reason, "value", reason)
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, terror.TimeoutError):
        return ConnectTimeout(detail)
    if isinstance(exc, terror.ConnectionRefusedError):
        return ConnectRefused(detail)
    if isinstance(exc, terror.DNSLookupError):
        return NameNotFound(detail)
    if isinstance(exc, (terror.NoRouteError, terror.ConnectError)):
        return ConnectUnreachable(detail)
    return UpstreamFailure(detail)


CLIENT_ERRORS = {
    400: "The request was malformed.",
    401: "This site needs a valid user name and password.",
    403: "Access to this site is not allowed from here.",
    413: "The request body is larger than this site accepts.",
    429: "Too many requests from this client: the site's rate limit was reached; retry later.",
    431: "The request headers are too large.",
    417: "Only the 100-continue expectation is supported.",
    505: "This HTTP version is not supported.",
    503: "The proxy is starting and has no configuration yet.",
}

# A 403 of the block-exploits check (proxy_engine.exploits) names its cause in these words.
EXPLOIT_BLOCKED = "The request looks like an attack on the site ({}) and was blocked."


def error_body(status, cause, wants_json, request_id=b""):
    """(content type, body) of an error answer; `request_id` (bytes) is what the dashboard
    looks the error up by."""
    rid = request_id.decode("ascii")
    if wants_json:
        return b"application/json", json.dumps({"status": status, "error": cause, "request_id": rid}).encode()
    title = f"{status} {REASONS.get(status, b'Error').decode()}"
    return b"text/html; charset=utf-8", page(title, cause, f"Request id {rid}" if rid else "")
