"""Let's Encrypt (any ACME directory) through the certbot CLI, HTTP-01 through the engine.

`issue(cert_id)` runs `certbot certonly --manual` as a subprocess with our hooks
(`manage.py acmehook auth|cleanup`): the auth hook stores an `AcmeChallenge` row (the
commit bumps the revision, so every engine node answers the token within moments) and
waits until the local engine serves it; the cleanup hook deletes the row. On success the
PEMs certbot wrote are read into the `Certificate` (leaf, chain, key), whose save bumps
the revision again so every engine node serves the new certificate.

On failure the certificate gets certbot's own reason in words (`failure_reason()`): the
ACME server's problem detail, never just "Internal Error". A certificate that is still
valid keeps being served (status stays "valid"); otherwise its status becomes "error".

`renew_due(now)` re-issues every ACME certificate that expires within `RENEW_BEFORE`.

Progress (`Certificate.progress`) is written with `update()`, which does not bump the
revision: queued -> validating -> issued | failed.

DNS-01 (`certificate.challenge == "dns"`, the only way to get wildcard names): certbot runs
its DNS plugin for the certificate's `DnsProvider` (`--dns-cloudflare` or `--dns-rfc2136`)
with the credentials in a 0600 file inside a fresh 0700 directory under the certbot dir,
removed as soon as certbot returns, whatever happened (`dns.credentials_file`).

Keys: certbot writes them under $GATEHOUSE_DATA_DIR/certbot (0700); they are read into
the database and never logged.
"""
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from manager.lib.validators import Invalid, certificate_names, certificate_with_key

from . import dns
from .models import Certificate

log = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(days=30)
CERTBOT_TIMEOUT = 600         # seconds for one whole certbot run
KEY_TYPE = ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]

_HINTS = {
    "connection": "is port 80 of this proxy reachable from the internet under that name?",
    "dns": "does the name exist in public DNS and point at this proxy?",
    "unauthorized": "the answer the ACME server got was not ours: does the name point at this proxy "
                    "(and not at another server or a router's page)?",
    "caa": "a CAA DNS record forbids this certificate authority for the name.",
    "rateLimited": "the certificate authority's rate limit was hit: wait before trying again.",
    "rejectedIdentifier": "the certificate authority refuses to issue for this name.",
}
# The same problem types mean something else when the ACME server looked up a TXT record.
_DNS_HINTS = {
    **_HINTS,
    "connection": "the ACME server could not reach the name servers of the zone: are they up and public?",
    "dns": "the ACME server found no TXT record _acme-challenge.<name>: does the DNS provider serve that "
           "zone, and did the record reach every name server (raise the provider's propagation seconds)?",
    "unauthorized": "the ACME server did not find the TXT record certbot set: is this DNS provider the one "
                    "serving the zone to the world (its public name servers), and did the record reach every "
                    "name server (raise the provider's propagation seconds)?",
}


class AcmeError(Exception):
    """An issuance that failed; the message is for the user."""


def certbot_dir():
    return Path(settings.DATA_DIR) / "certbot"


def lineage_name(certificate):
    """The certbot lineage (cert-name) of a certificate: its id, so renaming it is harmless."""
    return f"gatehouse-{certificate.pk}"


def certbot_executable():
    sibling = Path(sys.executable).parent / "certbot"
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("certbot")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())"]


def hook_command(action):
    return shlex.join([sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "acmehook", action])


def check_domains(domains, challenge="http"):
    """Refuse what the challenge cannot validate; returns the domains as a list."""
    if not domains:
        raise AcmeError("the certificate has no domain names")
    wildcards = [d for d in domains if d.startswith("*.")]
    if wildcards and challenge != "dns":
        raise AcmeError(f"{', '.join(wildcards)}: wildcard names can only be validated with DNS-01: choose the "
                        "DNS-01 challenge and a DNS provider (HTTP-01 cannot prove control of a whole zone)")
    return list(domains)


def check_certificate(certificate):
    """check_domains, and a DNS-01 certificate has a usable DNS provider."""
    check_domains(certificate.domains, certificate.challenge)
    if certificate.challenge == "dns":
        provider = certificate.dns_provider
        if provider is None:
            raise AcmeError("DNS-01 needs a DNS provider: add one under Certificates > DNS providers and "
                            "choose it for this certificate")
        try:
            dns.credentials_text(provider)
        except ValueError as exc:
            raise AcmeError(f"DNS provider {provider.name}: {exc}") from None


def certbot_arguments(certificate, config, base, credentials=None):
    """The certbot command line for one issuance (a list; no secrets in it: a DNS-01 run
    gets the path of its credentials file)."""
    args = certbot_executable() + [
        "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
        "--server", config.acme_directory,
        "--config-dir", str(base / "config"), "--work-dir", str(base / "work"), "--logs-dir", str(base / "logs"),
        "--max-log-backups", "20",
        "--cert-name", lineage_name(certificate), "--force-renewal",
        *KEY_TYPE,
    ]
    if certificate.challenge == "dns":
        provider = certificate.dns_provider
        plugin = dns.plugin(provider.kind)
        args += [f"--{plugin}", f"--{plugin}-credentials", str(credentials),
                 f"--{plugin}-propagation-seconds", str(provider.propagation_seconds),
                 "--preferred-challenges", "dns"]
    else:
        args += ["--manual", "--preferred-challenges", "http",
                 "--manual-auth-hook", hook_command("auth"), "--manual-cleanup-hook", hook_command("cleanup")]
    args += ["-m", config.acme_email] if config.acme_email else ["--register-unsafely-without-email"]
    for domain in certificate.domains:
        args += ["-d", domain]
    return args


def credentials(certificate, base):
    """A context giving the DNS-01 credentials file's path (None for HTTP-01)."""
    if certificate.challenge != "dns":
        return nullcontext(None)
    return dns.credentials_file(certificate.dns_provider, base)


def certbot_environment(certificate, config):
    env = {**os.environ, "GATEHOUSE_CERTIFICATE_ID": str(certificate.pk)}
    if config.acme_ca_bundle:
        env["REQUESTS_CA_BUNDLE"] = config.acme_ca_bundle
    return env


def failure_reason(output, challenge="http"):
    """certbot's own reason for a failed run, in words a user can act on."""
    problems = []
    current = {}
    for line in output.splitlines():
        stripped = line.strip()
        for label, field in (("Identifier", "Domain"), ("Domain", "Domain"), ("Type", "Type"), ("Detail", "Detail")):
            if stripped.startswith(label + ":"):
                current[field] = stripped[len(label) + 1:].strip()
                if field == "Detail":
                    problems.append(current)
                    current = {}
    if problems:
        hints = _DNS_HINTS if challenge == "dns" else _HINTS
        return "\n".join(_problem(p.get("Domain", "the name"), p.get("Type", ""), p["Detail"], hints) for p in problems)
    plugin = _dns_plugin_failure(output)
    if plugin:
        return plugin
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    noise = ("Saving debug log", "Ask for help", "See the logfile", "Some challenges have failed",
             "Requesting a certificate", "Missing command line flag", "Certbot failed to authenticate")
    useful = [line for line in lines if not line.startswith(noise)]
    for marker in ("An unexpected error occurred:", "Error:"):
        for i, line in enumerate(useful):
            if line.startswith(marker):
                rest = line[len(marker):].strip() or " ".join(useful[i + 1:i + 3])
                return f"certbot: {_readable(rest)}"
    return "certbot: " + (_readable(" ".join(useful[-3:])) if useful else "failed without saying why")


# "Get "URL": dial tcp ...: connection refused" (pebble) or "IP: Fetching URL: Connection refused" (Boulder)
_FETCH = re.compile(r'^(?:Get "(?P<get>[^"]+)"|(?:\S+: )?Fetching (?P<fetch>\S+?)):\s*(?P<cause>.*)$')


def _problem(domain, kind, detail, hints=_HINTS):
    """One ACME problem (from certbot's report) as a sentence with a hint."""
    fetch = _FETCH.match(detail)
    if fetch:
        url = fetch.group("get") or fetch.group("fetch")
        text = f"{domain}: the ACME server could not reach {url}: {fetch.group('cause')}"
    elif hints is _DNS_HINTS:
        record = "_acme-challenge." + domain.removeprefix("*.")
        text = f"{domain}: the ACME server could not validate the TXT record {record}" + \
            (f" ({kind})" if kind else "") + f": {detail}"
    else:
        text = f"{domain}: the ACME server could not validate the name" + (f" ({kind})" if kind else "") + f": {detail}"
    hint = hints.get(kind)
    return text + (f" - {hint}" if hint else "")


_TSIG_REFUSED = re.compile(r"didn't like the signature|BADSIG|BADKEY|BADTIME|NOTAUTH|REFUSED|NOTZONE|"
                           r"Received response from server", re.I)


def _dns_plugin_failure(output):
    """A certbot DNS plugin's failure (before the ACME server validated anything) in words."""
    match = re.search(r"Encountered error adding TXT record: (.+)", output) or \
        re.search(r"(Received response from server: .+)", output)
    if match:
        cause = match.group(1).strip()
        if _TSIG_REFUSED.search(cause):
            return ("the DNS server refused to add the TXT record (TSIG update refused: are the key name, secret "
                    "and algorithm the same as in the server's configuration, and may that key update the "
                    f"zone?): {cause}")
        return f"the DNS server could not be reached to add the TXT record (check its address and port): {cause}"
    match = re.search(r"Unable to determine base domain for (\S+) using names: (.+?)\.?$", output, re.M)
    if match:
        name = match.group(1).removeprefix("_acme-challenge.")
        tried = ", ".join(re.findall(r"'([^']+)'", match.group(2))) or match.group(2)
        return (f"{name}: the DNS server has no zone for this name (no SOA record for any of {tried}): "
                "is it the primary server of the name's zone?")
    match = re.search(r"Error determining zone_id: (.+)", output)
    if match or re.search(r"valid Cloudflare API credentials|Cloudflare Token has access", output):
        return ("Cloudflare refused the API token (authentication error): check the token and that it has the "
                "Zone:DNS:Edit permission for this zone: " + (match.group(1).strip() if match else _last_lines(output)))
    match = re.search(r"(Unable to determine zone_id for \S+ using zone names: .+)", output)
    if match:
        return "Cloudflare has no zone for this name that the API token can see: " + match.group(1).strip()
    match = re.search(r"Network error (?:communicating with|contacting) the Cloudflare API.*", output)
    if match:
        return "Cloudflare's API could not be reached: " + match.group(0).strip()
    return None


def _last_lines(output):
    return " ".join(line.strip() for line in output.splitlines()[-3:] if line.strip())


def _readable(text):
    """certbot's wording of a few frequent transport errors, made plain."""
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ("the ACME server's API certificate is not trusted (for a private ACME server such as "
                "pebble or step-ca, set settings.acme.ca_bundle to its CA's PEM file): " + text)
    if re.search(r"Max retries exceeded|Failed to establish a new connection|Connection refused", text):
        return "the ACME directory could not be reached: " + text
    return text


def set_progress(cert_id, progress):
    Certificate.objects.filter(pk=cert_id).update(progress=progress)


def issue(cert_id, report=None):
    """Request the certificate `cert_id` now; returns it with its new state. `report(text)`
    receives progress lines (the foreground command prints them)."""
    from manager.hosts.models import Settings

    report = report or (lambda text: None)
    certificate = Certificate.objects.select_related("dns_provider").get(pk=cert_id)
    config = Settings.current()
    set_progress(cert_id, "validating")
    how = f" (DNS-01 through {certificate.dns_provider})" if certificate.challenge == "dns" else ""
    report(f"validating {', '.join(certificate.domains)} with {config.acme_directory}{how}")
    try:
        check_certificate(certificate)
        base = certbot_dir()
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        with credentials(certificate, base) as credentials_path:
            try:
                result = subprocess.run(
                    certbot_arguments(certificate, config, base, credentials_path),
                    env=certbot_environment(certificate, config),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    timeout=CERTBOT_TIMEOUT, text=True)
            except subprocess.TimeoutExpired:
                raise AcmeError(f"certbot did not finish within {CERTBOT_TIMEOUT} s") from None
        if result.returncode != 0:
            log.info("certbot failed for certificate %s:\n%s", certificate.name, result.stdout)
            raise AcmeError(failure_reason(result.stdout, certificate.challenge))
        store_lineage(certificate, base / "config" / "live" / lineage_name(certificate))
    except AcmeError as exc:
        record_failure(certificate, str(exc))
        report(f"failed: {exc}")
        return certificate
    report(f"issued, expires {certificate.expires_at:%Y-%m-%d %H:%M} UTC")
    return certificate


def store_lineage(certificate, live):
    """Read certbot's fullchain/privkey into the certificate and save it (bumps the revision)."""
    try:
        fullchain = (live / "fullchain.pem").read_text()
        key_pem = (live / "privkey.pem").read_text()
    except OSError as exc:
        raise AcmeError(f"certbot succeeded but its certificate files cannot be read: {exc}") from None
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", fullchain, re.S)
    try:
        leaf = certificate_with_key(fullchain, key_pem)
    except Invalid as exc:
        raise AcmeError(f"certbot wrote an unusable certificate: {exc}") from None
    certificate.certificate_pem = blocks[0]
    certificate.chain_pem = "".join(blocks[1:])
    certificate.key_pem = key_pem
    certificate.domains = certificate_names(leaf)
    certificate.expires_at = leaf.not_valid_after_utc
    certificate.status = "valid"
    certificate.last_error = ""
    certificate.progress = "issued"
    certificate.save()


def record_failure(certificate, reason):
    """Keep serving a certificate that is still valid; otherwise mark it failed."""
    still_valid = certificate.usable and certificate.expires_at and certificate.expires_at > timezone.now()
    certificate.status = "valid" if still_valid else "error"
    certificate.last_error = reason
    certificate.progress = "failed"
    certificate.save(update_fields=["status", "last_error", "progress", "updated_at"])


def due_for_renewal(now=None):
    now = now or timezone.now()
    return Certificate.objects.filter(provider="letsencrypt", expires_at__isnull=False,
                                      expires_at__lte=now + RENEW_BEFORE).exclude(certificate_pem="")


def renew_due(now=None, report=None):
    """Renew every ACME certificate expiring within RENEW_BEFORE; mark expired ones.
    Returns {certificate name: progress}."""
    now = now or timezone.now()
    results = {}
    for certificate in due_for_renewal(now):
        results[certificate.name] = issue(certificate.pk, report=report).progress
    for certificate in Certificate.objects.filter(status="valid", expires_at__lte=timezone.now()):
        certificate.status = "expired"
        certificate.save(update_fields=["status", "updated_at"])
    return results
