import pytest

from manager.access.models import AccessList
from manager.audit.models import AuditEntry
from manager.hosts.models import Location, ProxyHost, RedirectionHost
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
UPSTREAM = [{"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 1}]


def user(name, level="hidden", superuser=False, visibility="all", **levels):
    return make_user(name, superuser, proxy_hosts=level, visibility=visibility, **levels)


def host(domain="app.home.test", **fields):
    return ProxyHost.objects.create(domains=[domain], **{"upstreams": UPSTREAM, **fields})


def form_data(**overrides):
    data = {"domains": "app.home.test", "upstreams": "http://10.0.1.10:3000", "enabled": "on",
            "lb_policy": "round_robin", "connect_timeout": "5s", "response_timeout": "1m"}
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_pages_require_login(client):
    assert client.get("/hosts/").status_code == 302
    assert client.get("/hosts/add/").status_code == 302


def test_an_outsider_without_permission_is_refused(as_user):
    item = host()
    browser = as_user(user("outsider"))
    assert browser.get("/hosts/").status_code == 403
    assert browser.get("/hosts/add/").status_code == 403
    assert browser.post(f"/hosts/{item.pk}/toggle/").status_code == 403


def test_a_viewer_sees_the_list_with_badges_but_cannot_change_anything(as_user):
    access_list = AccessList.objects.create(name="family")
    item = host(access_list=access_list)
    browser = as_user(user("viewer", "view"))
    page = browser.get("/hosts/").content.decode()
    assert "app.home.test" in page and "http://10.0.1.10:3000" in page and "family" in page and "HTTP only" in page
    assert "Add a proxy host" not in page and "/toggle/" not in page
    assert browser.get("/hosts/add/").status_code == 403
    assert browser.get(f"/hosts/{item.pk}/edit/").status_code == 403
    assert browser.post(f"/hosts/{item.pk}/toggle/").status_code == 403
    assert browser.post(f"/hosts/{item.pk}/delete/").status_code == 403
    assert ProxyHost.objects.get(pk=item.pk).enabled and not AuditEntry.objects.exists()


def test_visibility_own_hides_other_users_hosts(as_user):
    me = user("me", "manage", visibility="own")
    theirs = host("theirs.home.test")
    host("mine.home.test", owner=me)
    browser = as_user(me)
    page = browser.get("/hosts/").content.decode()
    assert "mine.home.test" in page and "theirs.home.test" not in page
    assert browser.get(f"/hosts/{theirs.pk}/edit/").status_code == 404
    assert browser.post(f"/hosts/{theirs.pk}/toggle/").status_code == 404
    assert browser.post(f"/hosts/{theirs.pk}/delete/").status_code == 404
    assert ProxyHost.objects.filter(pk=theirs.pk, enabled=True).exists()


def test_search_renders_only_the_matching_rows(as_user):
    host("nas.home.test")
    host("wiki.home.test", upstreams=[{"scheme": "http", "host": "10.0.9.9", "port": 80, "weight": 1}])
    browser = as_user(user("admin", superuser=True))
    page = browser.get("/hosts/?q=10.0.9", HTTP_HX_REQUEST="true").content.decode()
    assert "<h1>" not in page and "wiki.home.test" in page and "nas.home.test" not in page
    assert "Nothing matches" in browser.get("/hosts/?q=zzz", HTTP_HX_REQUEST="true").content.decode()


def test_toggle_rejects_get_and_disables_in_place_with_an_audit_entry(as_user):
    item = host()
    browser = as_user(user("manager", "manage"))
    assert browser.get(f"/hosts/{item.pk}/toggle/").status_code == 405
    response = browser.post(f"/hosts/{item.pk}/toggle/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "hostsChanged" in response["HX-Trigger"]
    assert response.content.decode().lstrip().startswith("<tr") and "Disabled" in response.content.decode()
    assert not ProxyHost.objects.get(pk=item.pk).enabled
    entry = AuditEntry.objects.get()
    assert entry.action == "disabled" and entry.before["enabled"] is True and entry.after["enabled"] is False
    browser.post(f"/hosts/{item.pk}/toggle/")
    assert ProxyHost.objects.get(pk=item.pk).enabled and AuditEntry.objects.latest("id").action == "enabled"


def test_enabling_a_host_whose_domain_is_taken_keeps_it_disabled_and_says_why(as_user):
    item = host(enabled=False)
    RedirectionHost.objects.create(domains=["app.home.test"], to="https://example.com")
    response = as_user(user("admin", superuser=True)).post(f"/hosts/{item.pk}/toggle/", HTTP_HX_REQUEST="true")
    assert "already used by redirection host" in response.content.decode()
    assert not ProxyHost.objects.get(pk=item.pk).enabled and not AuditEntry.objects.exists()


def test_creating_a_host_with_every_section_saves_it_owned_by_the_creator(as_user):
    creator = user("manager", "manage", access_lists="view")
    access_list = AccessList.objects.create(name="family")
    response = as_user(creator).post("/hosts/add/", form_data(
        domains="App.home.test\nwww.home.test", upstreams="http://10.0.1.10:3000 weight=3\nhttps://10.0.1.11 verify=false",
        **{"locations-editor": "1", "locations-index": "0", "locations-0-path": "/api",
           "locations-0-upstreams": "http://10.0.1.12:8080"}, access_list=access_list.pk,
        force_https="on", lb_policy="least_conn", health_check_path="/health", health_check_interval="30s",
        max_body_size="100m", cache_enabled="on", cache_ttl="5m", compression=["gzip", "br"], rate_requests="10",
        rate_per="1m", headers="response: {remove: [Server]}", block_exploits="on"))
    assert response.status_code == 302 and response["Location"] == "/hosts/"
    saved = ProxyHost.objects.get()
    assert saved.domains == ["app.home.test", "www.home.test"] and saved.owner == creator
    assert saved.upstreams == [{"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 3},
                               {"scheme": "https", "host": "10.0.1.11", "port": 443, "weight": 1, "verify": False}]
    assert (saved.lb_policy, saved.health_check, saved.max_body_size) == ("least_conn", {"path": "/health", "interval": 30.0, "timeout": 2.0, "expect": [200, 399], "healthy": 2, "unhealthy": 3}, 100 * 1024**2)
    assert saved.cache == {"enabled": True, "default_ttl": 300.0, "stale_if_error": 0.0} and saved.compression == ["gzip", "br"]
    assert saved.rate_limit == {"requests": 10, "per": 60.0, "key": "ip", "burst": 0}
    assert saved.headers["response"] == {"set": {}, "remove": ["Server"]}
    assert saved.access_list == access_list and saved.force_https and saved.block_exploits
    assert list(Location.objects.values_list("path", flat=True)) == ["/api"]
    entry = AuditEntry.objects.get()
    assert entry.action == "created" and entry.object_id == str(saved.pk) and entry.before is None


def test_the_edit_form_shows_the_saved_values_and_saving_updates_them(as_user):
    item = host(max_body_size=1024**2, rate_limit={"requests": 5, "per": 1.0, "key": "ip", "burst": 2})
    Location.objects.create(proxy_host=item, path="/old")
    browser = as_user(user("admin", superuser=True))
    form = browser.get(f"/hosts/{item.pk}/edit/").context["form"]
    assert form.initial["max_body_size"] == "1m" and form.initial["rate_requests"] == 5
    assert [row.initial["path"] for row in form.location_rows] == ["/old"]
    assert form.initial["upstreams"] == "http://10.0.1.10:3000"
    data = {key: value for key, value in form.initial.items() if value not in (None, False, "")}
    data.update({"domains": "new.home.test", "locations-editor": "1"})          # its one row removed
    response = browser.post(f"/hosts/{item.pk}/edit/", data)
    assert response.status_code == 302, response.context["form"].errors
    item.refresh_from_db()
    assert item.domains == ["new.home.test"] and item.rate_limit["burst"] == 2 and not item.locations.exists()
    entry = AuditEntry.objects.get()
    assert entry.action == "updated" and entry.before["domains"] == ["app.home.test"] and entry.after["domains"] == ["new.home.test"]


@pytest.mark.parametrize("overrides, field, message", [
    ({"domains": "bad name"}, "domains", "domains[0]: "),
    ({"upstreams": "ftp://10.0.1.10"}, "upstreams", "scheme must be http or https"),
    ({"upstreams": "http://10.0.1.10 weight=0"}, "upstreams", "upstreams[0].weight: weight 0 out of range"),
    ({"upstreams": "http://10.0.1.10 speed=2"}, "upstreams", "unknown option 'speed=2'"),
    ({"connect_timeout": "soon"}, "connect_timeout", "timeouts.connect: invalid duration 'soon'"),
    ({"max_body_size": "lots"}, "max_body_size", "invalid size 'lots'"),
    ({"rate_requests": "ten"}, "rate_requests", "requests must be a whole number"),
    ({"rate_per": "1s"}, "rate_requests", "required for a rate limit"),
    ({"headers": "request: {set: {'Bad Header': x}}"}, "headers", "invalid header name 'Bad Header'"),
])
def test_a_bad_form_names_the_field_and_saves_nothing(as_user, overrides, field, message):
    response = as_user(user("admin", superuser=True)).post("/hosts/add/", form_data(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert any(message in error for error in errors.get(field, [])), errors
    assert not ProxyHost.objects.exists() and not AuditEntry.objects.exists()


def test_a_domain_used_by_another_host_is_refused_on_the_domains_field(as_user):
    host()
    response = as_user(user("admin", superuser=True)).post("/hosts/add/", form_data())
    assert "app.home.test is already used by proxy host" in str(response.context["form"].errors["domains"])
    assert ProxyHost.objects.count() == 1


def test_a_user_cannot_pick_an_access_list_they_cannot_see(as_user):
    access_list = AccessList.objects.create(name="secret")
    response = as_user(user("manager", "manage")).post("/hosts/add/", form_data(access_list=access_list.pk))
    assert "access_list" in response.context["form"].errors and not ProxyHost.objects.exists()


def test_delete_rejects_get_and_records_the_deleted_host(as_user):
    item = host()
    browser = as_user(user("manager", "manage"))
    assert browser.get(f"/hosts/{item.pk}/delete/").status_code == 405
    assert browser.post(f"/hosts/{item.pk}/delete/").status_code == 302
    assert not ProxyHost.objects.exists()
    entry = AuditEntry.objects.get()
    assert entry.action == "deleted" and entry.before["domains"] == ["app.home.test"] and entry.object_id == str(item.pk)


def test_the_add_page_has_every_section_and_the_list_refreshes_after_changes(as_user):
    browser = as_user(user("manager", "manage"))
    page = browser.get("/hosts/add/").content.decode()
    for section in ("Details", "Locations", "SSL", "Access", "Traffic", "Headers", "Exploit blocking"):
        assert f"<legend>{section}</legend>" in page
    assert 'hx-trigger="hostsChanged from:body"' in browser.get("/hosts/").content.decode()
