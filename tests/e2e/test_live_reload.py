"""The whole chain: a change made through the ORM reaches a running engine process
without a restart, through Redis when it runs and through the revision poll when not."""
import json

import pytest
from django.db import connection
from django.test import override_settings

from manager.hosts.models import ProxyHost
from tests.live import RedisServer, runproxy, start_upstream, stop_upstream

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def upstream_of(server):
    return [{"scheme": "http", "host": "127.0.0.1", "port": server.server_address[1], "weight": 1}]


def default_site(response, body):
    return b"no host configured" in body


def served_by(name):
    return lambda response, body: body.startswith(b"{") and json.loads(body)["server"] == name


@pytest.fixture
def upstreams():
    servers = {name: start_upstream(name) for name in ("a", "b")}
    yield servers
    for server in servers.values():
        stop_upstream(server)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def engine(tmp_path):
    started = []

    def start(**options):
        proxy = runproxy(connection.settings_dict["NAME"], tmp_path / "engine-data", **options)
        started.append(proxy)
        proxy.wait_for(default_site, host="nothing.example.test")
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def test_orm_changes_reach_the_engine_through_redis_without_restart(upstreams, redis_server, engine):
    # The poll is an hour away: only the Redis message can bring these changes in time.
    proxy = engine(redis_url=redis_server.url, poll_interval=3600)
    with override_settings(REDIS_URL=redis_server.url):
        proxy.wait_for(default_site)

        host = ProxyHost(domains=["app.example.test"], upstreams=upstream_of(upstreams["a"]))
        host.full_clean()
        host.save()
        response, body = proxy.wait_for(served_by("a"))
        assert json.loads(body)["headers"]["host"] == "app.example.test"

        host.upstreams = upstream_of(upstreams["b"])
        host.save()
        proxy.wait_for(served_by("b"))

        host.enabled = False
        host.save()
        proxy.wait_for(default_site)


def test_orm_changes_reach_the_engine_by_polling_when_redis_is_stopped(upstreams, redis_server, engine):
    proxy = engine(redis_url=redis_server.url)
    redis_server.stop()
    with override_settings(REDIS_URL=redis_server.url):
        host = ProxyHost(domains=["app.example.test"], upstreams=upstream_of(upstreams["a"]))
        host.full_clean()
        host.save()
        proxy.wait_for(served_by("a"))

        host.upstreams = upstream_of(upstreams["b"])
        host.save()
        proxy.wait_for(served_by("b"))
    redis_server.start()
    assert proxy.proc.poll() is None, "the engine must survive Redis going away"
