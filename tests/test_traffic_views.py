"""Overview traffic charts: the pure SVG path function, the model's write, and the view."""
import datetime

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from manager.dashboard.sparkline import BUCKET, WINDOW, host_traffic, polyline

UPSTREAM = [{"scheme": "http", "host": "10.0.0.9", "port": 3000, "weight": 1}]
NOW = datetime.datetime(2026, 11, 28, 12, 0, 5, tzinfo=datetime.timezone.utc)


def test_polyline_maps_values_to_points_largest_at_the_top():
    assert polyline([0, 5, 10], width=100, height=20) == "0.0,20.0 50.0,10.0 100.0,0.0"


def test_polyline_all_zero_is_flat_at_the_bottom_and_top_caps_values():
    assert polyline([0, 0], width=10, height=4) == "0.0,4.0 10.0,4.0"
    assert polyline([50, 200], width=10, height=4, top=100) == "0.0,2.0 10.0,0.0"
    assert polyline([3], width=10, height=4) == "0.0,0.0"
    assert polyline([]) == ""


@pytest.mark.django_db
def test_record_stores_a_bucket_skips_deleted_hosts_and_prunes_old_rows():
    from manager.hosts.models import HostTraffic, ProxyHost

    host = ProxyHost.objects.create(domains=["a.home.test"], upstreams=UPSTREAM)
    old = NOW - datetime.timedelta(hours=25)
    HostTraffic.objects.create(host=host, node="n:1", bucket_start=old, requests=1, errors=0)
    HostTraffic.record("n:1", NOW.timestamp() - 5, {host.pk: (7, 2), 9999: (1, 0)}, now=NOW)
    [row] = HostTraffic.objects.all()
    assert (row.requests, row.errors, row.node) == (7, 2, "n:1")
    assert row.bucket_start == NOW - datetime.timedelta(seconds=5)


@pytest.mark.django_db
def test_host_traffic_sums_nodes_per_bucket():
    from manager.hosts.models import HostTraffic, ProxyHost

    host = ProxyHost.objects.create(domains=["a.home.test"], upstreams=UPSTREAM)
    bucket = NOW - datetime.timedelta(seconds=15)        # the last complete bucket (11:59:50)
    HostTraffic.objects.create(host=host, node="n:1", bucket_start=bucket, requests=30, errors=3)
    HostTraffic.objects.create(host=host, node="n:2", bucket_start=bucket, requests=10, errors=1)
    HostTraffic.objects.create(host=host, node="n:1", bucket_start=NOW - datetime.timedelta(seconds=5),
                               requests=99, errors=0)     # the current bucket: not complete, not shown
    chart = host_traffic([host], now=NOW)[host.pk]
    assert chart["requests"] == 40 and chart["errors"] == 4 and chart["error_rate"] == 10.0
    assert chart["last_rate"] == 40 / BUCKET and chart["rate"] == 40 / WINDOW
    assert chart["points"].endswith("120.0,0.0") and chart["points"].startswith("0.0,24.0")


@pytest.mark.django_db
def test_overview_charts_only_the_visible_hosts_and_the_htmx_panel_alone(client):
    from manager.accounts.models import Profile
    from manager.hosts.models import HostTraffic, ProxyHost

    viewer = get_user_model().objects.create_user("viewer", password="a-long-passphrase-42")
    Profile.objects.create(user=viewer, proxy_hosts="view", visibility="own")
    mine = ProxyHost.objects.create(domains=["mine.home.test"], upstreams=UPSTREAM, owner=viewer)
    theirs = ProxyHost.objects.create(domains=["theirs.home.test"], upstreams=UPSTREAM)
    bucket = timezone.now() - datetime.timedelta(seconds=60)
    HostTraffic.objects.create(host=mine, node="n:1", bucket_start=bucket, requests=50, errors=5)
    HostTraffic.objects.create(host=theirs, node="n:1", bucket_start=bucket, requests=777, errors=0)
    client.login(username="viewer", password="a-long-passphrase-42")
    page = client.get("/").content.decode()
    assert 'id="traffic"' in page and "<polyline" in page and "10.0%" in page and "(5 of 50)" in page
    assert "theirs.home.test" not in page and "777" not in page
    panel = client.get("/?panel=traffic", HTTP_HX_REQUEST="true").content.decode()
    assert panel.lstrip().startswith('<section class="card" id="traffic"') and "<h1>" not in panel
    assert "mine.home.test" in panel and "theirs.home.test" not in panel
