"""The one set of validation rules for Gatehouse values.

Framework-free: the config import, the Django models and forms, and any API call these
functions. Each parser takes what a user wrote and returns the canonical value, or raises
`Invalid` with a message that names what is wrong. The `format_*` functions turn a
canonical value back into the text a user would write, so export → import → export is
stable.
"""
import ipaddress
import re
import string

import idna
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa


class Invalid(ValueError):
    """A value breaks a validation rule; str() is the message for the user."""


# -- host names ---------------------------------------------------------------------

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def hostname(value, allow_wildcard=True):
    """A DNS name as lower-case ASCII (IDNA), wildcard only as the whole first label."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("domain name must be a non-empty string")
    name = value.strip().rstrip(".").lower()
    wildcard = name.startswith("*.")
    if wildcard:
        if not allow_wildcard:
            raise Invalid(f"wildcard not allowed here: {value!r}")
        name = name[2:]
    if "*" in name:
        raise Invalid(f"invalid domain name {value!r}: a wildcard may only be the whole first label (*.example.test)")
    if _is_ip(name):
        raise Invalid(f"invalid domain name {value!r}: an IP address is not a domain name")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise Invalid(f"invalid domain name {value!r}: {exc}") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or any(not _LABEL.match(label) for label in labels):
        raise Invalid(f"invalid domain name {value!r}")
    if wildcard and len(labels) < 2:
        raise Invalid(f"invalid domain name {value!r}: a wildcard needs at least two labels after it")
    return ("*." if wildcard else "") + ascii_name


def _is_ip(text):
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def upstream_host(value):
    """An upstream address: a host name (no wildcard) or an IPv4/IPv6 address."""
    if not isinstance(value, str) or not value:
        raise Invalid("upstream host must be a non-empty string")
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    return hostname(bare, allow_wildcard=False)


# -- numbers --------------------------------------------------------------------------


def port(value):
    if isinstance(value, bool):
        raise Invalid(f"port {value!r} is not a number")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise Invalid(f"port {value!r} is not a number")
    if not 1 <= value <= 65535:
        raise Invalid(f"port {value} out of range (1-65535)")
    return value


def positive_int(value, what, minimum=1, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{what} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f"-{maximum}" if maximum is not None else " or more"
        raise Invalid(f"{what} {value} out of range ({minimum}{upper})")
    return value


# -- URLs -----------------------------------------------------------------------------

_UPSTREAM_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[^\]]*\]|[^:/?#\[\]@]*)(?::(?P<port>[^/?#]*))?(?P<rest>.*)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def upstream_url(value):
    """'http://10.0.1.10:3000' → ('http', '10.0.1.10', 3000). No path, query or credentials."""
    if not isinstance(value, str):
        raise Invalid(f"upstream URL must be a string, got {value!r}")
    match = _UPSTREAM_URL.match(value.strip())
    if not match:
        raise Invalid(f"upstream URL {value!r} must look like http://host:port")
    if match["rest"].startswith("@") or "@" in (match["port"] or ""):
        raise Invalid(f"upstream URL {value!r}: credentials in the URL are not allowed")
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS:
        raise Invalid(f"upstream URL {value!r}: scheme must be http or https")
    if match["rest"] not in ("", "/"):
        raise Invalid(f"upstream URL {value!r}: no path, query or fragment allowed (use a location)")
    if not match["host"]:
        raise Invalid(f"upstream URL {value!r}: missing host")
    host = upstream_host(match["host"])
    upstream_port = _DEFAULT_PORTS[scheme] if match["port"] in (None, "") else port(match["port"])
    return scheme, host, upstream_port


def format_upstream_url(scheme, host, upstream_port):
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{upstream_port}"


def host_port(value):
    """'10.0.0.5:22' or '[::1]:22' or 'nas.lan:22' → (host, port), for stream upstreams."""
    if not isinstance(value, str) or ":" not in value:
        raise Invalid(f"address {value!r} must look like host:port")
    host, _, port_text = value.strip().rpartition(":")
    return upstream_host(host), port(port_text)


def format_host_port(host, the_port):
    return f"[{host}]:{the_port}" if ":" in host else f"{host}:{the_port}"


def web_url(value):
    """An absolute http(s) URL a browser is sent to (redirect targets)."""
    if not isinstance(value, str) or not value:
        raise Invalid("URL must be a non-empty string")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
        raise Invalid(f"URL {value!r} contains spaces or control characters")
    match = _UPSTREAM_URL.match(value)
    if not match or match["scheme"].lower() not in _DEFAULT_PORTS or not match["host"]:
        raise Invalid(f"URL {value!r} must be an absolute http:// or https:// URL")
    upstream_host(match["host"])
    if match["port"]:
        port(match["port"])
    return value


# -- networks -------------------------------------------------------------------------


def cidr(value):
    """An IPv4/IPv6 address or network, canonical ('10.0.0.0/8', '2001:db8::/32')."""
    if not isinstance(value, str):
        raise Invalid(f"CIDR must be a string, got {value!r}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise Invalid(f"invalid IP address or CIDR {value!r}") from None


def access_source(value):
    """An access-rule source: 'all' or a CIDR."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    return cidr(value)


# -- headers --------------------------------------------------------------------------

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


def header_name(value):
    if not isinstance(value, str) or not value:
        raise Invalid("header name must be a non-empty string")
    bad = [ch for ch in value if ch not in _TOKEN_CHARS]
    if bad:
        raise Invalid(f"invalid header name {value!r}: character {bad[0]!r} not allowed")
    return value


def header_value(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Invalid(f"header value must be a string, got {value!r}")
    for ch in value:
        code = ord(ch)
        if (code < 0x20 and ch != "\t") or code == 0x7F:
            raise Invalid(f"invalid header value {value!r}: control character {ch!r} (CR, LF and other control characters are not allowed)")
        if code > 0xFF:
            raise Invalid(f"invalid header value {value!r}: non-Latin-1 character {ch!r}")
    return value.strip(" \t")


# -- durations and sizes --------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value):
    """'10s', '5m', '1d', '250ms' or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise Invalid(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    else:
        raise Invalid(f"invalid duration {value!r} (use e.g. 500ms, 10s, 5m, 2h, 1d)")
    if seconds < 0:
        raise Invalid(f"invalid duration {value!r}: negative")
    return round(seconds, 3)


def format_duration(seconds):
    millis = round(seconds * 1000)
    for unit in ("w", "d", "h", "m", "s"):
        unit_ms = round(_DURATION_UNITS[unit] * 1000)
        if millis and millis % unit_ms == 0:
            return f"{millis // unit_ms}{unit}"
    return f"{millis}ms"


_SIZE = re.compile(r"^\s*(\d+)\s*(?:([kmg])(?:ib|b)?|b)?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(value):
    """'100m', '512k', '1g' (binary multiples, as nginx; '64MiB' and '64mb' mean the same) or a
    number of bytes → bytes."""
    if isinstance(value, bool):
        raise Invalid(f"invalid size {value!r}")
    if isinstance(value, int):
        total = value
    elif isinstance(value, str) and (match := _SIZE.match(value.lower())):
        total = int(match[1]) * _SIZE_UNITS[match[2] or ""]
    else:
        raise Invalid(f"invalid size {value!r} (use e.g. 512k, 100m, 1g)")
    if total < 0:
        raise Invalid(f"invalid size {value!r}: negative")
    return total


def format_size(total):
    for unit in ("g", "m", "k"):
        if total and total % _SIZE_UNITS[unit] == 0:
            return f"{total // _SIZE_UNITS[unit]}{unit}"
    return str(total)


# -- PEM ------------------------------------------------------------------------------


def certificate_chain(pem):
    """Parse one or more PEM certificates; returns the list of x509 objects."""
    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
        raise Invalid("not a PEM certificate (expected -----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise Invalid(f"certificate PEM does not parse: {exc}") from None


def private_key(pem):
    if not isinstance(pem, str) or "PRIVATE KEY-----" not in pem:
        raise Invalid("not a PEM private key (expected -----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise Invalid(f"private key PEM does not parse (encrypted keys are not supported): {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise Invalid("private key type not supported (use RSA or ECDSA)")
    return key


def certificate_with_key(certificate_pem, key_pem):
    """Both parse and the key belongs to the leaf certificate; returns the leaf x509."""
    leaf = certificate_chain(certificate_pem)[0]
    key = private_key(key_pem)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if leaf.public_key().public_bytes(encoding, public) != key.public_key().public_bytes(encoding, public):
        raise Invalid("the private key does not match the certificate")
    return leaf


def certificate_names(leaf):
    """The DNS names a certificate covers (SAN, else CN)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [attr.value.lower() for attr in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def name_covered(name, certificate_names_):
    """Whether a certificate for `certificate_names_` is valid for `name` (RFC 6125: a
    wildcard covers exactly one label; a wildcard name needs the same wildcard)."""
    if name in certificate_names_:
        return True
    first, _, rest = name.partition(".")
    return first != "*" and bool(rest) and f"*.{rest}" in certificate_names_
