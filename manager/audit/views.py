"""The audit log page (administrators only): newest first, filtered by kind and user,
each entry with the fields that changed, before and after."""
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from manager.accounts import access

from .models import AuditEntry

PAGE_SIZE = 50


def changes(before, after):
    """[(field, before, after)] for every field whose value differs (all fields of a
    creation or deletion); values missing on one side are None."""
    before, after = before or {}, after or {}
    fields = list(before) + [name for name in after if name not in before]
    return [(name, before.get(name), after.get(name)) for name in fields if before.get(name) != after.get(name)]


@login_required
def audit_list(request):
    access.require_admin(request.user)
    entries = AuditEntry.objects.all()
    kind, username = request.GET.get("kind", ""), request.GET.get("user", "")
    if kind:
        entries = entries.filter(kind=kind)
    if username:
        entries = entries.filter(username=username)
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    for entry in page:
        entry.changes = changes(entry.before, entry.after)
    return render(request, "audit/list.html", {
        "page": page, "kind": kind, "username": username,
        "kinds": AuditEntry.objects.order_by("kind").values_list("kind", flat=True).distinct(),
        "usernames": AuditEntry.objects.exclude(username="").order_by("username").values_list("username", flat=True).distinct(),
    })
