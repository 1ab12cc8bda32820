"""The HTTP-01 side of issuance, run by certbot's hooks (`manage.py acmehook`).

`publish(...)` stores the token (the commit bumps the revision: every engine node reloads
and answers it) and waits until the local engine actually serves it, so the ACME server
is only asked to validate once the answer is there. `withdraw(token)` removes it.
"""
import http.client
import re
import time

from django.conf import settings

from .models import AcmeChallenge

TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
CHALLENGE_PATH = "/.well-known/acme-challenge/"


class ChallengeError(Exception):
    pass


def publish(domain, token, key_authorization, certificate_id=None):
    if not TOKEN.match(token or ""):
        raise ChallengeError(f"refusing an ACME token that is not base64url: {token[:40]!r}")
    AcmeChallenge.objects.update_or_create(
        token=token, defaults={"key_authorization": key_authorization, "domain": domain,
                               "certificate_id": certificate_id})


def withdraw(token):
    AcmeChallenge.objects.filter(token=token).delete()


def served(domain, token, key_authorization, port=None, timeout=2.0):
    """Whether the engine on 127.0.0.1:`port` answers the token for `domain` right now."""
    conn = http.client.HTTPConnection("127.0.0.1", port or settings.HTTP_PORT, timeout=timeout)
    try:
        conn.request("GET", CHALLENGE_PATH + token, headers={"Host": domain})
        response = conn.getresponse()
        return response.status == 200 and response.read().decode("utf-8", "replace") == key_authorization
    except OSError:
        return False
    finally:
        conn.close()


def wait_until_served(domain, token, key_authorization, port=None, timeout=10.0, clock=time):
    """Poll the local engine until it serves the token; False after `timeout` seconds."""
    deadline = clock.monotonic() + timeout
    while True:
        if served(domain, token, key_authorization, port):
            return True
        if clock.monotonic() >= deadline:
            return False
        clock.sleep(0.05)
