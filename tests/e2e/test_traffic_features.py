"""The traffic features (issue #6) the way a user meets them, through real processes only.

One YAML document (the keys of docs/config-format.md) is loaded with the real
`manage.py importconfig` as a subprocess into the test database, one real `manage.py
runproxy` process serves it, and real upstream servers on 127.0.0.1 record every request
they receive. Each test sends requests through the engine and asserts both what the client
got and what the upstream (or the auth service) saw. The engine, the upstreams and the
imported configuration are shared by the module (each feature has its own proxy host and
its own upstreams, so the tests do not see each other's traffic).

The tests are not marked `django_db`: the database holds the imported document for the
whole module, and is emptied when the module is done. The few in-process ORM calls (the
"Purge cache" view, the engine's health reports) run under `django_db_blocker.unblock()`.
"""
import gzip
import json
import os
import subprocess
import sys

import brotli
import pytest
import zstandard
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import setup_databases, teardown_databases

from manager.hosts.models import EngineNode, ProxyHost
from tests.e2e.traffic_support import (APP_ORIGIN, SESSION, TEXT, AuthService, Recording, kill, seen, serve, url,
                                       wait_until)
from tests.live import ROOT, runproxy

pytestmark = [pytest.mark.e2e]


# -- the document, the import and the engine ---------------------------------------------

def document(s):
    return f"""\
version: 1
proxy_hosts:
  - domains: [edge.example.test]
    upstreams: ["{url(s['edge'])}"]
    security_headers: true
    hide_upstream_identity: true
    cors:
      origins: ["{APP_ORIGIN}"]
      methods: [GET, POST, PUT]
      headers: [Content-Type, X-Api-Key]
      max_age: 10m
  - domains: [auth.example.test]
    upstreams: ["{url(s['auth_upstream'])}"]
    forward_auth:
      url: "{url(s['authelia'])}/api/verify?rd=https://login.example.test"
      response_headers: [Remote-User, Remote-Groups]
      timeout: 5s
  - domains: [lb.example.test]
    upstreams: ["{url(s['lb_a'])}", "{url(s['lb_b'])}"]
    load_balancing:
      policy: round_robin
      health_check: {{path: /health, interval: 1s, timeout: 1s, expect: 200, healthy: 1, unhealthy: 2}}
  - domains: [cache.example.test]
    upstreams: ["{url(s['cache'])}"]
    cache: {{enabled: true, default_ttl: 1m}}
  - domains: [compress.example.test]
    upstreams: ["{url(s['compress'])}"]
    compression: [gzip, br, zstd]
  - domains: [limit.example.test]
    upstreams: ["{url(s['limit'])}"]
    rate_limit: {{requests: 3, per: 1m, key: ip, burst: 0}}
  - domains: [exploits.example.test]
    upstreams: ["{url(s['exploits'])}"]
    block_exploits: true
"""


def manage(database, data_dir, *args):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "GATEHOUSE_DATA_DIR": str(data_dir),
           "REDIS_URL": "", "DJANGO_SETTINGS_MODULE": "manager.settings"}
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def database(django_db_setup, django_db_blocker):
    """The test database file. pytest-django creates it only when a collected test is marked
    for the database; these tests are not (the imported document must outlive each test), so
    when this module runs alone it is created here, as pytest-django would, and removed after."""
    created = None
    with django_db_blocker.unblock():
        if connection.settings_dict["NAME"] != connection.settings_dict["TEST"]["NAME"]:
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield connection.settings_dict["NAME"]
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)
        if created is not None:
            teardown_databases(created, verbosity=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, database, django_db_blocker):
    base = tmp_path_factory.mktemp("traffic")
    servers = {name: serve(Recording, name) for name in
               ("edge", "auth_upstream", "lb_a", "lb_b", "cache", "compress", "limit", "exploits")}
    servers["authelia"] = serve(AuthService, "authelia")
    source = base / "gatehouse.yaml"
    source.write_text(document(servers))
    output = manage(database, base / "manager-data", "importconfig", str(source))
    assert "proxy hosts: 7 created" in output, output
    engine = runproxy(database, base / "engine-data", poll_interval=0.2)
    try:
        engine.wait_for(lambda r, b: r.status == 200 and b"edge" in b, timeout=30, host="edge.example.test")
        with django_db_blocker.unblock():
            hosts = {host.domains[0].split(".")[0]: host for host in ProxyHost.objects.all()}
        yield {"engine": engine, "servers": servers, "hosts": hosts, "base": base}
    finally:
        engine.stop()
        for server in servers.values():
            kill(server)


def get(world, host, path, headers=None, method="GET"):
    return world["engine"].request(method, path, host=f"{host}.example.test", headers=headers)


# -- header presets, CORS, forward auth --------------------------------------------------

def test_security_headers_and_hidden_upstream_identity(world):
    upstream = world["servers"]["edge"]
    before = len(seen(upstream))
    response, body = get(world, "edge", "/page")
    assert response.status == 200 and json.loads(body)["server"] == "edge"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert response.getheader("X-Frame-Options") == "SAMEORIGIN"
    assert response.getheader("Referrer-Policy") == "strict-origin-when-cross-origin"
    assert response.getheader("Permissions-Policy")
    assert response.getheader("X-Powered-By") is None
    assert "SecretUpstream" not in str(response.headers), "the upstream's Server header must be dropped"
    assert [e["path"] for e in seen(upstream)[before:]] == ["/page"]


def test_cors_preflight_is_answered_by_the_proxy_without_the_upstream(world):
    upstream = world["servers"]["edge"]
    before = len(seen(upstream))
    response, _ = get(world, "edge", "/api/items", method="OPTIONS", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status == 204
    assert response.getheader("Access-Control-Allow-Origin") == APP_ORIGIN
    assert "PUT" in response.getheader("Access-Control-Allow-Methods")
    assert "content-type" in response.getheader("Access-Control-Allow-Headers").lower()
    assert response.getheader("Access-Control-Max-Age") == "600"

    refused, _ = get(world, "edge", "/api/items", method="OPTIONS", headers={
        "Origin": "https://evil.example.test", "Access-Control-Request-Method": "PUT"})
    assert refused.status == 403 and refused.getheader("Access-Control-Allow-Origin") is None
    assert seen(upstream)[before:] == [], "preflights must never reach the upstream"

    # The actual request does reach it, and its answer carries the allow-origin header.
    response, body = get(world, "edge", "/api/items", method="PUT", headers={"Origin": APP_ORIGIN})
    assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == APP_ORIGIN
    assert [(e["method"], e["path"]) for e in seen(upstream)[before:]] == [("PUT", "/api/items")]


def test_forward_auth_asks_the_auth_service_and_passes_its_user_on(world):
    upstream, authelia = world["servers"]["auth_upstream"], world["servers"]["authelia"]
    before_up, before_auth = len(seen(upstream)), len(seen(authelia))

    # No session: the auth service's 401 goes back to the client; the upstream never sees it.
    response, body = get(world, "auth", "/dashboard?tab=1")
    assert response.status == 401 and b"login required" in body
    asked = seen(authelia)[before_auth:]
    assert len(asked) == 1 and asked[0]["path"].startswith("/api/verify")
    assert asked[0]["headers"]["X-Forwarded-Method"] == "GET"
    assert asked[0]["headers"]["X-Forwarded-Host"] == "auth.example.test"
    assert asked[0]["headers"]["X-Forwarded-Uri"] == "/dashboard?tab=1"
    assert seen(upstream)[before_up:] == []

    # A forged Remote-User without a session changes nothing.
    response, _ = get(world, "auth", "/dashboard", headers={"Remote-User": "admin"})
    assert response.status == 401 and seen(upstream)[before_up:] == []

    # With the session: 200, and the upstream gets the user the auth service named.
    response, body = get(world, "auth", "/dashboard", headers={"Cookie": SESSION})
    assert response.status == 200 and json.loads(body)["server"] == "auth_upstream"
    (entry,) = seen(upstream)[before_up:]
    assert entry["headers"].get_all("Remote-User") == ["alice"]
    assert entry["headers"].get_all("Remote-Groups") == ["admins,family"]

    # A client's own Remote-User is stripped, even with a valid session.
    response, _ = get(world, "auth", "/dashboard", headers={"Cookie": SESSION, "Remote-User": "admin",
                                                            "Remote-Groups": "root"})
    assert response.status == 200
    entry = seen(upstream)[before_up:][-1]
    assert entry["headers"].get_all("Remote-User") == ["alice"]
    assert entry["headers"].get_all("Remote-Groups") == ["admins,family"]
    assert len(seen(upstream)[before_up:]) == 2 and len(seen(authelia)[before_auth:]) == 4


# -- compression --------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, decode", [("br", brotli.decompress), ("gzip", gzip.decompress),
                                              ("zstd", lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data))])
def test_compression_encodes_what_the_client_accepts(world, encoding, decode):
    upstream = world["servers"]["compress"]
    before = len(seen(upstream))
    response, body = get(world, "compress", f"/text/{encoding}", headers={"Accept-Encoding": encoding})
    assert response.status == 200 and response.getheader("Content-Encoding") == encoding
    assert "accept-encoding" in response.getheader("Vary").lower()
    assert len(body) < len(TEXT) // 4 and decode(body) == TEXT
    (entry,) = seen(upstream)[before:]
    assert entry["path"] == f"/text/{encoding}"

    plain, plain_body = get(world, "compress", "/text/plain")
    assert plain.getheader("Content-Encoding") is None and plain_body == TEXT
    assert len(seen(upstream)[before:]) == 2


# -- cache and the dashboard's purge -----------------------------------------------------

def test_cache_hit_then_purge_from_the_dashboard_makes_the_next_request_a_miss(world, django_db_blocker):
    upstream, host = world["servers"]["cache"], world["hosts"]["cache"]
    first, first_body = get(world, "cache", "/cached/photo")
    assert first.status == 200 and first.getheader("X-Cache-Status") == "MISS"
    second, second_body = get(world, "cache", "/cached/photo")
    assert second.status == 200 and second.getheader("X-Cache-Status") == "HIT"
    assert second_body == first_body and json.loads(first_body)["serial"] == 1
    assert len(seen(upstream, "/cached/photo")) == 1, "the hit must not reach the upstream"

    # The "Purge cache" button: the dashboard's purge view, in this process, on the database
    # the engine reads.
    with django_db_blocker.unblock():
        admin = get_user_model().objects.create_superuser("purger", "purger@example.test", "a-long-passphrase-42")
        browser = Client()
        browser.force_login(admin)
        response = browser.post(f"/hosts/{host.pk}/status/purge/")
        assert response.status_code == 302 and response["Location"] == f"/hosts/{host.pk}/status/"
        assert ProxyHost.objects.get(pk=host.pk).cache_generation == host.cache_generation + 1

    # The engine picks the new generation up with the next revision: a MISS, fetched again.
    def after_purge():
        response, body = get(world, "cache", "/cached/photo")
        return (response.getheader("X-Cache-Status"), body) if response.getheader("X-Cache-Status") != "HIT" else None

    status, body = wait_until(after_purge, 15, "a request after the purge that is not a cache hit")
    assert status == "MISS" and json.loads(body)["serial"] == 2
    assert len(seen(upstream, "/cached/photo")) == 2
    again, again_body = get(world, "cache", "/cached/photo")
    assert again.getheader("X-Cache-Status") == "HIT" and again_body == body
    assert len(seen(upstream, "/cached/photo")) == 2


# -- load balancing and active health checks ---------------------------------------------

def reported_health(django_db_blocker, host):
    """What the engine process last reported for `host`'s upstreams ({"host:port": state})."""
    with django_db_blocker.unblock():
        states = {}
        for node in EngineNode.live():
            states.update((node.upstream_health or {}).get(str(host.pk)) or {})
        return {name: entry["state"] for name, entry in states.items()}


def served_by(response, body):
    return json.loads(body)["server"] if response.status == 200 and body.startswith(b"{") else response.status


def test_load_balancing_spreads_skips_a_killed_upstream_and_answers_502_when_none_is_healthy(
        world, django_db_blocker):
    a, b = world["servers"]["lb_a"], world["servers"]["lb_b"]
    host = world["hosts"]["lb"]
    name_a, name_b = (f"127.0.0.1:{s.server_address[1]}" for s in (a, b))
    wait_until(lambda: len(a.probes) >= 1 and len(b.probes) >= 1, 15, "the engine's /health probes on both upstreams")

    # Both up: round robin alternates between them.
    before_a, before_b = len(seen(a)), len(seen(b))
    answers = [served_by(*get(world, "lb", f"/item/{i}")) for i in range(8)]
    assert sorted(answers) == ["lb_a"] * 4 + ["lb_b"] * 4, answers
    assert len(seen(a)) - before_a == 4 and len(seen(b)) - before_b == 4
    wait_until(lambda: reported_health(django_db_blocker, host) == {name_a: "up", name_b: "up"}, 15,
               "the engine to report both upstreams up")

    # b is killed: its checks fail, the engine reports it down and sends everything to a.
    kill(b)
    wait_until(lambda: reported_health(django_db_blocker, host).get(name_b) == "down", 15,
               "the engine to report the killed upstream down")
    before_a = len(seen(a))
    answers = [served_by(*get(world, "lb", f"/after/{i}")) for i in range(6)]
    assert answers == ["lb_a"] * 6
    assert [e["path"] for e in seen(a)[before_a:]] == [f"/after/{i}" for i in range(6)]
    assert reported_health(django_db_blocker, host)[name_a] == "up"

    # b comes back on its port: one passing check brings it back into rotation.
    revived = serve(Recording, "lb_b", port=b.server_address[1])
    world["servers"]["lb_b_revived"] = revived
    wait_until(lambda: reported_health(django_db_blocker, host).get(name_b) == "up", 15,
               "the engine to report the revived upstream up")
    answers = [served_by(*get(world, "lb", f"/back/{i}")) for i in range(4)]
    assert sorted(answers) == ["lb_a"] * 2 + ["lb_b"] * 2, answers
    assert [e["path"] for e in seen(revived)] == [f"/back/{i}" for i, name in enumerate(answers) if name == "lb_b"]

    # Both killed: once the checks say so, 502 "no healthy upstream" without a connection attempt.
    kill(a)
    kill(revived)
    wait_until(lambda: reported_health(django_db_blocker, host) == {name_a: "down", name_b: "down"}, 15,
               "the engine to report both upstreams down")
    response, body = get(world, "lb", "/none")
    assert response.status == 502 and b"no healthy upstream" in body, body[:300]


# -- rate limiting and exploit blocking --------------------------------------------------

def test_rate_limit_refuses_requests_over_the_limit_before_the_upstream(world):
    upstream = world["servers"]["limit"]
    answers = [get(world, "limit", f"/api/{i}") for i in range(5)]
    assert [response.status for response, _ in answers] == [200, 200, 200, 429, 429]
    for response, _ in answers[3:]:
        retry_after = response.getheader("Retry-After")
        assert retry_after is not None and 0 < int(retry_after) <= 60, retry_after
    assert [e["path"] for e in seen(upstream)] == ["/api/0", "/api/1", "/api/2"]


def test_block_exploits_refuses_sql_injection_without_the_upstream(world):
    upstream = world["servers"]["exploits"]
    response, _ = get(world, "exploits", "/search?q=1%20union%20select%20username,%20password%20from%20users")
    assert response.status == 403
    response, _ = get(world, "exploits", "/search?q=union+select+name,pass+from+users")
    assert response.status == 403
    assert seen(upstream) == [], "a refused request must not reach the upstream"
    response, body = get(world, "exploits", "/search?q=holiday%20photos%20union%20station")
    assert response.status == 200 and json.loads(body)["path"] == "/search?q=holiday%20photos%20union%20station"
    assert [e["path"] for e in seen(upstream)] == ["/search?q=holiday%20photos%20union%20station"]
