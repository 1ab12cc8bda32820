"""The pure and database parts of ACME issuance (no certbot run: tests/e2e/test_acme.py does that)."""
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from manager.certificates import acme
from manager.certificates.challenge import ChallengeError, publish, withdraw
from manager.certificates.models import AcmeChallenge, Certificate
from manager.hosts.models import Settings
from manager.hosts.revision import current_revision
from manager.hosts.snapshot import build_snapshot

PEBBLE_FAILURE = """Saving debug log to /data/certbot/logs/letsencrypt.log
Requesting a certificate for down.example.test

Certbot failed to authenticate some domains (authenticator: manual). The Certificate Authority reported these problems:
  Identifier: down.example.test
  Type:   connection
  Detail: Get "http://down.example.test:80/.well-known/acme-challenge/abc": dial tcp 127.0.0.2:80: connect: connection refused

Hint: The Certificate Authority failed to verify the challenge files created by the --manual-auth-hook.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x for more details.
"""

BOULDER_FAILURE = """Certbot failed to authenticate some domains (authenticator: manual). The Certificate Authority reported these problems:
  Domain: app.example.com
  Type:   unauthorized
  Detail: 203.0.113.9: Invalid response from http://app.example.com/.well-known/acme-challenge/abc: 404
"""

UNREACHABLE = """Saving debug log to /tmp/l/letsencrypt.log
An unexpected error occurred:
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /dir (Caused by NewConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"))
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x for more details.
"""

UNTRUSTED = """Saving debug log to /tmp/l/letsencrypt.log
An unexpected error occurred:
requests.exceptions.SSLError: HTTPSConnectionPool(host='127.0.0.1', port=18443): Max retries exceeded with url: /dir (Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)')))
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile x for more details.
"""


def test_failure_reason_names_the_url_the_acme_server_could_not_reach():
    reason = acme.failure_reason(PEBBLE_FAILURE)
    assert reason.startswith("down.example.test: the ACME server could not reach "
                             "http://down.example.test:80/.well-known/acme-challenge/abc: ")
    assert "connection refused" in reason and "port 80" in reason
    assert "Internal Error" not in reason


def test_failure_reason_reads_the_older_domain_label_and_hints_by_type():
    reason = acme.failure_reason(BOULDER_FAILURE)
    assert reason.startswith("app.example.com: the ACME server could not validate the name (unauthorized): ")
    assert "Invalid response from http://app.example.com/" in reason
    assert "does the name point at this proxy" in reason


def test_failure_reason_explains_an_unreachable_directory_and_an_untrusted_api_certificate():
    assert acme.failure_reason(UNREACHABLE).startswith("certbot: the ACME directory could not be reached: ")
    untrusted = acme.failure_reason(UNTRUSTED)
    assert "not trusted" in untrusted and "settings.acme.ca_bundle" in untrusted


def test_wildcards_are_refused_for_http_01():
    with pytest.raises(acme.AcmeError, match="DNS-01"):
        acme.check_domains(["example.test", "*.example.test"])
    with pytest.raises(acme.AcmeError, match="no domain"):
        acme.check_domains([])


@pytest.mark.django_db
def test_certbot_arguments_use_our_hooks_dirs_and_account_settings(tmp_path):
    certificate = Certificate.objects.create(name="app", domains=["app.example.test", "www.example.test"])
    config = Settings.load()
    config.acme_directory = "https://127.0.0.1:14000/dir"
    args = acme.certbot_arguments(certificate, config, tmp_path)
    joined = " ".join(args)
    assert "--server https://127.0.0.1:14000/dir" in joined
    assert "-d app.example.test -d www.example.test" in joined
    assert f"--cert-name gatehouse-{certificate.pk}" in joined
    assert "--register-unsafely-without-email" in args
    assert args[args.index("--manual-auth-hook") + 1].endswith("manage.py acmehook auth")
    assert args[args.index("--config-dir") + 1] == str(tmp_path / "config")
    config.acme_email = "me@example.test"
    config.acme_ca_bundle = "/etc/pebble/ca.pem"
    assert acme.certbot_arguments(certificate, config, tmp_path)[-6:-4] == ["-m", "me@example.test"]
    assert acme.certbot_environment(certificate, config)["REQUESTS_CA_BUNDLE"] == "/etc/pebble/ca.pem"


@pytest.mark.django_db
def test_a_published_challenge_bumps_the_revision_and_reaches_the_snapshot():
    before = current_revision()
    publish("app.example.test", "tok-1", "tok-1.thumb")
    assert current_revision() > before
    assert build_snapshot()["acme_challenges"] == [{"token": "tok-1", "key_authorization": "tok-1.thumb"}]
    AcmeChallenge.objects.filter(token="tok-1").update(created_at=timezone.now() - timedelta(hours=2))
    assert build_snapshot()["acme_challenges"] == [], "leftovers older than an hour are not served"
    withdraw("tok-1")
    assert not AcmeChallenge.objects.exists()


@pytest.mark.django_db
def test_a_token_that_is_not_base64url_is_refused():
    with pytest.raises(ChallengeError):
        publish("app.example.test", "../../etc/passwd", "x")


@pytest.mark.django_db
def test_a_failure_keeps_a_still_valid_certificate_served():
    valid = Certificate.objects.create(name="old", domains=["a.test"], status="valid", certificate_pem="C",
                                       key_pem="K", expires_at=timezone.now() + timedelta(days=5))
    acme.record_failure(valid, "a.test: the ACME server could not reach ...")
    valid.refresh_from_db()
    assert (valid.status, valid.progress) == ("valid", "failed")
    fresh = Certificate.objects.create(name="new", domains=["b.test"])
    acme.record_failure(fresh, "nope")
    fresh.refresh_from_db()
    assert (fresh.status, fresh.last_error) == ("error", "nope")


@pytest.mark.django_db
def test_only_acme_certificates_expiring_within_30_days_are_due():
    now = timezone.now()
    def make(name, days, provider="letsencrypt"):
        return Certificate.objects.create(name=name, provider=provider, domains=[f"{name}.test"], certificate_pem="C",
                                          key_pem="K", status="valid", expires_at=now + timedelta(days=days))
    make("soon", 29)
    make("later", 31)
    make("custom", 1, provider="custom")
    assert [c.name for c in acme.due_for_renewal(now)] == ["soon"]


def test_the_certbot_dir_is_under_the_data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    assert acme.certbot_dir() == Path(tmp_path) / "certbot"
