"""Permission checks for every dashboard view, in one place.

    level(user, "proxy_hosts")              -> "hidden" | "view" | "manage"
    require(user, "proxy_hosts", "manage")  -> raises PermissionDenied (403)
    visible(user, "proxy_hosts", queryset)  -> only the items the user may see
    get_visible(user, "proxy_hosts", queryset, pk, needed="view")
                                            -> the item, 404 if not visible, 403 if the level is too low

Superusers are administrators: "manage" everywhere and every item visible. Items without
an `owner` field (none today besides settings) are visible to whoever may view the kind.
"""
from django.core.exceptions import PermissionDenied
from django.http import Http404

from .models import KINDS, Profile

ORDER = {"hidden": 0, "view": 1, "manage": 2}


def profile(user):
    cached = getattr(user, "_gatehouse_profile", None)
    if cached is None:
        cached, _ = Profile.objects.get_or_create(user=user)
        user._gatehouse_profile = cached
    return cached


def level(user, kind):
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    if not user.is_authenticated or not user.is_active:
        return "hidden"
    if user.is_superuser:
        return "manage"
    return getattr(profile(user), kind)


def allowed(user, kind, needed):
    return ORDER[level(user, kind)] >= ORDER[needed]


def require(user, kind, needed):
    if not allowed(user, kind, needed):
        raise PermissionDenied(f"you may not {needed} {kind.replace('_', ' ')}")


def require_admin(user):
    if not (user.is_authenticated and user.is_active and user.is_superuser):
        raise PermissionDenied("administrators only")


def visible(user, kind, queryset):
    require(user, kind, "view")
    if user.is_superuser or profile(user).visibility == "all":
        return queryset
    return queryset.filter(owner=user)


def get_visible(user, kind, queryset, pk, needed="view"):
    item = visible(user, kind, queryset).filter(pk=pk).first()
    if item is None:
        raise Http404(f"no such {kind.replace('_', ' ')[:-1]}")
    require(user, kind, needed)
    return item


class Rights:
    """For templates: `rights.proxy_hosts.view`, `rights.certificates.manage`, `rights.admin`."""

    def __init__(self, user):
        self.user = user

    def __getattr__(self, kind):
        if kind not in KINDS:
            raise AttributeError(kind)
        current = ORDER[level(self.user, kind)]
        return {"view": current >= 1, "manage": current >= 2}

    @property
    def admin(self):
        return self.user.is_authenticated and self.user.is_superuser


def rights(request):
    """Context processor: `rights` in every template."""
    return {"rights": Rights(request.user)}
