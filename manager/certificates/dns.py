"""DNS-01 credentials: their rules, and the private file certbot's DNS plugin reads.

One set of rules (`check_provider`) serves the dashboard form and the config document.
`credentials_file(provider, parent)` writes the plugin's credentials into a fresh 0700
directory under `parent` (the certbot dir, under $GATEHOUSE_DATA_DIR) as a 0600 file and
removes both when the block ends, whatever happens inside it. Secrets are never logged.
"""
import ipaddress
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

KINDS = ("cloudflare", "rfc2136")
ALGORITHMS = ("hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5")
# Per kind: the fields it needs (secrets included) and its secret fields.
REQUIRED = {"cloudflare": ("api_token",), "rfc2136": ("server", "key_name", "key_secret")}
SECRETS = {"cloudflare": ("api_token",), "rfc2136": ("key_secret",)}
MAX_PROPAGATION = 3600
TEMP_PREFIX = "dns-credentials-"

_TOKEN = re.compile(r"^[A-Za-z0-9_\-.]{10,200}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_KEY_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?)*\.?$")


def plugin(kind):
    """certbot's plugin name for a provider kind."""
    return f"dns-{kind}"


def check_field(kind, field, value):
    """The canonical value of one field of a provider of `kind`, or raise ValueError(reason).
    A reason never repeats a secret."""
    if field == "api_token":
        value = value.strip()
        if not _TOKEN.match(value):
            raise ValueError("a Cloudflare API token is 10-200 letters, digits, '-', '_' or '.' "
                             "(create one with the Zone:DNS:Edit permission)")
        return value
    if field == "server":
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value.strip()!r} is not an IP address: certbot's RFC 2136 plugin needs the "
                             "DNS server's IPv4 or IPv6 address, not a host name") from None
    if field == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ValueError(f"port {value!r} out of range (1-65535)")
        return value
    if field == "key_name":
        value = value.strip()
        if not _KEY_NAME.match(value):
            raise ValueError(f"{value!r} is not a TSIG key name (a DNS name such as gatehouse-key or gatehouse.)")
        return value
    if field == "key_secret":
        value = "".join(value.split())
        if not _BASE64.match(value) or len(value) % 4:
            raise ValueError("a TSIG secret is base64 text (the secret line of `tsig-keygen`'s output)")
        return value
    if field == "algorithm":
        value = value.strip().lower()
        if value not in ALGORITHMS:
            raise ValueError(f"unknown TSIG algorithm {value!r} (one of {', '.join(ALGORITHMS)})")
        return value
    if field == "propagation_seconds":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PROPAGATION:
            raise ValueError(f"propagation seconds {value!r} out of range (0-{MAX_PROPAGATION})")
        return value
    raise ValueError(f"unknown field {field}")


def credentials_text(provider):
    """The plugin's credentials file (INI lines, as certbot's DNS plugins read them)."""
    kind = provider.kind
    if kind == "cloudflare":
        values = {"dns_cloudflare_api_token": check_field(kind, "api_token", provider.api_token)}
    elif kind == "rfc2136":
        values = {
            "dns_rfc2136_server": check_field(kind, "server", provider.server),
            "dns_rfc2136_port": str(check_field(kind, "port", provider.port)),
            "dns_rfc2136_name": check_field(kind, "key_name", provider.key_name),
            "dns_rfc2136_secret": check_field(kind, "key_secret", provider.key_secret),
            "dns_rfc2136_algorithm": check_field(kind, "algorithm", provider.algorithm).upper(),
        }
    else:
        raise ValueError(f"unknown DNS provider kind {kind!r}")
    return "".join(f"{key} = {value}\n" for key, value in values.items())


@contextmanager
def credentials_file(provider, parent):
    """Yield the path of a 0600 file holding `provider`'s credentials, in a fresh 0700
    directory under `parent`; both are removed afterwards, even on error."""
    parent = Path(parent)
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale(parent)
    directory = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))   # mode 0700
    try:
        path = directory / "credentials.ini"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "w", encoding="ascii") as out:
            out.write(credentials_text(provider))
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def remove_stale(parent, older_than=3600):
    """Credential directories left by a process that was killed (an hour old: no certbot
    run lasts that long)."""
    limit = time.time() - older_than
    for directory in Path(parent).glob(TEMP_PREFIX + "*"):
        try:
            if directory.stat().st_mtime < limit:
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            pass
