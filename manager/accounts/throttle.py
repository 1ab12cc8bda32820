"""Login throttling: after `LIMIT` failed logins for one username, or from one client
address, within `WINDOW`, further attempts are refused until the window has passed.

Counts live in the database (`FailedLogin`), so every gunicorn worker sees them. Every
function takes `now` so tests can move time without sleeping.
"""
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from .models import FailedLogin

LIMIT = 5
WINDOW = timedelta(minutes=15)


def client_address(request):
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _recent(username, address, now):
    return FailedLogin.objects.filter(Q(username=username.lower()) | Q(address=address), created_at__gt=now - WINDOW)


def blocked(username, address, now=None):
    """True while the username or the address has `LIMIT` failures within the window."""
    now = now or timezone.now()
    recent = _recent(username, address, now)
    return (recent.filter(username=username.lower()).count() >= LIMIT
            or recent.filter(address=address).count() >= LIMIT)


def failed(username, address, now=None):
    now = now or timezone.now()
    FailedLogin.objects.create(username=username.lower()[:150], address=address[:45], created_at=now)
    FailedLogin.objects.filter(created_at__lte=now - WINDOW).delete()


def succeeded(username):
    FailedLogin.objects.filter(username=username.lower()).delete()
