"""The audit log page: administrators only, newest first, filters, before/after diff."""
import pytest
from django.contrib.auth import get_user_model

from manager.accounts.models import Profile
from manager.audit.log import record
from manager.audit.models import AuditEntry
from manager.audit.views import changes

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-passphrase-42"


def user(name, superuser=False):
    account = get_user_model().objects.create_user(name, password=PASSWORD, is_superuser=superuser)
    Profile.objects.create(user=account, visibility="all", proxy_hosts="manage", certificates="manage")
    return account


def test_changes_lists_only_the_fields_that_differ():
    assert changes({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == [("b", 2, 3), ("c", None, 4)]
    assert changes(None, {"name": "x"}) == [("name", None, "x")]
    assert changes({"name": "x"}, None) == [("name", "x", None)]


def test_the_audit_log_is_for_admins_only(client):
    assert client.get("/audit/").status_code == 302
    client.login(username=user("manager").username, password=PASSWORD)
    assert client.get("/audit/").status_code == 403


def test_entries_show_newest_first_with_their_diff_and_filter(client):
    root, other = user("root", superuser=True), user("other", superuser=True)
    record(other, "updated", kind="settings", object_repr="Settings", before={"tls_fallback": "self_signed"},
           after={"tls_fallback": "reject"})
    record(root, "deleted", kind="certificate", object_repr="home", before={"name": "home"})
    client.login(username="root", password=PASSWORD)

    page = client.get("/audit/").content.decode()
    assert page.index("<strong>home</strong>") < page.index("<strong>Settings</strong>")
    assert "self_signed" in page and "reject" in page

    filtered = client.get("/audit/", {"kind": "settings"}).content.decode()
    assert "reject" in filtered and "<strong>home</strong>" not in filtered
    by_user = client.get("/audit/", {"user": "root"}).context["page"]
    assert [entry.kind for entry in by_user] == ["certificate"]
    assert AuditEntry.objects.count() == 2


def test_certificate_and_dns_provider_changes_are_audited_without_secrets(client):
    import trustme

    from manager.certificates.models import Certificate, DnsProvider

    ca = trustme.CA()
    leaf = ca.issue_cert("nas.home.test")
    cert_pem, key_pem = leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode()
    token = "cf-token-" + "x" * 32
    user("root", superuser=True)
    client.login(username="root", password=PASSWORD)

    client.post("/certificates/upload/", {"name": "nas", "certificate_pem": cert_pem, "key_pem": key_pem})
    cert = Certificate.objects.get(name="nas")
    client.post(f"/certificates/{cert.pk}/delete/")
    client.post("/certificates/dns/add/", {"name": "cf", "kind": "cloudflare", "api_token": token,
                                           "propagation_seconds": 10})
    client.post(f"/certificates/dns/{DnsProvider.objects.get(name='cf').pk}/delete/")

    entries = list(AuditEntry.objects.order_by("id").values_list("action", "kind", "object_repr"))
    assert [(action, kind) for action, kind, _ in entries] == [
        ("uploaded", "certificate"), ("deleted", "certificate"), ("created", "dnsprovider"), ("deleted", "dnsprovider")]
    everything = str(list(AuditEntry.objects.values_list("before", "after")))
    assert "nas.home.test" in everything
    assert token not in everything and "PRIVATE KEY" not in everything and "BEGIN CERTIFICATE" not in everything
