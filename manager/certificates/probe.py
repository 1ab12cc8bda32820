"""Reachability check before requesting a certificate: would an ACME server's HTTP-01
validation reach this proxy for a name?

`check(domain)` publishes a one-off probe token (every engine node serves it, as for a real
challenge), waits until the local engine answers it, then fetches
`http://<domain>:<public port>/.well-known/acme-challenge/<token>` the way the ACME server
would: the name resolved through DNS, the request sent to the address it resolves to. The
answer says, in words, what a validation would meet. Bounded by timeouts (a few seconds).
"""
import http.client
import secrets
import socket
from dataclasses import dataclass

from django.conf import settings

from .challenge import CHALLENGE_PATH, publish, wait_until_served, withdraw


@dataclass(frozen=True)
class ProbeResult:
    domain: str
    ok: bool
    message: str


def check(domain, timeout=5.0):
    port = settings.PUBLIC_HTTP_PORT
    url = f"http://{domain}{'' if port == 80 else f':{port}'}{CHALLENGE_PATH}…"
    if domain.startswith("*."):
        return ProbeResult(domain, False, "a wildcard name cannot be checked over HTTP (it needs DNS-01)")
    token = "gatehouse-probe-" + secrets.token_urlsafe(16)
    answer = secrets.token_urlsafe(24)
    publish(domain, token, answer)
    try:
        if not wait_until_served(domain, token, answer, timeout=timeout):
            return ProbeResult(domain, False, f"the engine on this machine (port {settings.HTTP_PORT}) does not answer "
                                              "challenges: is it running?")
        try:
            addresses = sorted({info[4][0] for info in socket.getaddrinfo(domain, port, type=socket.SOCK_STREAM)})
        except socket.gaierror as exc:
            return ProbeResult(domain, False, f"{domain} does not resolve in DNS ({exc.strerror}): "
                                              "the ACME server could not find this proxy")
        conn = http.client.HTTPConnection(addresses[0], port, timeout=timeout)
        try:
            conn.request("GET", CHALLENGE_PATH + token, headers={"Host": domain})
            response = conn.getresponse()
            body = response.read(4096).decode("utf-8", "replace")
        except ConnectionRefusedError:
            return ProbeResult(domain, False, f"{url} ({addresses[0]}): connection refused")
        except (TimeoutError, socket.timeout):
            return ProbeResult(domain, False, f"{url} ({addresses[0]}): timed out (a firewall or missing port forward?)")
        except OSError as exc:
            return ProbeResult(domain, False, f"{url} ({addresses[0]}): {exc.strerror or exc}")
        finally:
            conn.close()
        if response.status == 200 and body == answer:
            return ProbeResult(domain, True, f"{url} reaches this proxy ({', '.join(addresses)})")
        return ProbeResult(domain, False, f"{url} ({addresses[0]}) was answered by something else "
                                          f"(HTTP {response.status}): does the name point at this proxy?")
    finally:
        withdraw(token)
