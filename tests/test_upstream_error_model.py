"""UpstreamError.record: what runproxy does with a batch of the engine's error events."""
import datetime

import pytest

from manager.hosts.models import ProxyHost, UpstreamError
from proxy_engine.events import UpstreamErrorEvent

pytestmark = pytest.mark.django_db


def make_host(domain):
    return ProxyHost.objects.create(domains=[domain], upstreams=[{"scheme": "http", "host": "10.0.0.1", "port": 80}])


def event(host_id, n, status=502):
    return UpstreamErrorEvent(host_id, f"abcd1234-{n:x}", "10.0.0.1:80", status,
                              "connection refused by the upstream service", "Connection refused (111)",
                              1_700_000_000.0 + n)


def test_record_stores_each_event_with_its_host_and_time():
    host = make_host("a.example.test")
    UpstreamError.record([event(host.pk, 1), event(host.pk, 2, status=504)])
    rows = list(UpstreamError.objects.all())
    assert [(r.request_id, r.status) for r in rows] == [("abcd1234-2", 504), ("abcd1234-1", 502)]
    assert rows[1].proxy_host == host and rows[1].upstream == "10.0.0.1:80"
    assert rows[1].detail == "Connection refused (111)"
    assert rows[1].created_at == datetime.datetime(2023, 11, 14, 22, 13, 21, tzinfo=datetime.timezone.utc)


def test_events_of_a_host_deleted_meanwhile_are_kept_without_a_host():
    host = make_host("a.example.test")
    UpstreamError.record([event(host.pk + 100, 1)])
    assert UpstreamError.objects.get().proxy_host is None
    UpstreamError.record([event(host.pk, 2)])
    host.delete()
    assert UpstreamError.objects.filter(proxy_host__isnull=True).count() == 2


def test_only_the_latest_rows_per_host_are_kept(monkeypatch):
    monkeypatch.setattr(UpstreamError, "KEEP_PER_HOST", 3)
    busy, quiet = make_host("busy.example.test"), make_host("quiet.example.test")
    UpstreamError.record([event(quiet.pk, 0)])
    UpstreamError.record([event(busy.pk, n) for n in range(1, 4)])
    UpstreamError.record([event(busy.pk, n) for n in range(4, 6)])
    assert sorted(busy.upstream_errors.values_list("request_id", flat=True)) == [
        "abcd1234-3", "abcd1234-4", "abcd1234-5"]
    assert quiet.upstream_errors.count() == 1


def test_recording_errors_does_not_bump_the_configuration_revision():
    from manager.hosts.models import ConfigRevision

    host = make_host("a.example.test")
    before = ConfigRevision.objects.get(pk=1).revision
    UpstreamError.record([event(host.pk, 1)])
    assert ConfigRevision.objects.get(pk=1).revision == before
