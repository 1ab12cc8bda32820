"""Dashboard pages: the overview, a proxy host's status (applied / pending / the engine's
error, upstream health as the engine workers report it, its last upstream errors, "Test
upstream", "Purge cache") and the request id lookup.

Access: proxy host pages need the "view" right for proxy hosts and the host visible to the
user (`manager.accounts.access`: 404 otherwise); "Test upstream" is POST-only (it opens
connections) and needs the same right, as it only reaches the host's configured upstreams.
"Purge cache" changes the configuration: POST-only, the "manage" right, audited, and its
cache generation bump commits in one transaction with the revision bump (the post_save
signal), so every engine worker drops the host's cached responses within one reload.
"""
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Q
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from manager.accounts import access
from manager.audit.log import record
from manager.certificates.models import Certificate
from manager.hosts.models import DeadHost, EngineNode, ProxyHost, RedirectionHost, Stream, UpstreamError
from manager.hosts.revision import current_revision

from . import health, probe, sparkline, status

LAST_ERRORS = 20


def _visible(user, kind, queryset):
    """What of `kind` the user may see; nothing (not a 403) where the kind is hidden to them."""
    if not access.allowed(user, kind, "view"):
        return queryset.none()
    return access.visible(user, kind, queryset)


def _visible_hosts(user):
    return _visible(user, "proxy_hosts", ProxyHost.objects.all())


@login_required
def overview(request):
    """The overview; with htmx and `?panel=traffic`, the traffic charts alone (refreshed every 10 s)."""
    user = request.user
    visible = _visible_hosts(user)
    proxy_hosts = list(visible)
    charts = sparkline.host_traffic(proxy_hosts)
    for host in proxy_hosts:
        host.chart = charts.get(host.pk)
    if request.htmx and request.GET.get("panel") == "traffic":
        return render(request, "dashboard/_traffic.html", {"proxy_hosts": proxy_hosts})
    states = status.host_states(proxy_hosts)
    for host in proxy_hosts:
        host.state = states[host.pk]
    counts = {state: sum(1 for s in states.values() if s == state) for state in ("serving", "disabled", "error")}
    certificates = _visible(user, "certificates", Certificate.objects.all())
    return render(request, "dashboard/overview.html", {
        "proxy_hosts": proxy_hosts,
        "host_counts": counts,
        "redirection_hosts": _visible(user, "redirection_hosts", RedirectionHost.objects.all()),
        "dead_hosts": _visible(user, "dead_hosts", DeadHost.objects.all()),
        "streams": _visible(user, "streams", Stream.objects.all()),
        "certificates": certificates,
        "certificate_alerts": certificates.filter(
            Q(status="error") | Q(expires_at__lt=timezone.now() + timedelta(days=30))).order_by("expires_at"),
        "revision": current_revision(),
        "latest_errors": UpstreamError.objects.filter(proxy_host__in=visible).select_related("proxy_host")[:10],
        "nodes": EngineNode.live(),
    })


def _host(request, pk, needed="view"):
    return access.get_visible(request.user, "proxy_hosts", ProxyHost.objects.select_related("last_change"), pk, needed)


@login_required
def host_status(request, pk):
    """The whole page, or (htmx) the status panel alone, which polls while pending, or the
    upstream health panel alone (`?panel=health`, refreshed every 10 s)."""
    host = _host(request, pk)
    nodes = list(EngineNode.live())
    if request.htmx and request.GET.get("panel") == "health":
        return render(request, "dashboard/_upstream_health.html", {"host": host, "health": health.host_health(host, nodes)})
    context = {"host": host, "status": status.host_status(host, nodes), "current_revision": current_revision()}
    if request.htmx and request.GET.get("panel") == "status":
        return render(request, "dashboard/_host_status.html", context)
    context["errors"] = host.upstream_errors.all()[:LAST_ERRORS]
    context["health"] = health.host_health(host, nodes)
    context["can_manage"] = access.allowed(request.user, "proxy_hosts", "manage")
    return render(request, "dashboard/host_status.html", context)


@login_required
@require_POST
def host_purge(request, pk):
    """Purge the host's cached responses: its cache generation + 1, which the engine keys
    cached entries by (older entries are never served again and age out)."""
    host = _host(request, pk, "manage")
    if not host.caches():
        messages.error(request, f"{host} does not cache responses: nothing to purge.")
        return redirect("dashboard:host_status", pk=host.pk)
    with transaction.atomic():
        host = ProxyHost.objects.select_for_update().get(pk=host.pk)
        before = host.cache_generation
        host.cache_generation = before + 1
        host.save(update_fields=["cache_generation", "updated_at"])    # post_save bumps the revision
        record(request.user, "purged cache", host, before={"cache_generation": before},
               after={"cache_generation": host.cache_generation})
    messages.success(request, f"Cache of {host} purged: the engine drops its cached responses within seconds.")
    return redirect("dashboard:host_status", pk=host.pk)


@login_required
@require_POST
def host_probe(request, pk):
    host = _host(request, pk)
    return render(request, "dashboard/_probe.html", {"host": host, "results": probe.probe_host(host)})


@login_required
def lookup(request):
    """Find the upstream error of a request id (from the engine's error page)."""
    request_id = request.GET.get("request_id", "").strip()[:64]
    row = None
    if request_id:
        row = UpstreamError.objects.filter(request_id=request_id).select_related("proxy_host").first()
        if row is not None:
            if row.proxy_host_id is None:
                allowed = request.user.is_superuser
            else:
                allowed = _visible_hosts(request.user).filter(pk=row.proxy_host_id).exists()
            if not allowed:
                row = None
    return render(request, "dashboard/lookup.html", {"request_id": request_id, "row": row})
