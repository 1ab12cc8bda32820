"""Setup page, throttled login and the users pages (administrators only)."""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from manager.accounts import throttle
from manager.accounts.models import FailedLogin, Profile
from manager.audit.models import AuditEntry
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db
User = get_user_model()


def user(name, superuser=False, **rights):
    return make_user(name, superuser, staff=superuser, **rights)


# -- setup -----------------------------------------------------------------------------


def test_setup_page_creates_the_first_admin_and_logs_in(client):
    assert b"create the first administrator" in client.get("/login/").content
    response = client.post("/setup/", {"username": "root", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302
    admin = User.objects.get()
    assert admin.is_superuser and admin.is_staff
    assert client.get("/").status_code == 200
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.kind, entry.username) == ("created", "user", "root")
    assert "password" not in str(entry.after)


def test_setup_page_is_gone_once_a_user_exists(client):
    user("someone")
    assert client.get("/setup/").status_code == 404
    assert client.post("/setup/", {"username": "x", "password1": PASSWORD, "password2": PASSWORD}).status_code == 404
    assert User.objects.count() == 1
    assert b"create the first administrator" not in client.get("/login/").content


def test_setup_page_applies_the_password_validators(client):
    response = client.post("/setup/", {"username": "root", "password1": "123", "password2": "123"})
    assert response.status_code == 200 and b"too short" in response.content
    assert not User.objects.exists()


# -- login throttling --------------------------------------------------------------------


def test_login_is_refused_after_five_failures_even_with_the_right_password(client):
    user("alice")
    for _ in range(throttle.LIMIT):
        assert client.post("/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    response = client.post("/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200 and b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session


def test_failures_from_one_address_throttle_every_username(client):
    for number in range(throttle.LIMIT):
        client.post("/login/", {"username": f"guess{number}", "password": "wrong"})
    user("bob")
    assert b"Too many failed logins" in client.post("/login/", {"username": "bob", "password": PASSWORD}).content


def test_throttling_ends_when_the_window_has_passed():
    start = timezone.now()
    for _ in range(throttle.LIMIT):
        throttle.failed("carol", "10.0.0.9", now=start)
    assert throttle.blocked("Carol", "10.0.0.1", now=start + timedelta(minutes=1))
    assert throttle.blocked("dave", "10.0.0.9", now=start + timedelta(minutes=1))
    assert not throttle.blocked("carol", "10.0.0.9", now=start + throttle.WINDOW + timedelta(seconds=1))


def test_a_successful_login_clears_the_usernames_failures(client):
    user("erin")
    for _ in range(throttle.LIMIT - 1):
        client.post("/login/", {"username": "erin", "password": "wrong"})
    assert client.post("/login/", {"username": "erin", "password": PASSWORD}).status_code == 302
    assert not FailedLogin.objects.filter(username="erin").exists()


# -- users pages -------------------------------------------------------------------------


def test_users_pages_are_for_admins_only(client, as_user):
    target = user("target")
    assert client.get("/users/").status_code == 302
    browser = as_user(user("plain", proxy_hosts="manage", visibility="all"))
    assert browser.get("/users/").status_code == 403
    assert browser.get("/users/add/").status_code == 403
    assert browser.get(f"/users/{target.pk}/").status_code == 403
    assert browser.post(f"/users/{target.pk}/delete/").status_code == 403
    assert browser.post(f"/users/{target.pk}/toggle/").status_code == 403
    assert User.objects.filter(pk=target.pk, is_active=True).exists()


def rights(**overrides):
    data = {"visibility": "own", "proxy_hosts": "view", "redirection_hosts": "hidden", "dead_hosts": "hidden",
            "streams": "hidden", "access_lists": "hidden", "certificates": "manage"}
    return {**data, **overrides}


def test_an_admin_creates_a_user_with_rights(as_user):
    browser = as_user(user("root", superuser=True))
    assert browser.get("/users/add/").status_code == 200
    response = browser.post("/users/add/", {"username": "viewer", "password": PASSWORD, **rights()})
    assert response.status_code == 302
    viewer = User.objects.get(username="viewer")
    assert viewer.check_password(PASSWORD) and not viewer.is_superuser
    profile = Profile.objects.get(user=viewer)
    assert (profile.proxy_hosts, profile.certificates, profile.visibility) == ("view", "manage", "own")
    entry = AuditEntry.objects.get(kind="user", action="created")
    assert entry.after["proxy_hosts"] == "view" and "password" not in str(entry.after)


def test_a_weak_password_or_bad_level_saves_nothing(as_user):
    browser = as_user(user("root", superuser=True))
    response = browser.post("/users/add/", {"username": "weak", "password": "123", **rights()})
    assert response.status_code == 200 and b"too short" in response.content
    response = browser.post("/users/add/", {"username": "odd", "password": PASSWORD, **rights(streams="everything")})
    assert response.status_code == 200
    assert not User.objects.filter(username__in=["weak", "odd"]).exists()
    assert not AuditEntry.objects.exists()


def test_editing_without_a_password_keeps_it_and_audits_the_change(as_user):
    browser = as_user(user("root", superuser=True))
    target = user("target", proxy_hosts="hidden")
    response = browser.post(f"/users/{target.pk}/", {"username": "target", "password": "", **rights(proxy_hosts="manage")})
    assert response.status_code == 302
    target.refresh_from_db()
    assert target.check_password(PASSWORD)
    assert Profile.objects.get(user=target).proxy_hosts == "manage"
    entry = AuditEntry.objects.get(action="updated")
    assert (entry.before["proxy_hosts"], entry.after["proxy_hosts"]) == ("hidden", "manage")


def test_admin_cannot_disable_delete_or_demote_themselves(as_user):
    root = user("root", superuser=True)
    browser = as_user(root)
    browser.post(f"/users/{root.pk}/toggle/")
    browser.post(f"/users/{root.pk}/delete/")
    response = browser.post(f"/users/{root.pk}/", {"username": "root", "password": "", **rights()})
    assert response.status_code == 200
    root.refresh_from_db()
    assert root.is_active and root.is_superuser
    assert not AuditEntry.objects.exists()


def test_an_admin_disables_and_enables_another_admin(as_user):
    root, other = user("root", superuser=True), user("other", superuser=True)
    browser = as_user(root)
    assert browser.post(f"/users/{other.pk}/toggle/").status_code == 302
    other.refresh_from_db()
    assert not other.is_active
    assert AuditEntry.objects.get(action="disabled").after["is_active"] is False
    browser.post(f"/users/{other.pk}/toggle/")
    other.refresh_from_db()
    assert other.is_active


def test_delete_and_toggle_reject_get_and_delete_is_audited(as_user):
    browser = as_user(user("root", superuser=True))
    target = user("target")
    assert browser.get(f"/users/{target.pk}/delete/").status_code == 405
    assert browser.get(f"/users/{target.pk}/toggle/").status_code == 405
    assert browser.post(f"/users/{target.pk}/delete/").status_code == 302
    assert not User.objects.filter(pk=target.pk).exists()
    entry = AuditEntry.objects.get(action="deleted")
    assert entry.before["username"] == "target" and entry.object_repr == "target"


def test_secure_cookies_follow_the_environment():
    import os
    import subprocess
    import sys

    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE)")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "GATEHOUSE_SECURE_COOKIES": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "True", "Lax"]
