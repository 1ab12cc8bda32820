"""importconfig / exportconfig through call_command: round trips, merge vs --replace, all or nothing."""
import io

import pytest
import yaml
from django.contrib.auth.hashers import check_password
from django.core.management import CommandError, call_command

from manager.access.models import AccessList
from manager.certificates.models import Certificate
from manager.configuration import importer
from manager.configuration.exporter import export_yaml
from manager.hosts.models import DeadHost, ProxyHost, RedirectionHost, Stream
from manager.hosts.revision import current_revision

from .conftest import CONTRACT_EXAMPLE

pytestmark = pytest.mark.django_db


def write(tmp_path, document, name="config.yaml"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return str(path)


def import_config(tmp_path, document, *args):
    out = io.StringIO()
    call_command("importconfig", write(tmp_path, document), *args, stdout=out)
    return out.getvalue()


def export_config(*args):
    out = io.StringIO()
    call_command("exportconfig", *args, stdout=out)
    return out.getvalue()


def certificate(exported, name):
    return next(c for c in yaml.safe_load(exported)["certificates"] if c["name"] == name)


def wipe():
    for model in (ProxyHost, RedirectionHost, DeadHost, Stream, Certificate, AccessList):
        model.objects.all().delete()


def failing_import(tmp_path, document, *args):
    """Import a document that must fail; returns its error lines, checking nothing changed."""
    before, revision = export_yaml(include_secrets=True), current_revision()
    with pytest.raises(CommandError) as caught:
        import_config(tmp_path, document, *args)
    assert export_yaml(include_secrets=True) == before
    assert current_revision() == revision
    header, *lines = str(caught.value).splitlines()
    assert "nothing was changed" in header
    return [line.strip() for line in lines]


def test_the_contract_example_round_trips_byte_for_byte(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    first = export_config()
    wipe()

    import_config(tmp_path, first, "--replace")
    second = export_config()

    assert second == first
    for key in ("load_balancing:", "health_check:", "websockets: true", "timeouts:", "max_body_size: 100m",
                "certificate: home", "access_list: family", "compression: [gzip, br, zstd]", "default_ttl: 5m",
                "rate_limit:", "X-Frame-Options: DENY", "block_exploits: true", "path: /static/",
                "upstream: 10.0.0.5:22", "code: 301", "url: http://10.0.1.11:3000", "- allow: 192.168.1.0/24"):
        assert key in first, key


def test_a_full_document_round_trips_with_secrets(tmp_path, full_document, tls):
    import_config(tmp_path, full_document)
    first = export_config("--include-secrets")
    wipe()

    import_config(tmp_path, first)
    second = export_config("--include-secrets")

    assert second == first
    assert certificate(first, "lab")["key_pem"] == tls.key
    assert "enabled: false" in first
    location = yaml.safe_load(first)["proxy_hosts"][1]["locations"][0]
    assert list(location["headers"]["response"]["set"]) == ["Cache-Control", "X-Robots-Tag"]
    assert location["headers"]["request"]["add"] == {"X-Via": "gatehouse"}
    assert location["headers"]["response"]["add"] == {"Link": "</api/docs>; rel=help"}
    assert Certificate.objects.get(name="lab").status == "valid"


def test_without_secrets_a_custom_certificate_keeps_the_key_it_already_has(tmp_path, full_document, tls):
    import_config(tmp_path, full_document)
    exported = export_config()
    assert certificate(exported, "lab")["certificate_pem"] == tls.cert
    assert "key_pem" not in certificate(exported, "lab") and "PRIVATE KEY" not in exported

    import_config(tmp_path, exported)

    assert Certificate.objects.get(name="lab").key_pem.strip() == tls.key.strip()
    assert export_config() == exported


def test_without_secrets_a_custom_certificate_with_no_key_to_keep_is_an_error(tmp_path, full_document):
    import_config(tmp_path, full_document)
    exported = export_config()
    Certificate.objects.filter(name="lab").update(name="renamed")

    lines = failing_import(tmp_path, exported)

    assert lines == ["certificates[1].key_pem: required: no existing certificate named 'lab' has a key to keep "
                     "(export with --include-secrets to carry keys)"]


def test_passwords_are_hashed_on_import_and_exported_as_hashes(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)

    user = AccessList.objects.get(name="family").users.get()
    assert user.password_hash != "s3cret" and check_password("s3cret", user.password_hash)
    assert f"password_hash: {user.password_hash}" in export_config()
    assert "s3cret" not in export_config()


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["proxy_hosts"][0]["upstreams"].__setitem__(0, "http://10.0.1.10:70000"),
     "proxy_hosts[0].upstreams[0]: port 70000 out of range (1-65535)"),
    (lambda d: d["proxy_hosts"][0].update(domains=["*.example.*"]),
     "proxy_hosts[0].domains[0]: invalid domain name '*.example.*': a wildcard may only be the whole first label (*.example.test)"),
    (lambda d: d["settings"].update(trusted_proxies=["not-a-network"]),
     "settings.trusted_proxies[0]: invalid IP address or CIDR 'not-a-network'"),
    (lambda d: d["proxy_hosts"][0]["headers"]["response"]["set"].update({"X-Frame-Options": "DENY\nSet-Cookie: x"}),
     "proxy_hosts[0].headers.response.set.X-Frame-Options: invalid header value 'DENY\\nSet-Cookie: x': control character '\\n' "
     "(CR, LF and other control characters are not allowed)"),
    (lambda d: d["proxy_hosts"][0]["rate_limit"].update(per="soon"),
     "proxy_hosts[0].rate_limit.per: invalid duration 'soon' (use e.g. 500ms, 10s, 5m, 2h, 1d)"),
    (lambda d: d["proxy_hosts"][0].update(max_body_size="1t"), "proxy_hosts[0].max_body_size: invalid size '1t' (use e.g. 512k, 100m, 1g)"),
    (lambda d: d["proxy_hosts"][0].update(access_list="strangers"),
     "proxy_hosts[0].access_list: no access list named 'strangers' in this document or the database"),
    (lambda d: d["proxy_hosts"][0]["ssl"].update(certificate="work"),
     "proxy_hosts[0].ssl.certificate: no certificate named 'work' in this document or the database"),
    (lambda d: d["redirection_hosts"].append({"domains": ["gone.example.test"], "to": "https://x.example.test"}),
     "dead_hosts[0].domains[0]: gone.example.test is already used by redirection_hosts[1]"),
    (lambda d: d["streams"][0].update(port=22), "streams[0].port: unknown key (expected one of: listen, protocol, upstream, enabled)"),
    (lambda d: d["proxy_hosts"][0].update(block_exploits="on"),
     "proxy_hosts[0].block_exploits: expected true or false, got string 'on'"),
])
def test_an_invalid_document_changes_nothing_and_names_the_error(tmp_path, contract, change, expected):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    contract["proxy_hosts"][0]["timeouts"]["connect"] = "9s"   # a valid change that must not land either
    change(contract)

    lines = failing_import(tmp_path, contract)

    assert expected in lines
    assert ProxyHost.objects.get().connect_timeout == 5.0


def test_invalid_pems_change_nothing_and_are_all_named(tmp_path, contract, tls):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    contract["certificates"] += [
        {"name": "garbage", "provider": "custom", "certificate_pem": "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n",
         "key_pem": tls.key},
        {"name": "wrong-key", "provider": "custom", "certificate_pem": tls.cert, "key_pem": tls.other_key},
    ]

    lines = failing_import(tmp_path, contract)

    assert any(line.startswith("certificates[1].certificate_pem: certificate PEM does not parse") for line in lines), lines
    assert "certificates[2].key_pem: the private key does not match the certificate" in lines


def test_a_reference_to_a_database_name_is_fine_when_merging_but_not_with_replace(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    document = {"version": 1, "proxy_hosts": [{"domains": ["new.example.test"], "upstreams": ["http://new.lan:80"],
                                               "access_list": "family", "ssl": {"certificate": "home"}}]}

    lines = failing_import(tmp_path, document, "--replace")
    assert lines == ["proxy_hosts[0].ssl.certificate: no certificate named 'home' in this document",
                     "proxy_hosts[0].access_list: no access list named 'family' in this document"]

    import_config(tmp_path, document)
    assert ProxyHost.objects.get(domains=["new.example.test"]).access_list.name == "family"


def test_merge_updates_by_identity_and_keeps_the_rest_while_replace_deletes_it(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    host_id = ProxyHost.objects.get().pk
    document = {
        "version": 1,
        "access_lists": [{"name": "family", "satisfy": "all"}],
        "proxy_hosts": [{"domains": ["app.example.test", "gone.example.test"], "upstreams": ["http://10.0.1.12:3000"]}],
        "streams": [{"listen": 2222, "upstream": "10.0.0.6:22"}, {"listen": 2222, "protocol": "udp", "upstream": "10.0.0.6:22"}],
    }

    summary = import_config(tmp_path, document)

    host = ProxyHost.objects.get()
    assert host.pk == host_id and host.upstreams[0]["host"] == "10.0.1.12"
    assert not DeadHost.objects.exists()                    # shared gone.example.test: replaced
    assert RedirectionHost.objects.count() == 1             # untouched
    assert AccessList.objects.get().satisfy == "all" and not AccessList.objects.get().users.exists()
    assert Certificate.objects.filter(name="home").exists()
    assert sorted(Stream.objects.values_list("protocol", "upstream_host")) == [("tcp", "10.0.0.6"), ("udp", "10.0.0.6")]
    assert "404 hosts: 1 deleted" in summary and "proxy hosts: 1 updated" in summary and "streams: 1 created, 1 updated" in summary

    summary = import_config(tmp_path, document, "--replace")

    assert not RedirectionHost.objects.exists() and not Certificate.objects.exists()
    assert ProxyHost.objects.get().pk == host_id
    assert "redirection hosts: 1 deleted" in summary and "certificates: 1 deleted" in summary


def test_a_host_that_changes_kind_replaces_the_old_one(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)

    import_config(tmp_path, {"version": 1, "dead_hosts": [{"domains": ["app.example.test"]}]})

    assert not ProxyHost.objects.exists()
    assert list(DeadHost.objects.values_list("domains", flat=True)) == [["gone.example.test"], ["app.example.test"]]


def test_replace_resets_settings_the_document_leaves_out(tmp_path):
    import_config(tmp_path, CONTRACT_EXAMPLE)

    import_config(tmp_path, {"version": 1}, "--replace")

    assert export_config() == (
        "version: 1\nsettings:\n  default_site:\n    action: welcome\n  acme:\n"
        "    directory: https://acme-v02.api.letsencrypt.org/directory\n  tls:\n    fallback: self_signed\n"
        "  trusted_proxies: []\n"
        "access_lists: []\ndns_providers: []\ncertificates: []\nproxy_hosts: []\nredirection_hosts: []\ndead_hosts: []\nstreams: []\n")


def test_check_validates_and_reports_without_changing_anything(tmp_path):
    before = export_yaml()

    summary = import_config(tmp_path, CONTRACT_EXAMPLE, "--check")

    assert "would change" in summary and "proxy hosts: 1 created" in summary
    assert export_yaml() == before


def test_one_import_is_one_revision(tmp_path):
    revision = current_revision()

    import_config(tmp_path, CONTRACT_EXAMPLE)

    assert current_revision() > revision
    assert ProxyHost.objects.count() == 1


def test_export_to_a_file_is_readable_by_its_owner_only(tmp_path):
    target = tmp_path / "out.yaml"

    call_command("exportconfig", str(target), stderr=io.StringIO())

    assert target.read_text().startswith("version: 1\n")
    assert target.stat().st_mode & 0o077 == 0


def test_lets_encrypt_pems_travel_only_with_secrets(tmp_path, tls):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    Certificate.objects.filter(name="home").update(certificate_pem=tls.cert, key_pem=tls.key, chain_pem=tls.chain, status="valid")

    assert "certificate_pem" not in certificate(export_config(), "home")
    with_secrets = export_config("--include-secrets")
    assert certificate(with_secrets, "home")["key_pem"] == tls.key
    wipe()

    import_config(tmp_path, with_secrets)

    assert export_config("--include-secrets") == with_secrets
    assert Certificate.objects.get(name="home").status == "valid"


def test_a_lets_encrypt_certificate_without_pems_keeps_the_ones_it_has(tmp_path, tls):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    Certificate.objects.filter(name="home").update(certificate_pem=tls.cert, key_pem=tls.key, status="valid")

    import_config(tmp_path, CONTRACT_EXAMPLE)

    home = Certificate.objects.get(name="home")
    assert (home.certificate_pem, home.key_pem, home.status) == (tls.cert, tls.key, "valid")


def test_a_failure_while_applying_rolls_everything_back(tmp_path, monkeypatch):
    import_config(tmp_path, CONTRACT_EXAMPLE)
    before, revision = export_yaml(include_secrets=True), current_revision()

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(importer, "_apply_streams", broken)
    document = yaml.safe_load(CONTRACT_EXAMPLE)
    document["proxy_hosts"][0]["websockets"] = False
    with pytest.raises(RuntimeError):
        import_config(tmp_path, document, "--replace")

    assert export_yaml(include_secrets=True) == before
    assert current_revision() == revision



def test_imported_header_rules_reach_the_engine_snapshot(tmp_path, full_document):
    from manager.hosts.snapshot import build_snapshot
    from proxy_engine.headerrules import HeaderRules
    from proxy_engine.snapshot import parse_snapshot

    full_document["proxy_hosts"][0]["headers"]["response"]["add"] = {"Link": "</help>; rel=help"}
    import_config(tmp_path, full_document)
    host = parse_snapshot(build_snapshot()).proxy_hosts[0]
    assert host.request_headers == HeaderRules((("X-Env", "home"),), ("x-debug",))
    assert host.response_headers == HeaderRules((("X-Frame-Options", "DENY"),), ("server", "x-powered-by"),
                                                (("Link", "</help>; rel=help"),))
