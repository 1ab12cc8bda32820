"""Engine status: the ConfigWatcher status hook, EngineNode reports, the "applied" rule, host
states, and the "Test upstream" probe against real sockets on 127.0.0.1."""
import datetime
import http.server
import socket
import ssl
import threading

import pytest
from django.utils import timezone
from twisted.internet import defer
from twisted.internet.task import Clock

from manager.dashboard import probe, status
from manager.dashboard.models import HostChange
from manager.hosts.models import EngineNode, ProxyHost, UpstreamError
from proxy_engine.reload import ConfigWatcher
from tests.engine.support import document
from tests.live import free_port

# -- the engine hook (no Django) -------------------------------------------------------------


def inline(f, *args):
    return defer.maybeDeferred(f, *args)


def watcher_with(doc_holder, reports):
    clock = Clock()
    watcher = ConfigWatcher(clock, lambda: doc_holder["doc"], lambda: doc_holder["doc"]["revision"], lambda s: None,
                            run_in_thread=inline, on_status=lambda *a: reports.append(a), status_interval=30)
    return clock, watcher


def test_the_watcher_reports_each_swap_each_new_error_and_a_heartbeat():
    holder, reports = {"doc": document(revision=1)}, []
    clock, watcher = watcher_with(holder, reports)
    watcher.start()
    assert reports == [(1, None, (), None)]
    bad = document(revision=2)
    bad["proxy_hosts"][0]["upstreams"][0]["port"] = 70000
    holder["doc"] = bad
    clock.advance(2)
    revision, error, hosts, health = reports[-1]
    assert revision == 1 and "proxy_hosts[0].upstreams[0].port" in error
    assert hosts == (bad["proxy_hosts"][0]["id"],)
    count = len(reports)
    clock.advance(10)                      # the same error again: not reported again yet
    assert len(reports) == count
    clock.advance(30)                      # heartbeat
    assert len(reports) == count + 1 and reports[-1][1] == error
    holder["doc"] = document(revision=3)
    clock.advance(2)
    assert reports[-1] == (3, None, (), None)


def test_a_failing_status_hook_does_not_stop_the_watcher():
    def broken(*args):
        raise RuntimeError("database down")
    holder = {"doc": document(revision=1)}
    served = []
    watcher = ConfigWatcher(Clock(), lambda: holder["doc"], lambda: 1, served.append, run_in_thread=inline,
                            on_status=broken)
    watcher.start()
    assert [s.revision for s in served] == [1] and watcher.revision == 1


# -- EngineNode and the rule ---------------------------------------------------------------

def make_host(domain="app.home.test", enabled=True, port=3000):
    return ProxyHost.objects.create(domains=[domain], enabled=enabled,
                                    upstreams=[{"scheme": "http", "host": "127.0.0.1", "port": port, "weight": 1}])


@pytest.mark.django_db
def test_report_upserts_one_row_per_worker_and_keeps_the_error_time():
    t0 = timezone.now()
    EngineNode.report("gw:1", 4, None, now=t0)
    node = EngineNode.report("gw:1", 4, "invalid snapshot: x", [7], now=t0 + datetime.timedelta(seconds=5))
    assert node.last_error_at == t0 + datetime.timedelta(seconds=5) and node.error_hosts == [7]
    node = EngineNode.report("gw:1", 4, "invalid snapshot: x", [7], now=t0 + datetime.timedelta(seconds=40))
    assert node.last_error_at == t0 + datetime.timedelta(seconds=5) and node.served_at == t0
    node = EngineNode.report("gw:1", 5, None, now=t0 + datetime.timedelta(seconds=50))
    assert (node.served_revision, node.last_error, node.last_error_at) == (5, "", None)
    assert EngineNode.objects.count() == 1
    assert list(EngineNode.live(now=t0 + datetime.timedelta(minutes=2, seconds=49))) == [node]
    assert not EngineNode.live(now=t0 + datetime.timedelta(minutes=3)).exists()


@pytest.mark.django_db
def test_applied_once_every_live_worker_serves_the_hosts_change_revision():
    host = make_host()
    HostChange.objects.create(proxy_host=host, revision=5)
    host = ProxyHost.objects.get(pk=host.pk)
    assert status.host_status(host).state == status.NO_ENGINE
    EngineNode.report("gw:1", 4, None)
    EngineNode.report("gw:2", 5, None)
    assert status.host_status(host).state == status.PENDING
    EngineNode.report("gw:1", 6, None)
    assert status.host_status(host).state == status.APPLIED
    EngineNode.objects.filter(name="gw:2").update(served_revision=3, updated_at=timezone.now() - datetime.timedelta(minutes=5))
    assert status.host_status(host).state == status.APPLIED          # a gone worker does not count


@pytest.mark.django_db
def test_a_host_without_a_recorded_change_needs_the_current_revision():
    host = make_host()                       # TestCase-style transaction: no on_commit, no HostChange
    from manager.hosts.revision import current_revision
    EngineNode.report("gw:1", current_revision() - 1, None)
    assert status.host_status(host).state == status.PENDING
    EngineNode.report("gw:1", current_revision(), None)
    assert status.host_status(host).state == status.APPLIED


@pytest.mark.django_db
def test_the_engines_error_shows_on_the_host_it_names_and_on_changes_it_blocks():
    named, other, old = make_host("a.home.test"), make_host("b.home.test"), make_host("c.home.test")
    HostChange.objects.create(proxy_host=named, revision=7)
    HostChange.objects.create(proxy_host=other, revision=7)
    HostChange.objects.create(proxy_host=old, revision=2)
    EngineNode.report("gw:1", 6, "invalid snapshot: proxy_hosts[0].upstreams: needs at least one upstream", [named.pk])
    result = status.host_status(ProxyHost.objects.get(pk=named.pk))
    assert result.state == status.ERROR and "needs at least one upstream" in result.error and result.error_node == "gw:1"
    assert status.host_status(ProxyHost.objects.get(pk=other.pk)).state == status.ERROR
    assert status.host_status(ProxyHost.objects.get(pk=old.pk)).state == status.APPLIED


@pytest.mark.django_db(transaction=True)
def test_saving_a_host_records_the_revision_of_its_change():
    from manager.hosts.revision import current_revision
    host = make_host()
    assert HostChange.objects.get(proxy_host=host).revision == current_revision()
    host.enabled = False
    host.save()
    assert HostChange.objects.get(proxy_host=host).revision == current_revision()


@pytest.mark.django_db
def test_host_states_serving_disabled_error():
    serving, disabled, failing, named = make_host("a.t"), make_host("b.t", enabled=False), make_host("c.t"), make_host("d.t")
    UpstreamError.objects.create(proxy_host=failing, request_id="r-1", upstream="127.0.0.1:1", status=502, cause="x")
    UpstreamError.objects.create(proxy_host=serving, request_id="r-2", upstream="127.0.0.1:1", status=502, cause="x",
                                 created_at=timezone.now() - datetime.timedelta(hours=1))
    EngineNode.report("gw:1", 1, "invalid snapshot", [named.pk])
    states = status.host_states(ProxyHost.objects.all())
    assert states == {serving.pk: "serving", disabled.pk: "disabled", failing.pk: "error", named.pk: "error"}


# -- the probe ------------------------------------------------------------------------------

class Hello(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(204 if self.headers["Host"] == "app.home.test" else 421)
        self.end_headers()


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_server():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, ca.cert_pem.bytes().decode()
    server.shutdown()
    server.server_close()


def test_probe_a_closed_port_explains_the_502():
    port = free_port()
    result = probe.probe({"scheme": "http", "host": "127.0.0.1", "port": port}, "app.home.test")
    assert not result.ok and result.status == 502
    assert result.summary == f"the engine would answer 502: connection refused by 127.0.0.1:{port}"


def test_probe_an_unknown_name_explains_the_502():
    result = probe.probe({"scheme": "http", "host": "does-not-exist.invalid", "port": 80}, "app.home.test")
    assert not result.ok and result.status == 502 and "host name does-not-exist.invalid was not found" in result.summary


def test_probe_a_silent_listener_explains_the_504():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = probe.probe({"scheme": "http", "host": "127.0.0.1", "port": port}, "app.home.test",
                             response_timeout=0.3)
    assert not result.ok and result.status == 504 and "sent no answer within 0.3 s" in result.summary


def test_probe_a_working_http_upstream_with_the_hosts_domain(http_server):
    port = http_server.server_address[1]
    result = probe.probe({"scheme": "http", "host": "127.0.0.1", "port": port}, "app.home.test")
    assert result.ok and result.status == 204 and result.address == f"127.0.0.1:{port}"
    assert "answered 204" in result.summary and "would pass this answer on" in result.summary


def test_probe_tls_with_the_hosts_ca_and_verify_settings(tls_server):
    server, ca_pem = tls_server
    port = server.server_address[1]
    untrusted = probe.probe({"scheme": "https", "host": "localhost", "port": port}, "app.home.test")
    assert not untrusted.ok and untrusted.status == 502
    assert "TLS handshake with the upstream failed: its certificate was not accepted" in untrusted.summary
    trusted = probe.probe({"scheme": "https", "host": "localhost", "port": port, "verify": True, "ca_pem": ca_pem},
                          "app.home.test")
    assert trusted.ok and trusted.status == 204
    unverified = probe.probe({"scheme": "https", "host": "localhost", "port": port, "verify": False}, "app.home.test")
    assert unverified.ok and unverified.status == 204
    plain = probe.probe({"scheme": "http", "host": "localhost", "port": port}, "app.home.test", response_timeout=1)
    assert not plain.ok and plain.status in (502, 504)
