"""DNS-01 credentials reach certbot in a private file that is gone afterwards; the certbot
arguments per plugin; DNS failures in words. Cloudflare's API cannot be reached from the test
machines: for Cloudflare only the arguments and credentials file Gatehouse produces are checked
(RFC 2136 runs for real in tests/e2e/test_acme_dns.py)."""
import logging
import stat
import subprocess

import pytest

from manager.certificates import acme, dns
from manager.certificates.models import Certificate, DnsProvider
from manager.hosts.models import Settings

TOKEN = "cf-Token_0123456789abcdefghijklmnopqrstuv"
SECRET = "c2VjcmV0LXRzaWcta2V5LWZvci1nYXRlaG91c2UtdGVzdHM="


def cloudflare(**fields):
    return DnsProvider(name="cf", kind="cloudflare", **{"api_token": TOKEN, "propagation_seconds": 10, **fields})


def rfc2136(**fields):
    values = {"server": "192.0.2.53", "port": 5353, "key_name": "gatehouse-key.", "key_secret": SECRET,
              "algorithm": "hmac-sha512", "propagation_seconds": 2, **fields}
    return DnsProvider(name="bind", kind="rfc2136", **values)


def test_credentials_files_hold_the_plugin_keys_mode_0600_in_a_0700_dir_removed_afterwards(tmp_path):
    with dns.credentials_file(cloudflare(), tmp_path) as path:
        assert path.read_text() == f"dns_cloudflare_api_token = {TOKEN}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.parent.parent == tmp_path
    assert not path.exists() and not path.parent.exists()

    with dns.credentials_file(rfc2136(), tmp_path) as path:
        assert path.read_text() == (
            "dns_rfc2136_server = 192.0.2.53\ndns_rfc2136_port = 5353\ndns_rfc2136_name = gatehouse-key.\n"
            f"dns_rfc2136_secret = {SECRET}\ndns_rfc2136_algorithm = HMAC-SHA512\n")
    assert list(tmp_path.iterdir()) == []


def test_the_credentials_file_is_removed_when_certbot_fails_or_times_out(tmp_path):
    with pytest.raises(RuntimeError):
        with dns.credentials_file(rfc2136(), tmp_path) as path:
            raise RuntimeError("certbot crashed")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_value_that_would_inject_a_line_is_refused_before_any_file_is_written(tmp_path):
    with pytest.raises(ValueError, match="API token"):
        with dns.credentials_file(cloudflare(api_token=TOKEN + "\ndns_cloudflare_email = x"), tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_stale_credential_dirs_of_a_killed_run_are_removed(tmp_path):
    import os
    stale = tmp_path / (dns.TEMP_PREFIX + "old")
    stale.mkdir()
    os.utime(stale, (0, 0))
    with dns.credentials_file(cloudflare(), tmp_path) as path:
        assert not stale.exists() and path.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("provider, plugin", [(cloudflare, "dns-cloudflare"), (rfc2136, "dns-rfc2136")])
def test_certbot_arguments_for_dns_01(tmp_path, provider, plugin):
    saved = provider()
    saved.save()
    certificate = Certificate.objects.create(name="wild", domains=["*.example.test", "example.test"],
                                             challenge="dns", dns_provider=saved)
    args = acme.certbot_arguments(certificate, Settings.load(), tmp_path, tmp_path / "creds.ini")
    assert args[args.index(f"--{plugin}-credentials") + 1] == str(tmp_path / "creds.ini")
    assert args[args.index(f"--{plugin}-propagation-seconds") + 1] == str(saved.propagation_seconds)
    assert f"--{plugin}" in args and "--manual" not in args and "--manual-auth-hook" not in args
    assert args[args.index("--preferred-challenges") + 1] == "dns"
    assert "-d *.example.test -d example.test" in " ".join(args)
    assert TOKEN not in " ".join(args) and SECRET not in " ".join(args)


@pytest.mark.django_db
def test_issue_hands_certbot_the_cloudflare_file_and_removes_it(tmp_path, settings, monkeypatch, caplog):
    settings.DATA_DIR = tmp_path
    provider = cloudflare()
    provider.save()
    certificate = Certificate.objects.create(name="wild", domains=["*.example.test"], challenge="dns",
                                             dns_provider=provider)
    seen = {}

    def fake_run(args, **kwargs):
        path = args[args.index("--dns-cloudflare-credentials") + 1]
        seen["path"], seen["text"] = path, open(path).read()
        seen["mode"] = stat.S_IMODE(__import__("os").stat(path).st_mode)
        return subprocess.CompletedProcess(args, 1, stdout=CLOUDFLARE_AUTH_FAILURE)

    monkeypatch.setattr(acme.subprocess, "run", fake_run)
    with caplog.at_level(logging.DEBUG):
        certificate = acme.issue(certificate.pk)
    assert seen["text"] == f"dns_cloudflare_api_token = {TOKEN}\n" and seen["mode"] == 0o600
    assert not __import__("os").path.exists(seen["path"])
    assert certificate.progress == "failed"
    assert certificate.last_error.startswith("Cloudflare refused the API token (authentication error)")
    assert TOKEN not in caplog.text


@pytest.mark.django_db
def test_a_dns_certificate_without_provider_or_a_wildcard_over_http_is_refused():
    with pytest.raises(acme.AcmeError, match="only be validated with DNS-01"):
        acme.check_certificate(Certificate(name="w", domains=["*.example.test"]))
    with pytest.raises(acme.AcmeError, match="DNS-01 needs a DNS provider"):
        acme.check_certificate(Certificate(name="w", domains=["*.example.test"], challenge="dns"))
    assert acme.check_domains(["*.example.test"], "dns") == ["*.example.test"]


CLOUDFLARE_AUTH_FAILURE = """Saving debug log to /var/log/letsencrypt/letsencrypt.log
Requesting a certificate for *.example.test
Encountered exception during recovery: certbot.errors.PluginError: Error determining zone_id: 9109 Invalid access token. Please confirm that you have supplied valid Cloudflare API credentials. (Did you enter a valid Cloudflare Token?)
Error determining zone_id: 9109 Invalid access token. Please confirm that you have supplied valid Cloudflare API credentials. (Did you enter a valid Cloudflare Token?)
Ask for help or search for solutions at https://community.letsencrypt.org.
"""

TSIG_REFUSED = """Requesting a certificate for app.example.test
Encountered error adding TXT record: Received response from server: NOTAUTH
"""

NXDOMAIN = """Certbot failed to authenticate some domains (authenticator: dns-rfc2136). The Certificate Authority reported these problems:
  Identifier: *.example.test
  Type:   dns
  Detail: During secondary validation: DNS problem: NXDOMAIN looking up TXT for _acme-challenge.example.test - check that a DNS record exists for this domain

Hint: The Certificate Authority failed to verify the DNS TXT records created by --dns-rfc2136.
"""


def test_dns_failures_in_words():
    assert acme.failure_reason(TSIG_REFUSED, "dns").startswith(
        "the DNS server refused to add the TXT record (TSIG update refused")
    reason = acme.failure_reason(NXDOMAIN, "dns")
    assert reason.startswith("*.example.test: the ACME server could not validate the TXT record "
                             "_acme-challenge.example.test (dns): During secondary validation: DNS problem: NXDOMAIN")
    assert "propagation seconds" in reason
    assert "Cloudflare refused the API token" in acme.failure_reason(CLOUDFLARE_AUTH_FAILURE, "dns")
    assert "Cloudflare's API could not be reached" in acme.failure_reason(
        "Network error communicating with the Cloudflare API: timed out\n", "dns")
