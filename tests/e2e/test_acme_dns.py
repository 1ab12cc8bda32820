"""DNS-01 against the real thing: BIND's named is the zone's primary and takes RFC 2136 updates
signed with a TSIG key, pebble's DNS lookups go to that named (`-dnsserver`), and certbot's
dns-rfc2136 plugin adds the TXT records with the credentials Gatehouse stores in the database.

Cloudflare's API cannot be reached from here: tests/test_dns_credentials.py checks only the
certbot arguments and credentials file Gatehouse produces for it."""
import io
import shutil

import pytest
from cryptography import x509
from django.core.management import CommandError, call_command
from django.test import override_settings

from manager.certificates.acme import certbot_dir, issue
from manager.certificates.models import Certificate, DnsProvider
from manager.hosts.models import Settings
from tests.e2e.acme_support import Named, Pebble, make_api_certificate, named_executable, verify_chain
from tests.live import free_port

pytestmark = [
    pytest.mark.e2e, pytest.mark.django_db,
    pytest.mark.skipif(not shutil.which("pebble"), reason="pebble is not installed (apt-get install pebble)"),
    pytest.mark.skipif(not named_executable(), reason="BIND is not installed (apt-get install bind9 bind9-utils)"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """named (primary for example.test) and pebble resolving through it; no engine is needed:
    DNS-01 never touches the proxy."""
    base = tmp_path_factory.mktemp("acme-dns")
    make_api_certificate(base)
    named = Named(base / "named")
    try:
        pebble = Pebble(base, free_port(), named.port)
    except BaseException:
        named.stop()
        raise
    data_dir = base / "data"
    data_dir.mkdir()
    try:
        with override_settings(DATA_DIR=data_dir):
            yield {"named": named, "pebble": pebble, "data_dir": data_dir}
    finally:
        pebble.stop()
        named.stop()


@pytest.fixture
def acme_settings(world):
    config = Settings.load()
    config.acme_email = "admin@example.test"
    config.acme_directory = world["pebble"].directory_url
    config.acme_ca_bundle = world["pebble"].ca_bundle
    config.save()
    return config


@pytest.fixture
def bind(world):
    named = world["named"]
    return DnsProvider.objects.create(name="bind", kind="rfc2136", server="127.0.0.1", port=named.port,
                                      key_name=named.KEY_NAME, key_secret=named.secret, algorithm="hmac-sha256",
                                      propagation_seconds=0)


def leftovers(world):
    """Credential directories still under the certbot dir (there must be none)."""
    return sorted(p.name for p in certbot_dir().glob("dns-credentials-*"))


def test_requestcert_issues_a_wildcard_certificate_through_rfc2136(world, acme_settings, bind):
    out = io.StringIO()
    call_command("requestcert", "wild", "-d", "*.example.test", "-d", "example.test", "--dns-provider", "bind",
                 stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("(DNS-01 through bind)"), lines
    assert lines[-1].startswith("wild: issued, expires "), lines

    certificate = Certificate.objects.get(name="wild")
    assert (certificate.status, certificate.progress, certificate.last_error) == ("valid", "issued", "")
    assert (certificate.challenge, certificate.dns_provider) == ("dns", bind)
    leaf = verify_chain(certificate, world["pebble"].root())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == ["*.example.test", "example.test"]
    assert sorted(certificate.domains) == ["*.example.test", "example.test"]
    # certbot's plugin removed its TXT records; the credentials file is gone.
    assert world["named"].txt("_acme-challenge.example.test") == []
    assert leftovers(world) == []
    assert bind.key_secret not in "".join(p.read_text(errors="replace") for p in world["data_dir"].rglob("*")
                                          if p.is_file() and p.suffix in (".conf", ".ini"))


def test_a_wrong_tsig_secret_is_reported_as_refused(world, acme_settings, bind):
    DnsProvider.objects.filter(pk=bind.pk).update(key_secret="d3Jvbmcgc2VjcmV0IGZvciB0aGUga2V5IQ==")
    certificate = Certificate.objects.create(name="badkey", provider="letsencrypt", domains=["badkey.example.test"],
                                             challenge="dns", dns_provider=bind)
    certificate = issue(certificate.pk)
    assert (certificate.status, certificate.progress) == ("error", "failed")
    assert "TSIG" in certificate.last_error, certificate.last_error
    assert "refused" in certificate.last_error, certificate.last_error
    assert "d3Jvbmcgc2VjcmV0" not in certificate.last_error
    assert leftovers(world) == []


def test_a_zone_the_dns_server_does_not_serve_is_named(world, acme_settings, bind):
    certificate = Certificate.objects.create(name="elsewhere", provider="letsencrypt", domains=["app.other.test"],
                                             challenge="dns", dns_provider=bind)
    with pytest.raises(CommandError) as caught:
        call_command("requestcert", "elsewhere", stdout=io.StringIO())
    certificate.refresh_from_db()
    assert certificate.progress == "failed"
    assert "app.other.test" in str(caught.value)
    assert "no zone" in certificate.last_error, certificate.last_error
    assert leftovers(world) == []


def test_a_txt_record_the_acme_server_cannot_see_is_explained(world, acme_settings, tmp_path):
    # The provider updates a second named (a "hidden" server the world does not ask): certbot
    # adds the record there, pebble asks the real primary and finds no TXT record.
    hidden = Named(tmp_path / "hidden")
    try:
        provider = DnsProvider.objects.create(name="hidden", kind="rfc2136", server="127.0.0.1", port=hidden.port,
                                              key_name=hidden.KEY_NAME, key_secret=hidden.secret,
                                              propagation_seconds=0)
        certificate = Certificate.objects.create(name="unseen", provider="letsencrypt", domains=["unseen.example.test"],
                                                 challenge="dns", dns_provider=provider)
        certificate = issue(certificate.pk)
    finally:
        hidden.stop()
    assert (certificate.status, certificate.progress) == ("error", "failed")
    assert certificate.last_error.startswith("unseen.example.test: the ACME server could not validate the TXT record "
                                             "_acme-challenge.unseen.example.test (unauthorized): No TXT records found")
    assert "propagation seconds" in certificate.last_error
    assert leftovers(world) == []
