"""One-click certificates against the real thing: pebble (Let's Encrypt's test CA) validates
HTTP-01 against the real engine (pebble's httpPort is the engine's port), names resolve to
127.0.0.1 through pebble-challtestsrv, certbot runs as a subprocess with our hooks, and the
Celery path runs in a real worker process."""
import http.client
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from manager.certificates.acme import issue
from manager.certificates.models import AcmeChallenge, Certificate
from manager.certificates.tasks import renew_due_certificates
from manager.hosts.models import ProxyHost, Settings
from tests.e2e.acme_support import ChallTestSrv, Pebble, make_api_certificate, verify_chain, wait_until
from tests.live import ROOT, RedisServer, runproxy, start_upstream, stop_upstream

pytestmark = [
    pytest.mark.e2e, pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("pebble") or not shutil.which("pebble-challtestsrv"),
                       reason="pebble is not installed (apt-get install pebble)"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, django_db_setup):
    """Redis, the engine, challtestsrv and pebble, plus the environment certbot's hooks and the
    worker inherit (the same SQLite file, Redis and engine port as this process)."""
    base = tmp_path_factory.mktemp("acme")
    make_api_certificate(base)
    redis = RedisServer(base).start()
    database = connection.settings_dict["NAME"]
    engine = runproxy(database, base / "engine-data", redis_url=redis.url)
    dns = ChallTestSrv()
    pebble = Pebble(base, engine.port, dns.dns)
    data_dir = base / "data"
    data_dir.mkdir()
    env = {"DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": redis.url, "GATEHOUSE_DATA_DIR": str(data_dir),
           "GATEHOUSE_HTTP_PORT": str(engine.port), "DJANGO_SETTINGS_MODULE": "manager.settings"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with override_settings(REDIS_URL=redis.url, DATA_DIR=data_dir, HTTP_PORT=engine.port):
            engine.wait_for(lambda response, body: b"no host configured" in body, host="nothing.example.test")
            yield {"engine": engine, "pebble": pebble, "dns": dns, "redis": redis, "env": env, "base": base}
    for part in (pebble, dns, redis):
        part.stop()
    engine.stop()


@pytest.fixture
def acme_settings(world):
    config = Settings.load()
    config.acme_email = "admin@example.test"
    config.acme_directory = world["pebble"].directory_url
    config.acme_ca_bundle = world["pebble"].ca_bundle
    config.save()
    return config


def new_certificate(name, *domains):
    return Certificate.objects.create(name=name, provider="letsencrypt", domains=list(domains))


def test_requestcert_issues_a_certificate_through_the_engine_that_verifies_against_pebbles_root(world, acme_settings):
    out = io.StringIO()
    call_command("requestcert", "app", "-d", "app.example.test", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("app: validating app.example.test with https://127.0.0.1:")
    assert lines[-1].startswith("app: issued, expires ")
    certificate = Certificate.objects.get(name="app")
    assert (certificate.status, certificate.progress, certificate.last_error) == ("valid", "issued", "")
    leaf = verify_chain(certificate, world["pebble"].root())
    assert certificate.domains == ["app.example.test"]
    assert certificate.expires_at == leaf.not_valid_after_utc
    assert "PRIVATE KEY" in certificate.key_pem
    assert not AcmeChallenge.objects.exists(), "the cleanup hook removes the token"

    # The engine serves it over HTTPS; a client trusting only pebble's root accepts the chain.
    upstream = start_upstream("app")
    try:
        ProxyHost.objects.create(domains=["app.example.test"], certificate=certificate, upstreams=[
            {"scheme": "http", "host": "127.0.0.1", "port": upstream.server_address[1], "weight": 1}])
        context = ssl.create_default_context(cadata=world["pebble"].root().public_bytes(Encoding.PEM).decode())
        wait_until(lambda: https_get(world["engine"], context, "app.example.test").startswith(b"{"), 10,
                   "the engine to serve the issued certificate")
    finally:
        stop_upstream(upstream)


def https_get(engine, context, name):
    https_port = int(engine.proc.args[engine.proc.args.index("--https-port") + 1])
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw:
        try:
            sock = context.wrap_socket(raw, server_hostname=name)
        except ssl.SSLError:
            return b""            # still the self-signed default certificate: not reloaded yet
        with sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.read()


def test_a_failed_validation_records_the_acme_servers_reason(world, acme_settings):
    # The name resolves to 127.0.0.2, where nothing listens: pebble's connection is refused.
    world["dns"].post("/add-a", {"host": "down.example.test", "addresses": ["127.0.0.2"]})
    certificate = issue(new_certificate("down", "down.example.test").pk)
    assert (certificate.status, certificate.progress) == ("error", "failed")
    assert certificate.last_error.startswith("down.example.test: the ACME server could not reach http://down.example.test")
    assert "/.well-known/acme-challenge/" in certificate.last_error
    assert "connection refused" in certificate.last_error
    assert Certificate.objects.get(pk=certificate.pk).last_error == certificate.last_error


def test_a_wildcard_is_refused_before_certbot_runs(world, acme_settings):
    certificate = issue(new_certificate("wild", "*.example.test").pk)
    assert certificate.status == "error"
    assert "DNS-01" in certificate.last_error


def test_renewal_replaces_a_certificate_close_to_expiry(world, acme_settings):
    certificate = issue(new_certificate("renew", "renew.example.test").pk)
    first_serial = x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).serial_number
    assert renew_due_certificates() == {}, "nothing is due yet"

    Certificate.objects.filter(pk=certificate.pk).update(expires_at=timezone.now() + timedelta(days=10))
    assert renew_due_certificates() == {"renew": "issued"}
    renewed = Certificate.objects.get(pk=certificate.pk)
    assert x509.load_pem_x509_certificate(renewed.certificate_pem.encode()).serial_number != first_serial
    assert renewed.expires_at > timezone.now() + timedelta(days=30)
    verify_chain(renewed, world["pebble"].root())


def test_a_failed_renewal_is_recorded_and_the_old_certificate_kept(world, acme_settings):
    certificate = issue(new_certificate("keep", "keep.example.test").pk)
    old_pem = certificate.certificate_pem
    Certificate.objects.filter(pk=certificate.pk).update(expires_at=timezone.now() + timedelta(days=5))
    world["dns"].post("/add-a", {"host": "keep.example.test", "addresses": ["127.0.0.2"]})
    try:
        assert renew_due_certificates() == {"keep": "failed"}
    finally:
        world["dns"].post("/clear-a", {"host": "keep.example.test"})
    kept = Certificate.objects.get(pk=certificate.pk)
    assert (kept.status, kept.certificate_pem) == ("valid", old_pem)
    assert "keep.example.test" in kept.last_error


def test_requestcert_queue_is_issued_by_a_real_celery_worker(world, acme_settings):
    env = {**os.environ, **world["env"]}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "manager", "worker", "--pool", "solo", "--concurrency", "1",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        queued = subprocess.run([sys.executable, "manage.py", "requestcert", "queued", "-d", "queued.example.test",
                                 "--queue"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert queued.returncode == 0, queued.stderr
        assert "queued (task " in queued.stdout
        wait_until(lambda: Certificate.objects.get(name="queued").progress in ("issued", "failed"), 90,
                   "the worker to issue the certificate")
        certificate = Certificate.objects.get(name="queued")
        assert (certificate.status, certificate.progress, certificate.last_error) == ("valid", "issued", "")
        verify_chain(certificate, world["pebble"].root())
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
