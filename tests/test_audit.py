import pytest
from django.contrib.auth import get_user_model

from manager.audit.log import record, snapshot
from manager.audit.models import AuditEntry
from manager.certificates.models import Certificate

pytestmark = pytest.mark.django_db


def test_record_keeps_who_what_and_the_before_and_after_without_secrets():
    admin = get_user_model().objects.create_user("admin", password="a-long-passphrase-42")
    cert = Certificate.objects.create(name="home", domains=["a.home.test"], key_pem="SECRET KEY")
    before = snapshot(cert)
    cert.domains = ["a.home.test", "b.home.test"]
    entry = record(admin, "updated", cert, before=before, after=snapshot(cert))
    assert (entry.username, entry.action, entry.kind, entry.object_repr) == ("admin", "updated", "certificate", "home")
    assert entry.before["domains"] == ["a.home.test"] and entry.after["domains"] == ["a.home.test", "b.home.test"]
    assert "key_pem" not in entry.after and "SECRET KEY" not in str(entry.after)
    admin.delete()
    assert AuditEntry.objects.get().username == "admin"
