"""The proxy host form's Locations rows editor: each row is a location (path, upstreams and
cache / compression / rate limit / header rule overrides that inherit the host's until set);
the rows become the configuration item's `locations` and the schema checks them, so an
error reads like an import error and lands on the row's field."""
import pytest
import trustme
import yaml

from manager.audit.models import AuditEntry
from manager.configuration import exporter
from manager.configuration.importer import import_yaml
from manager.hosts.models import Location, ProxyHost
from manager.hosts.revision import current_revision
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
UPSTREAMS = [{"scheme": "http", "host": "10.0.1.20", "port": 8096, "weight": 1}]
ROW_FIELDS = ("path", "upstreams", "cache_mode", "cache_ttl", "cache_stale_if_error", "compression_mode", "compression",
              "rate_mode", "rate_requests", "rate_per", "rate_burst", "rate_key", "rate_key_header", "headers_mode",
              "headers", "remove")


def user(name, level="hidden", superuser=False):
    return make_user(name, superuser, proxy_hosts=level)


def host(domain="media.home.test", **fields):
    return ProxyHost.objects.create(domains=[domain], **{"upstreams": UPSTREAMS, **fields})


def form_data(*rows, **overrides):
    """A post of the proxy host form with these location rows (dicts of row fields; index
    = position unless a row says `index`)."""
    data = {"domains": "media.home.test", "upstreams": "http://10.0.1.20:8096", "enabled": "on",
            "lb_policy": "round_robin", "connect_timeout": "5s", "response_timeout": "1m", "rate_key": "ip",
            "locations-editor": "1", "locations-index": []}
    for position, row in enumerate(rows):
        row = dict(row)
        index = row.pop("index", position)
        data["locations-index"].append(str(index))
        defaults = {"cache_mode": "inherit", "compression_mode": "inherit", "rate_mode": "inherit",
                    "headers_mode": "inherit", "rate_key": "ip"}
        for name, value in {**defaults, **row}.items():
            data[f"locations-{index}-{name}"] = value
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def rows_of(form):
    """The rows of a rendered form, as a browser would post them back unchanged."""
    rows = []
    for row in form.location_rows:
        values = {"index": row.index}
        for name in ROW_FIELDS:
            value = row[name].value()
            if value not in (None, False, "", []):
                values[name] = "on" if value is True else value
        rows.append(values)
    return rows


def host_fields(form):
    data = {}
    for name, value in form.initial.items():
        if value in (None, False, "", []):
            continue
        data[name] = "on" if value is True else value
    return data


def stored(path):
    return Location.objects.values("upstreams", "cache", "compression", "rate_limit", "headers").get(path=path)


API_ROW = {"path": "/api/", "upstreams": "http://10.0.1.30:8080 weight=2\nhttp://10.0.1.31:8080",
           "cache_mode": "on", "cache_ttl": "1m", "cache_stale_if_error": "1h",
           "compression_mode": "on", "compression": ["br", "zstd"],
           "rate_mode": "custom", "rate_requests": "10", "rate_per": "1m", "rate_burst": "5", "rate_key": "header",
           "rate_key_header": "X-Api-Key",
           "headers_mode": "custom", "headers": "request: {set: {X-Env: api}}\nresponse: {remove: [Server]}"}
STATIC_ROW = {"path": "/static/", "cache_mode": "off", "compression_mode": "off"}


# -- the page ---------------------------------------------------------------------------


def test_the_add_page_has_the_rows_editor_and_no_locations_textarea(admin):
    page = admin.get("/hosts/add/").content.decode()
    assert "<legend>Locations</legend>" in page and 'name="locations-editor"' in page
    assert 'name="locations"' not in page
    assert 'hx-get="/hosts/location-row/"' in page and "Add location" in page
    # Without JavaScript: one empty row to fill in (rendered only by browsers without it).
    noscript = page[page.index("<noscript>"):page.index("</noscript>")]
    assert 'name="locations-0-path"' in noscript and 'name="locations-index" value="0"' in noscript


def test_the_blank_row_follows_the_rows_on_the_page_and_needs_the_manage_right(admin, client, as_user):
    response = admin.get("/hosts/location-row/", {"locations-index": ["0", "3"]})
    page = response.content.decode()
    assert response.status_code == 200 and 'name="locations-4-path"' in page and "autofocus" in page
    assert 'name="locations-index" value="4"' in page and "New location" in page
    for name in ("cache_mode", "compression_mode", "rate_mode", "headers_mode", "remove"):
        assert f'for="id_locations-4-{name}"' in page, name        # every control has its label
    client.logout()
    assert client.get("/hosts/location-row/").status_code == 302
    assert as_user(user("viewer", "view")).get("/hosts/location-row/").status_code == 403


def test_row_indexes_that_are_not_small_numbers_are_ignored(admin):
    page = admin.get("/hosts/location-row/", {"locations-index": ["²", "-1", "x", "9999999", "2"]}).content.decode()
    assert 'name="locations-3-path"' in page
    data = form_data({"path": "/api/"})
    data["locations-index"] += ["²", "-1", "9999999"]
    assert admin.post("/hosts/add/", data).status_code == 302
    assert list(Location.objects.values_list("path", flat=True)) == ["/api/"]


def test_the_edit_page_shows_each_location_as_a_row(admin):
    item = host(compression=["gzip"])
    Location.objects.create(proxy_host=item, position=0, path="/api/", cache={"enabled": False, "default_ttl": 0.0},
                            compression=[], rate_limit={"requests": 3, "per": 1.0, "key": "header:X-Key", "burst": 1})
    Location.objects.create(proxy_host=item, position=1, path="/static/", upstreams=UPSTREAMS)
    response = admin.get(f"/hosts/{item.pk}/edit/")
    page = response.content.decode()
    rows = response.context["form"].location_rows
    assert [row.initial["path"] for row in rows] == ["/api/", "/static/"]
    assert rows[0].initial["cache_mode"] == "off" and rows[0].initial["compression_mode"] == "off"
    assert rows[0].initial["rate_mode"] == "custom" and rows[0].initial["rate_key_header"] == "X-Key"
    assert rows[1].initial["cache_mode"] == "inherit" and rows[1].initial["upstreams"] == "http://10.0.1.20:8096"
    assert "Location <code>/api/</code>" in page and 'value="/static/"' in page
    assert 'name="locations-index" value="1"' in page


# -- create ---------------------------------------------------------------------------


def test_creating_a_host_with_two_locations_stores_every_override_kind(admin):
    revision = current_revision()
    response = admin.post("/hosts/add/", form_data(API_ROW, STATIC_ROW))
    assert response.status_code == 302, response.context["form"].location_rows[0].errors
    saved = ProxyHost.objects.get()
    assert list(saved.locations.values_list("path", "position")) == [("/api/", 0), ("/static/", 1)]
    assert stored("/api/") == {
        "upstreams": [{"scheme": "http", "host": "10.0.1.30", "port": 8080, "weight": 2},
                      {"scheme": "http", "host": "10.0.1.31", "port": 8080, "weight": 1}],
        "cache": {"enabled": True, "default_ttl": 60.0, "stale_if_error": 3600.0},
        "compression": ["br", "zstd"],
        "rate_limit": {"requests": 10, "per": 60.0, "key": "header:X-Api-Key", "burst": 5},
        "headers": {"request": {"set": {"X-Env": "api"}, "remove": []}, "response": {"set": {}, "remove": ["Server"]}},
    }
    assert stored("/static/") == {"upstreams": [], "cache": {"enabled": False, "default_ttl": 0.0, "stale_if_error": 0.0},
                                  "compression": [], "rate_limit": None, "headers": None}
    entry = AuditEntry.objects.get()
    assert entry.action == "created" and [loc["path"] for loc in entry.after["locations"]] == ["/api/", "/static/"]
    assert current_revision() > revision


def test_inherit_and_off_are_different_stored_values(admin):
    inherit = {"path": "/inherit/"}
    off = {"path": "/off/", "cache_mode": "off", "compression_mode": "off"}
    custom_empty = {"path": "/bare/", "headers_mode": "custom", "headers": "", "compression_mode": "on"}
    assert admin.post("/hosts/add/", form_data(inherit, off, custom_empty,
                                               cache_enabled="on", cache_ttl="5m", compression=["gzip"])).status_code == 302
    assert stored("/inherit/") == {"upstreams": [], "cache": None, "compression": None, "rate_limit": None,
                                   "headers": None}
    assert stored("/off/")["cache"]["enabled"] is False and stored("/off/")["compression"] == []
    # "Its own rules" left empty: no header rules on this path (the host's are not used);
    # "These encodings" with none ticked is Off.
    bare = stored("/bare/")
    assert bare["headers"] == {"request": {"set": {}, "remove": []}, "response": {"set": {}, "remove": []}}
    assert bare["compression"] == [] and bare["cache"] is None
    # What the exporter writes: inherit leaves the key out, off writes it.
    exported = {loc["path"]: loc for loc in exporter.export_document()["proxy_hosts"][0]["locations"]}
    assert exported["/inherit/"] == {"path": "/inherit/", "upstreams": []}
    assert exported["/off/"] == {"path": "/off/", "upstreams": [], "cache": {"enabled": False, "default_ttl": "0s"},
                                 "compression": []}


def test_an_empty_row_is_left_out_and_a_removed_row_is_not_checked(admin):
    response = admin.post("/hosts/add/", form_data(
        {"path": "/api/"}, {}, {"path": "not-a-path", "cache_ttl": "soon", "cache_mode": "on", "remove": "on"}))
    assert response.status_code == 302
    assert list(Location.objects.values_list("path", flat=True)) == ["/api/"]


# -- edit -------------------------------------------------------------------------------


def test_editing_adds_removes_and_changes_locations(admin):
    item = host()
    Location.objects.create(proxy_host=item, position=0, path="/a/", cache={"enabled": True, "default_ttl": 60.0})
    Location.objects.create(proxy_host=item, position=1, path="/b/", compression=["gzip"])
    Location.objects.create(proxy_host=item, position=2, path="/c/", rate_limit={"requests": 5, "per": 1.0, "key": "ip",
                                                                                 "burst": 0})
    form = admin.get(f"/hosts/{item.pk}/edit/").context["form"]
    rows = rows_of(form)
    rows[1]["remove"] = "on"                                            # remove /b/
    rows[2].update(rate_mode="inherit", cache_mode="off")               # change /c/
    rows.append({"index": 7, "path": "/d/", "upstreams": "http://10.0.1.40:80", "compression_mode": "on",
                 "compression": ["gzip"]})                              # add /d/
    data = {**form_data(*rows), **{k: v for k, v in host_fields(form).items()}}
    response = admin.post(f"/hosts/{item.pk}/edit/", data)
    assert response.status_code == 302, [row.errors for row in response.context["form"].location_rows]
    assert list(item.locations.values_list("path", "position")) == [("/a/", 0), ("/c/", 1), ("/d/", 2)]
    assert stored("/a/")["cache"] == {"enabled": True, "default_ttl": 60.0, "stale_if_error": 0.0}
    assert stored("/c/") == {"upstreams": [], "cache": {"enabled": False, "default_ttl": 0.0, "stale_if_error": 0.0},
                             "compression": None, "rate_limit": None, "headers": None}
    assert stored("/d/")["upstreams"] == [{"scheme": "http", "host": "10.0.1.40", "port": 80, "weight": 1}]
    entry = AuditEntry.objects.get()
    assert entry.action == "updated"
    assert [loc["path"] for loc in entry.before["locations"]] == ["/a/", "/b/", "/c/"]
    assert [loc["path"] for loc in entry.after["locations"]] == ["/a/", "/c/", "/d/"]


def test_a_post_without_the_rows_editor_keeps_the_saved_locations(admin):
    """An older client (or a script) posting only the host's fields changes nothing else."""
    item = host()
    Location.objects.create(proxy_host=item, path="/keep/", compression=[], headers={"request": {"set": {"A": "1"}}})
    form = admin.get(f"/hosts/{item.pk}/edit/").context["form"]
    before = exporter.export_document()["proxy_hosts"]
    response = admin.post(f"/hosts/{item.pk}/edit/", {**host_fields(form), "max_body_size": "1m"})
    assert response.status_code == 302, response.context["form"].errors
    after = exporter.export_document()["proxy_hosts"]
    assert after[0]["locations"] == before[0]["locations"] and after[0]["max_body_size"] == "1m"


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("row, field, message", [
    ({"path": "/b/", "cache_mode": "on", "cache_ttl": "soon"}, "cache_ttl",
     "locations[1].cache.default_ttl: invalid duration 'soon'"),
    ({"path": "/b/", "cache_mode": "on", "cache_stale_if_error": "-1s"}, "cache_stale_if_error",
     "locations[1].cache.stale_if_error"),
    ({"path": "b"}, "path", "locations[1].path: expected a path starting with /"),
    ({"path": "/a/"}, "path", "locations[1].path: location /a/ is listed twice"),
    ({"upstreams": "http://10.0.1.9"}, "path", "locations[1].path: required key is missing"),
    ({"path": "/b/", "upstreams": "ftp://10.0.1.9"}, "upstreams", "locations[1].upstreams[0]: "),
    ({"path": "/b/", "upstreams": "http://10.0.1.9 speed=2"}, "upstreams",
     "locations[1].upstreams: http://10.0.1.9 speed=2: unknown option 'speed=2'"),
    ({"path": "/b/", "rate_mode": "custom", "rate_per": "1s"}, "rate_requests",
     "locations[1].rate_limit.requests: required key is missing"),
    ({"path": "/b/", "rate_mode": "custom", "rate_requests": "ten"}, "rate_requests", "locations[1].rate_limit.requests"),
    ({"path": "/b/", "rate_mode": "custom", "rate_requests": "1", "rate_key": "header"}, "rate_key_header",
     "locations[1].rate_limit.key: name the header"),
    ({"path": "/b/", "headers_mode": "custom", "headers": "request: {set: {'Bad Header': x}}"}, "headers",
     "locations[1].headers.request.set.Bad Header: invalid header name"),
    ({"path": "/b/", "headers_mode": "custom", "headers": "request: [unclosed"}, "headers", "YAML syntax error"),
])
def test_an_error_lands_on_the_row_and_field_it_is_about(admin, row, field, message):
    response = admin.post("/hosts/add/", form_data({"path": "/a/"}, {**row, "index": 5}))
    assert response.status_code == 200
    form = response.context["form"]
    first, second = form.location_rows
    assert not first.errors and second.index == 5
    assert any(message in error for error in second.errors.get(field, [])), second.errors
    page = response.content.decode()
    assert "A location has errors" in page and 'class="location invalid" id="location-5"' in page
    assert not ProxyHost.objects.exists() and not AuditEntry.objects.exists()


def test_a_host_error_and_a_location_error_show_together(admin):
    response = admin.post("/hosts/add/", form_data({"path": "/x/", "cache_mode": "on", "cache_ttl": "soon"},
                                                   connect_timeout="soon"))
    form = response.context["form"]
    assert "connect_timeout" in form.errors
    assert any("locations[0].cache.default_ttl" in e for e in form.location_rows[0].errors["cache_ttl"])
    assert not ProxyHost.objects.exists()


# -- round trip -------------------------------------------------------------------------


CA = trustme.CA().cert_pem.bytes().decode()
DOCUMENT = """\
version: 1
proxy_hosts:
  - domains: [media.home.test]
    upstreams: ["http://10.0.1.20:8096"]
    compression: [gzip]
    cache: {enabled: true, default_ttl: 5m}
    rate_limit: {requests: 100, per: 1m}
    locations:
      - path: /api/
        upstreams: ["http://10.0.1.30:8080", {url: "http://10.0.1.31:8080", weight: 2},
                    {url: "https://10.0.1.32", verify: false}]
        cache: {enabled: true, default_ttl: 1m, stale_if_error: 1h}
        compression: [br, zstd]
        rate_limit: {requests: 10, per: 1m, burst: 5, key: "header:X-Api-Key"}
        headers: {request: {set: {X-Env: api}}, response: {remove: [Server], add: {Link: "</a.css>; rel=preload"}}}
      - {path: /static/, cache: {enabled: false, default_ttl: 10m}, compression: []}
      - {path: /inherit/}
      - {path: /bare/, headers: {}}
"""
ROWS = [
    {"path": "/api/", "upstreams": "http://10.0.1.30:8080\nhttp://10.0.1.31:8080 weight=2\nhttps://10.0.1.32 verify=false",
     "cache_mode": "on", "cache_ttl": "1m", "cache_stale_if_error": "1h", "compression_mode": "on",
     "compression": ["br", "zstd"], "rate_mode": "custom", "rate_requests": "10", "rate_per": "1m", "rate_burst": "5",
     "rate_key": "header", "rate_key_header": "X-Api-Key", "headers_mode": "custom",
     "headers": "request: {set: {X-Env: api}}\nresponse: {remove: [Server], add: {Link: '</a.css>; rel=preload'}}"},
    {"path": "/static/", "cache_mode": "off", "cache_ttl": "10m", "compression_mode": "off"},
    {"path": "/inherit/"},
    {"path": "/bare/", "headers_mode": "custom"},
]
HOST = {"compression": ["gzip"], "cache_enabled": "on", "cache_ttl": "5m", "rate_requests": "100", "rate_per": "1m"}


def test_export_after_a_form_save_equals_export_after_importing_the_same_yaml(admin):
    import_yaml(DOCUMENT)
    imported = exporter.export_document()["proxy_hosts"]
    ProxyHost.objects.all().delete()
    response = admin.post("/hosts/add/", form_data(*ROWS, **HOST))
    assert response.status_code == 302, [row.errors for row in response.context["form"].location_rows]
    assert exporter.export_document()["proxy_hosts"] == imported


def test_saving_the_edit_form_unchanged_keeps_the_export_identical(admin):
    """Including what the rows do not show: a location upstream's CA certificate."""
    data = yaml.safe_load(DOCUMENT)
    data["proxy_hosts"][0]["upstreams"].append({"url": "https://10.0.1.21", "ca_pem": CA})
    data["proxy_hosts"][0]["locations"][0]["upstreams"][2] = {"url": "https://10.0.1.32", "ca_pem": CA}
    import_yaml(yaml.safe_dump(data))
    before = exporter.export_yaml()
    assert "ca_pem" in before
    item = ProxyHost.objects.get()
    form = admin.get(f"/hosts/{item.pk}/edit/").context["form"]
    response = admin.post(f"/hosts/{item.pk}/edit/", {**form_data(*rows_of(form)), **host_fields(form)})
    assert response.status_code == 302, [row.errors for row in response.context["form"].location_rows]
    assert exporter.export_yaml() == before
    assert AuditEntry.objects.get().action == "updated"


def test_an_error_no_row_is_the_place_for_shows_above_the_rows(admin, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = None
    data = form_data(*({"path": f"/p{i}/"} for i in range(501)))
    response = admin.post("/hosts/add/", data)
    assert response.status_code == 200 and response.context["form"].location_errors == ["at most 500 locations"]
    assert "at most 500 locations" in response.content.decode() and not ProxyHost.objects.exists()
