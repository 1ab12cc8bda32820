"""Redirection hosts, 404 hosts, streams and access lists: the same views as proxy hosts
(tests/test_host_views.py), tested here for what differs per kind."""
import pytest
from django.contrib.auth.hashers import check_password

from manager.access.models import AccessList, AccessListUser
from manager.audit.models import AuditEntry
from manager.hosts.models import DeadHost, ProxyHost, RedirectionHost, Stream
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def user(name, superuser=False, visibility="all", **levels):
    return make_user(name, superuser, visibility=visibility, **levels)


# -- redirection hosts -----------------------------------------------------------------


def test_a_redirection_host_is_created_audited_and_owned(as_user):
    creator = user("manager", redirection_hosts="manage")
    response = as_user(creator).post("/hosts/redirections/add/", {
        "domains": "old.home.test", "to": "https://new.home.test", "code": "308", "preserve_path": "on", "enabled": "on"})
    assert response.status_code == 302
    saved = RedirectionHost.objects.get()
    assert (saved.to, saved.code, saved.owner) == ("https://new.home.test", 308, creator)
    assert AuditEntry.objects.get().action == "created"


def test_a_bad_redirection_target_is_refused_on_its_field(admin):
    response = admin.post("/hosts/redirections/add/", {"domains": "old.home.test", "to": "ftp://x", "code": "301"})
    assert "must be an absolute http:// or https:// URL" in str(response.context["form"].errors["to"])
    assert not RedirectionHost.objects.exists()


def test_redirection_permissions_follow_their_own_kind(as_user):
    item = RedirectionHost.objects.create(domains=["old.home.test"], to="https://new.home.test")
    browser = as_user(user("proxy-only", proxy_hosts="manage"))
    assert browser.get("/hosts/redirections/").status_code == 403
    assert browser.post(f"/hosts/redirections/{item.pk}/delete/").status_code == 403
    assert RedirectionHost.objects.exists()


# -- 404 hosts -------------------------------------------------------------------------


def test_a_404_host_toggles_and_is_hidden_from_other_owners(as_user):
    me = user("me", dead_hosts="manage", visibility="own")
    mine = DeadHost.objects.create(domains=["gone.home.test"], owner=me)
    theirs = DeadHost.objects.create(domains=["theirs.home.test"])
    browser = as_user(me)
    assert browser.get(f"/hosts/404/{mine.pk}/toggle/").status_code == 405
    assert browser.post(f"/hosts/404/{mine.pk}/toggle/").status_code == 302
    assert not DeadHost.objects.get(pk=mine.pk).enabled and AuditEntry.objects.get().action == "disabled"
    assert browser.post(f"/hosts/404/{theirs.pk}/toggle/").status_code == 404
    assert "theirs.home.test" not in browser.get("/hosts/404/").content.decode()


def test_a_404_host_for_a_taken_domain_is_refused(admin):
    ProxyHost.objects.create(domains=["app.home.test"], upstreams=[{"scheme": "http", "host": "10.0.0.1", "port": 80, "weight": 1}])
    response = admin.post("/hosts/404/add/", {"domains": "app.home.test", "enabled": "on"})
    assert "already used by proxy host" in str(response.context["form"].errors["domains"])
    assert not DeadHost.objects.exists()


# -- streams ---------------------------------------------------------------------------


def test_a_stream_is_created_and_edited(admin):
    assert admin.post("/hosts/streams/add/", {"listen": "2222", "protocol": "tcp", "upstream": "10.0.0.5:22", "enabled": "on"}).status_code == 302
    stream = Stream.objects.get()
    assert (stream.listen, stream.upstream_host, stream.upstream_port) == (2222, "10.0.0.5", 22)
    assert admin.get(f"/hosts/streams/{stream.pk}/edit/").context["form"].initial["upstream"] == "10.0.0.5:22"
    admin.post(f"/hosts/streams/{stream.pk}/edit/", {"listen": "2222", "protocol": "tcp", "upstream": "[fd00::5]:2022", "enabled": "on"})
    stream.refresh_from_db()
    assert (stream.upstream_host, stream.upstream_port) == ("fd00::5", 2022)
    assert [entry.action for entry in AuditEntry.objects.order_by("id")] == ["created", "updated"]


@pytest.mark.parametrize("data, field, message", [
    ({"listen": "70000", "upstream": "10.0.0.5:22"}, "listen", "listen: "),
    ({"listen": "2222", "upstream": "10.0.0.5"}, "upstream", "must look like host:port"),
    ({"listen": "5353", "upstream": "10.0.0.5:53"}, "listen", "tcp port 5353 is already used by stream"),
])
def test_a_bad_stream_is_refused_on_its_field(admin, data, field, message):
    Stream.objects.create(listen=5353, upstream_host="10.0.0.9", upstream_port=53)
    response = admin.post("/hosts/streams/add/", {"protocol": "tcp", "enabled": "on", **data})
    assert any(message in error for error in response.context["form"].errors[field]), response.context["form"].errors
    assert Stream.objects.count() == 1 and not AuditEntry.objects.exists()


# -- access lists ----------------------------------------------------------------------


def test_an_access_list_is_created_with_hashed_passwords_and_rules(as_user):
    creator = user("manager", access_lists="manage")
    response = as_user(creator).post("/access-lists/add/", {
        "name": "family", "satisfy": "all", "pass_auth": "on", "users": "alice:wonderland\nbob:builder",
        "rules": "allow 192.168.1.0/24\ndeny all"})
    assert response.status_code == 302
    saved = AccessList.objects.get()
    assert (saved.satisfy, saved.pass_auth, saved.owner) == ("all", True, creator)
    alice = saved.users.get(username="alice")
    assert check_password("wonderland", alice.password_hash) and alice.password_hash != "wonderland"
    assert [(r.action, r.source) for r in saved.rules.all()] == [("allow", "192.168.1.0/24"), ("deny", "all")]
    entry = AuditEntry.objects.get()
    assert entry.action == "created" and entry.after["users"] == ["alice", "bob"] and "wonderland" not in str(entry.after)


def test_editing_keeps_passwords_not_given_and_never_shows_them(admin):
    access_list = AccessList.objects.create(name="family")
    AccessListUser.objects.create(access_list=access_list, username="alice", password_hash="md5$salt$old")
    page = admin.get(f"/access-lists/{access_list.pk}/edit/")
    assert page.context["form"].initial["users"] == "alice" and "md5$salt" not in page.content.decode()
    response = admin.post(f"/access-lists/{access_list.pk}/edit/", {"name": "family", "satisfy": "any", "users": "alice\ncarol:secret-one"})
    assert response.status_code == 302
    assert access_list.users.get(username="alice").password_hash == "md5$salt$old"
    assert check_password("secret-one", access_list.users.get(username="carol").password_hash)


@pytest.mark.parametrize("data, field, message", [
    ({"users": "dave"}, "users", "a new user needs a password"),
    ({"rules": "allow 300.1.1.1"}, "rules", "invalid IP address or CIDR"),
    ({"rules": "permit all"}, "rules", "expected a rule like"),
])
def test_a_bad_access_list_is_refused_on_its_field_without_echoing_passwords(admin, data, field, message):
    response = admin.post("/access-lists/add/", {"name": "family", "satisfy": "any", "users": "erin:hunter22", **data})
    assert any(message in error for error in response.context["form"].errors[field]), response.context["form"].errors
    assert "hunter22" not in response.content.decode()
    assert not AccessList.objects.exists()


def test_an_access_list_in_use_is_not_deleted(admin):
    access_list = AccessList.objects.create(name="family")
    ProxyHost.objects.create(domains=["app.home.test"], upstreams=[{"scheme": "http", "host": "10.0.0.1", "port": 80, "weight": 1}],
                             access_list=access_list)
    assert admin.get(f"/access-lists/{access_list.pk}/delete/").status_code == 405
    response = admin.post(f"/access-lists/{access_list.pk}/delete/", follow=True)
    assert "is used by app.home.test" in response.content.decode()
    assert AccessList.objects.exists() and not AuditEntry.objects.exists()


def test_access_lists_require_their_permission(as_user):
    access_list = AccessList.objects.create(name="family")
    browser = as_user(user("viewer", access_lists="view"))
    assert "family" in browser.get("/access-lists/").content.decode()
    assert browser.get("/access-lists/add/").status_code == 403
    assert browser.post(f"/access-lists/{access_list.pk}/delete/").status_code == 403
    assert as_user(user("outsider")).get("/access-lists/").status_code == 403
