"""The settings page: global settings, YAML export, and import with a preview."""
import pytest
import yaml
from django.contrib.auth import get_user_model

from manager.accounts.models import Profile
from manager.audit.models import AuditEntry
from manager.configuration.exporter import export_yaml
from manager.hosts.models import DeadHost, RedirectionHost, Settings

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-passphrase-42"

DOCUMENT = """version: 1
dead_hosts:
  - domains: [gone.home.test]
redirection_hosts:
  - domains: [old.home.test]
    to: https://new.home.test
"""
BROKEN = """version: 1
dead_hosts:
  - domains: ["not a domain"]
redirection_hosts:
  - domains: [old.home.test]
    to: ftp://nowhere
"""


def user(name, superuser=False):
    account = get_user_model().objects.create_user(name, password=PASSWORD, is_superuser=superuser)
    Profile.objects.create(user=account, visibility="all", proxy_hosts="manage", certificates="manage")
    return account


@pytest.fixture
def admin(client):
    assert client.login(username=user("root", superuser=True).username, password=PASSWORD)
    return client


def valid_settings(**overrides):
    data = {"default_site_action": "404", "default_site_to": "", "default_site_body": "", "acme_email": "me@example.test",
            "acme_directory": "https://acme.example.test/dir", "acme_ca_bundle": "", "tls_fallback": "reject",
            "trusted_proxies": "10.0.0.0/8\n192.168.1.1"}
    return {**data, **overrides}


def test_settings_pages_are_for_admins_only(client):
    assert client.get("/settings/").status_code == 302
    client.login(username=user("manager").username, password=PASSWORD)
    assert client.get("/settings/").status_code == 403
    assert client.post("/settings/", valid_settings()).status_code == 403
    assert client.get("/settings/export/").status_code == 403
    assert client.post("/settings/import/", {"document": DOCUMENT}).status_code == 403
    assert client.post("/settings/import/apply/", {"digest": "x"}).status_code == 403
    assert Settings.load().tls_fallback == "self_signed"


def test_an_admin_saves_settings_and_it_is_audited(admin):
    assert admin.get("/settings/").status_code == 200
    assert admin.post("/settings/", valid_settings()).status_code == 302
    config = Settings.load()
    assert (config.default_site_action, config.tls_fallback, config.acme_email) == ("404", "reject", "me@example.test")
    assert config.trusted_proxies == ["10.0.0.0/8", "192.168.1.1/32"]
    entry = AuditEntry.objects.get(kind="settings")
    assert entry.action == "updated"
    assert (entry.before["tls_fallback"], entry.after["tls_fallback"]) == ("self_signed", "reject")


def test_settings_follow_the_import_rules_and_save_nothing_when_invalid(admin):
    response = admin.post("/settings/", valid_settings(trusted_proxies="10.0.0.0/33", acme_directory="ftp://x",
                                                       default_site_action="redirect", default_site_to=""))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert {"trusted_proxies", "acme_directory", "default_site_to"} <= set(errors)
    assert Settings.load().tls_fallback == "self_signed"
    assert not AuditEntry.objects.exists()


def test_settings_accept_a_private_acme_directory_without_a_dot(admin):
    assert admin.post("/settings/", valid_settings(acme_directory="https://pebble:14000/dir")).status_code == 302
    assert Settings.load().acme_directory == "https://pebble:14000/dir"


def test_export_downloads_yaml_without_secrets_unless_asked(admin):
    response = admin.get("/settings/export/")
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    assert yaml.safe_load(response.content)["version"] == 1
    assert not AuditEntry.objects.exists()
    assert admin.get("/settings/export/?secrets=1").status_code == 200
    assert AuditEntry.objects.get().action == "exported"


def test_import_preview_changes_nothing_until_apply(admin):
    before = export_yaml()
    response = admin.post("/settings/import/", {"document": DOCUMENT, "mode": "merge"})
    assert response.status_code == 200
    assert "404 hosts: 1 created" in response.context["summary"]
    assert export_yaml() == before and not AuditEntry.objects.exists()

    assert admin.get("/settings/import/apply/").status_code == 405
    response = admin.post("/settings/import/apply/", {"digest": response.context["digest"]})
    assert response.status_code == 302
    assert DeadHost.objects.filter(domains=["gone.home.test"]).exists() and RedirectionHost.objects.count() == 1
    entry = AuditEntry.objects.get(kind="configuration")
    assert entry.action == "imported" and "404 hosts: 1 created" in entry.after["changes"]


def test_import_preview_lists_every_error_with_its_path(admin):
    response = admin.post("/settings/import/", {"document": BROKEN, "mode": "merge"})
    assert response.status_code == 400
    errors = response.context["errors"]
    assert any(error.startswith("dead_hosts[0].domains") for error in errors)
    assert any(error.startswith("redirection_hosts[0].to") for error in errors)
    assert not DeadHost.objects.exists() and not RedirectionHost.objects.exists()


def test_apply_needs_the_previewed_document(admin):
    admin.post("/settings/import/", {"document": DOCUMENT, "mode": "merge"})
    response = admin.post("/settings/import/apply/", {"digest": "not-the-preview"})
    assert response.status_code == 302
    assert not DeadHost.objects.exists() and not AuditEntry.objects.exists()


def test_import_accepts_an_uploaded_file_and_replace_mode(admin):
    from django.core.files.uploadedfile import SimpleUploadedFile

    DeadHost.objects.create(domains=["stale.home.test"])
    upload = SimpleUploadedFile("config.yaml", DOCUMENT.encode(), content_type="text/yaml")
    response = admin.post("/settings/import/", {"file": upload, "mode": "replace"})
    assert response.status_code == 200 and response.context["replace"]
    assert DeadHost.objects.filter(domains=["stale.home.test"]).exists()
    admin.post("/settings/import/apply/", {"digest": response.context["digest"]})
    assert list(DeadHost.objects.values_list("domains", flat=True)) == [["gone.home.test"]]
