"""Dashboard pages. The full dashboard is its own issue; this is the overview."""
from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.utils import timezone
from django.shortcuts import render

from manager.certificates.models import Certificate
from manager.hosts.models import DeadHost, ProxyHost, RedirectionHost, Stream
from manager.hosts.revision import current_revision


@login_required
def overview(request):
    return render(request, "dashboard/overview.html", {
        "proxy_hosts": ProxyHost.objects.all(),
        "redirection_hosts": RedirectionHost.objects.all(),
        "dead_hosts": DeadHost.objects.all(),
        "streams": Stream.objects.all(),
        "certificates": Certificate.objects.all(),
        "certificate_alerts": Certificate.objects.filter(
            Q(status="error") | Q(expires_at__lt=timezone.now() + timedelta(days=30))).order_by("expires_at"),
        "revision": current_revision(),
    })
