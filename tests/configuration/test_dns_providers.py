"""dns_providers and DNS-01 certificates in the config document: schema errors with paths,
secrets exported only with --include-secrets, kept on a re-import without them."""
import pytest

from manager.certificates.models import Certificate, DnsProvider
from manager.configuration.schema import parse_document

from .conftest import CLOUDFLARE_TOKEN, TSIG_SECRET
from .test_import import certificate, export_config, failing_import, import_config, wipe

pytestmark = pytest.mark.django_db


def errors(document):
    return [str(error) for error in parse_document(document)[1]]


def test_the_full_document_round_trips_with_dns_secrets(tmp_path, full_document):
    import_config(tmp_path, full_document)
    first = export_config("--include-secrets")
    wipe()
    DnsProvider.objects.all().delete()
    import_config(tmp_path, first, "--replace")

    assert export_config("--include-secrets") == first
    assert CLOUDFLARE_TOKEN in first and TSIG_SECRET in first
    assert certificate(first, "wild") == {"name": "wild", "provider": "letsencrypt",
                                          "domains": ["*.lab.example.test", "lab.example.test"],
                                          "challenge": "dns", "dns_provider": "bind"}
    assert "challenge" not in certificate(first, "home"), "HTTP-01 is the default and is not written"
    wild = Certificate.objects.get(name="wild")
    assert (wild.challenge, wild.dns_provider.name, wild.dns_provider.key_secret) == ("dns", "bind", TSIG_SECRET)
    bind = DnsProvider.objects.get(name="bind")
    assert (bind.server, bind.port, bind.key_name, bind.algorithm, bind.propagation_seconds) == (
        "192.168.1.53", 5353, "gatehouse-key.", "hmac-sha512", 60)


def test_without_secrets_dns_credentials_are_left_out_and_kept_on_reimport(tmp_path, full_document):
    import_config(tmp_path, full_document)
    exported = export_config()
    assert CLOUDFLARE_TOKEN not in exported and TSIG_SECRET not in exported
    assert "api_token" not in exported and "key_secret" not in exported
    assert "key_name: gatehouse-key." in exported

    import_config(tmp_path, exported)
    assert DnsProvider.objects.get(name="cf").api_token == CLOUDFLARE_TOKEN
    assert DnsProvider.objects.get(name="bind").key_secret == TSIG_SECRET
    assert export_config() == exported


def test_without_secrets_a_new_machine_is_told_which_secret_is_missing(tmp_path, full_document):
    import_config(tmp_path, full_document)
    exported = export_config()
    DnsProvider.objects.filter(name="bind").update(kind="cloudflare")   # no rfc2136 "bind" to keep a secret from

    lines = failing_import(tmp_path, exported)

    assert lines == ["dns_providers[0].key_secret: required: no existing rfc2136 DNS provider named 'bind' has one "
                     "to keep (export with --include-secrets to carry secrets)"]


def test_replace_deletes_dns_providers_the_document_leaves_out(tmp_path, full_document):
    import_config(tmp_path, full_document)
    import_config(tmp_path, {"version": 1}, "--replace")
    assert not DnsProvider.objects.exists() and not Certificate.objects.exists()


def test_dns_provider_errors_name_their_path_and_never_echo_a_secret():
    lines = errors({"version": 1, "dns_providers": [
        {"name": "cf", "kind": "cloudflare", "api_token": "short!", "server": "1.2.3.4"},
        {"name": "bind", "kind": "rfc2136", "server": "ns1.example.test", "key_secret": "not base64!!",
         "algorithm": "hmac-sha3", "port": 70000},
        {"name": "cf", "kind": "route53"},
        {"name": "nokey", "kind": "rfc2136"},
    ]})
    assert lines == [
        "dns_providers[0].server: only for kind rfc2136",
        "dns_providers[0].api_token: a Cloudflare API token is 10-200 letters, digits, '-', '_' or '.' "
        "(create one with the Zone:DNS:Edit permission)",
        "dns_providers[1].server: 'ns1.example.test' is not an IP address: certbot's RFC 2136 plugin needs the "
        "DNS server's IPv4 or IPv6 address, not a host name",
        "dns_providers[1].port: port 70000 out of range (1-65535)",
        "dns_providers[1].key_secret: a TSIG secret is base64 text (the secret line of `tsig-keygen`'s output)",
        "dns_providers[1].algorithm: unknown TSIG algorithm 'hmac-sha3' (one of hmac-sha256, hmac-sha512, "
        "hmac-sha384, hmac-sha224, hmac-sha1, hmac-md5)",
        "dns_providers[1].key_name: required for kind rfc2136",
        "dns_providers[2].kind: expected one of cloudflare, rfc2136, got string 'route53'",
        "dns_providers[3].server: required for kind rfc2136",
        "dns_providers[3].key_name: required for kind rfc2136",
        "dns_providers[2].name: DNS provider 'cf' is already defined at dns_providers[0]",
    ]
    assert not any("short!" in line or "not base64!!" in line for line in lines)


def test_certificate_challenge_rules(tmp_path, tls):
    lines = errors({"version": 1, "certificates": [
        {"name": "a", "provider": "letsencrypt", "domains": ["*.example.test"]},
        {"name": "b", "provider": "letsencrypt", "domains": ["b.example.test"], "challenge": "dns"},
        {"name": "c", "provider": "letsencrypt", "domains": ["c.example.test"], "dns_provider": "bind"},
        {"name": "d", "provider": "letsencrypt", "domains": ["d.example.test"], "challenge": "tls-alpn"},
        {"name": "e", "provider": "custom", "certificate_pem": tls.cert, "key_pem": tls.key, "challenge": "dns"},
    ]})
    assert lines == [
        "certificates[0].domains: *.example.test: wildcard names can only be validated with DNS-01 "
        "(challenge: dns and a dns_provider)",
        "certificates[1].dns_provider: required when challenge is dns",
        "certificates[2].dns_provider: only allowed with challenge: dns",
        "certificates[3].challenge: expected one of http, dns, got string 'tls-alpn'",
        "certificates[4].challenge: only for letsencrypt certificates",
    ]
    lines = failing_import(tmp_path, {"version": 1, "certificates": [
        {"name": "w", "provider": "letsencrypt", "domains": ["*.example.test"], "challenge": "dns",
         "dns_provider": "nowhere"}]})
    assert lines == ["certificates[0].dns_provider: no DNS provider named 'nowhere' in this document or the database"]
