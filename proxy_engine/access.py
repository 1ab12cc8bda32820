"""Access control: one `AccessPolicy` per access list, built once per snapshot (routing.py).

A proxy host without an access list has no policy at all (its route's `access` is None), so
it pays nothing per request. With one, `check(peer, trusted, headers, resume)` decides:

- IP rules (`snapshot.AccessRule`, IPv4/IPv6 networks or `all`): the first matching rule
  wins; when the list has rules and none matches, the address is denied. The address is the
  peer's, or, when the peer is a trusted proxy, the first address from the right of
  X-Forwarded-For that is not a trusted proxy (unparsable entries stop the walk).
- Basic auth against Django password hashes (pbkdf2_sha256 and pbkdf2_sha1, verified here
  without Django, in a thread so the reactor never hashes). A verified (or refused)
  credential is remembered in a small bounded cache keyed by the SHA-256 of the credential
  token (no plain password is kept); the cache belongs to the policy, so it goes with the
  snapshot. Concurrent checks of one credential wait for one verification. A hash in an
  unsupported format refuses its user (401) and is logged once.
- satisfy "any": an allowed address or a valid login; "all": both (403 for the address,
  401 for the login). An access list with neither rules nor users lets no one in (403).

`check` returns ALLOWED, UNAUTHORIZED (401), FORBIDDEN (403), or PENDING: a verification is
running and `resume(ALLOWED | UNAUTHORIZED)` will be called later on the reactor thread.
"""
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging

from twisted.internet import threads

log = logging.getLogger(__name__)

ALLOWED = 0
UNAUTHORIZED = 401
FORBIDDEN = 403
PENDING = -1
CACHE_SIZE = 1024
_ALGORITHMS = {"pbkdf2_sha256": "sha256", "pbkdf2_sha1": "sha1"}


class PasswordHash:
    """A Django password hash parsed once: `digest` is None when its format is unsupported."""
    __slots__ = ("algorithm", "iterations", "salt", "digest", "logged")

    def __init__(self, encoded):
        self.algorithm = self.iterations = self.salt = self.digest = None
        self.logged = False
        parts = encoded.split("$")
        if len(parts) == 4 and parts[0] in _ALGORITHMS:
            try:
                iterations = int(parts[1])
                digest = base64.b64decode(parts[3], validate=True)
            except (ValueError, binascii.Error):
                return
            if iterations > 0 and digest:
                self.algorithm = _ALGORITHMS[parts[0]]
                self.iterations = iterations
                self.salt = parts[2].encode("utf-8")
                self.digest = digest

    def __repr__(self):                 # never the hash
        return f"PasswordHash({self.algorithm})"


def verify_password(password, stored):
    """Whether `password` (bytes) matches `stored` (a PasswordHash); hashes, so run it in a thread."""
    if stored.digest is None:
        return False
    computed = hashlib.pbkdf2_hmac(stored.algorithm, password, stored.salt, stored.iterations, len(stored.digest))
    return hmac.compare_digest(computed, stored.digest)


def client_address(peer, trusted, headers, trusts):
    """The client's address: the peer, or through trusted proxies the X-Forwarded-For entry
    nearest the right that is not itself a trusted proxy."""
    if not trusted:
        return peer
    entries = []
    for lname, _, value in headers:
        if lname == b"x-forwarded-for":
            entries += value.split(b",")
    address = peer
    for entry in reversed(entries):
        if not trusts(address):
            break
        try:
            address = ipaddress.ip_address(entry.strip().decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            break
    return address


def strip_authorization(headers):
    """`headers` (triples) without Authorization: what goes upstream when pass_auth is off."""
    return [h for h in headers if h[0] != b"authorization"]


def _realm(name):
    safe = "".join(c for c in name if c.isprintable() and c not in '"\\')
    return b'WWW-Authenticate: Basic realm="%s", charset="UTF-8"\r\n' % (safe or "Restricted").encode("utf-8")


class AccessPolicy:
    __slots__ = ("name", "rules", "users", "satisfy_all", "pass_auth", "challenge", "trusts", "run_in_thread",
                 "cache", "cache_size", "pending", "verifications")

    def __init__(self, access_list, trusts, run_in_thread, cache_size=CACHE_SIZE):
        self.name = access_list.name
        self.rules = tuple((rule.action == "allow", rule.network) for rule in access_list.rules)
        self.users = {user.username.encode("utf-8"): PasswordHash(user.password_hash) for user in access_list.users}
        self.satisfy_all = access_list.satisfy == "all"
        self.pass_auth = access_list.pass_auth
        self.challenge = _realm(access_list.name)      # the WWW-Authenticate line of a 401
        self.trusts = trusts
        self.run_in_thread = run_in_thread or threads.deferToThread
        self.cache = {}              # sha256(credential token) -> verified (bool)
        self.cache_size = cache_size
        self.pending = {}            # sha256(credential token) -> [resume, ...]
        self.verifications = 0       # password hashes started (for the tests)

    def address_allowed(self, address):
        """First matching rule wins; no match (or no address) is a deny."""
        if address is None:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for allow, network in self.rules:
            if network is None or address in network:
                return allow
        return False

    def check(self, peer, trusted, headers, resume):
        """ALLOWED, UNAUTHORIZED, FORBIDDEN or PENDING (see the module doc)."""
        if self.rules:
            if self.address_allowed(client_address(peer, trusted, headers, self.trusts)):
                if not (self.satisfy_all and self.users):
                    return ALLOWED
            elif self.satisfy_all or not self.users:
                return FORBIDDEN
        elif not self.users:
            return FORBIDDEN
        return self.authenticate(headers, resume)

    def authenticate(self, headers, resume):
        value = None
        for lname, _, v in headers:
            if lname == b"authorization":
                value = v
                break
        if value is None or value[:6].lower() != b"basic ":
            return UNAUTHORIZED
        token = value[6:].strip()
        key = hashlib.sha256(token).digest()
        known = self.cache.get(key)
        if known is not None:
            return ALLOWED if known else UNAUTHORIZED
        waiting = self.pending.get(key)
        if waiting is not None:
            waiting.append(resume)
            return PENDING
        try:
            username, colon, password = base64.b64decode(token, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return UNAUTHORIZED
        stored = self.users.get(username) if colon else None
        if stored is None:
            self._remember(key, False)
            return UNAUTHORIZED
        if stored.digest is None:
            if not stored.logged:
                stored.logged = True
                log.warning("access list %r: the password hash of user %r is in an unsupported format "
                            "(only pbkdf2_sha256 and pbkdf2_sha1): that user is refused",
                            self.name, username.decode("utf-8", "replace"))
            return UNAUTHORIZED
        self.pending[key] = waiting = []
        self.verifications += 1
        self.run_in_thread(verify_password, password, stored).addBoth(self._verified, key)
        if key not in self.pending:          # the runner finished at once (not a real thread)
            return ALLOWED if self.cache.get(key) else UNAUTHORIZED
        waiting.append(resume)
        return PENDING

    def _verified(self, result, key):
        ok = result is True
        if not ok and not isinstance(result, bool):
            log.error("access list %r: password verification failed: %s", self.name, result)
        self._remember(key, ok)
        outcome = ALLOWED if ok else UNAUTHORIZED
        for resume in self.pending.pop(key, ()):
            try:
                resume(outcome)
            except Exception:
                log.exception("access list %r: resuming a request failed", self.name)

    def _remember(self, key, ok):
        cache = self.cache
        if len(cache) >= self.cache_size:
            del cache[next(iter(cache))]          # oldest first
        cache[key] = ok
