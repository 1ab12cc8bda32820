"""Small server-rendered charts: per proxy host requests/s and error rate over the last
30 minutes, from `hosts.HostTraffic` (10 s buckets, summed over nodes), as SVG polylines.

`polyline(values, width, height)` is pure: values -> the `points` attribute of an SVG
`<polyline>` (x spread evenly over `width`, the largest value at the top, 0 at the bottom,
one decimal). The template draws it with `stroke="currentColor"`, so it follows the theme.
"""
from collections import defaultdict
import datetime

from django.db.models import Sum
from django.utils import timezone

BUCKET = 10                  # seconds (the engine's default traffic interval)
WINDOW = 30 * 60             # seconds shown
WIDTH, HEIGHT = 120, 24


def polyline(values, width=WIDTH, height=HEIGHT, top=None):
    """SVG polyline points for `values` (numbers, oldest first); `top` is the value drawn at
    the top edge (default: the largest value; all zero draws a flat line at the bottom)."""
    values = list(values)
    if not values:
        return ""
    top = max(values) if top is None else top
    step = width / (len(values) - 1) if len(values) > 1 else 0
    points = []
    for index, value in enumerate(values):
        y = height - (min(value, top) / top * height if top > 0 else 0)
        points.append(f"{index * step:.1f},{y:.1f}")
    return " ".join(points)


def _at(seconds):
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def host_traffic(hosts, now=None):
    """{host_id: {"points", "error_points", "rate", "error_rate", "requests", "errors"}} for the
    last `WINDOW` seconds; hosts without traffic are absent."""
    from manager.hosts.models import HostTraffic

    now = now or timezone.now()
    end = now.timestamp() // BUCKET * BUCKET          # the current bucket is not complete yet
    start = end - WINDOW
    slots = WINDOW // BUCKET
    series = defaultdict(lambda: ([0] * slots, [0] * slots))
    rows = (HostTraffic.objects
            .filter(host__in=hosts, bucket_start__gte=_at(start), bucket_start__lt=_at(end))
            .values("host_id", "bucket_start").annotate(r=Sum("requests"), e=Sum("errors")))
    for row in rows:
        index = int((row["bucket_start"].timestamp() - start) // BUCKET)
        if 0 <= index < slots:
            requests, errors = series[row["host_id"]]
            requests[index] += row["r"]
            errors[index] += row["e"]
    result = {}
    for host_id, (requests, errors) in series.items():
        total, failed = sum(requests), sum(errors)
        error_pct = [100.0 * e / r if r else 0.0 for r, e in zip(requests, errors)]
        result[host_id] = {
            "points": polyline([r / BUCKET for r in requests]),
            "error_points": polyline(error_pct, top=100.0),
            "rate": total / WINDOW,
            "last_rate": requests[-1] / BUCKET,
            "requests": total,
            "errors": failed,
            "error_rate": 100.0 * failed / total if total else 0.0,
        }
    return result
