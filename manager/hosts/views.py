"""Host pages: proxy hosts, redirection hosts, 404 hosts and streams; each with a list
(searchable, enable/disable in place), create, edit and delete.

Access: the user's rights for the kind (`manager.accounts.access`: view to read, manage for
anything else; visibility all/own, a hidden item is a 404). Mutations are POST-only, run
in one transaction with their audit entry; saving bumps the configuration revision
(signals), which is how the engine picks the change up.
"""
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import ProtectedError
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from manager.accounts import access
from manager.audit.log import record, snapshot
from manager.lib import validators

from .forms import DeadHostForm, LocationForm, ProxyHostForm, RedirectionHostForm, StreamForm
from .models import DeadHost, ProxyHost, RedirectionHost, Stream


@dataclass(frozen=True)
class Kind:
    """One kind of item managed by these pages."""

    key: str            # the access kind, e.g. "proxy_hosts"
    model: type
    form: type
    url: str            # URL name prefix in `namespace`, e.g. "proxy" (proxy_list, proxy_add, ...)
    title: str          # "Proxy hosts"
    singular: str       # "proxy host"
    columns: tuple
    row_template: str
    namespace: str = "hosts"

    def snapshot(self, item):
        """The audit view of an item: its fields, plus its locations, users and rules."""
        data = snapshot(item)
        if isinstance(item, ProxyHost):
            data["locations"] = [snapshot(location, exclude=("id", "proxy_host")) for location in item.locations.all()]
        if hasattr(item, "rules"):
            data["users"] = [user.username for user in item.users.all()]
            data["rules"] = [f"{rule.action} {rule.source}" for rule in item.rules.all()]
        return data

    def search_text(self, item):
        if isinstance(item, ProxyHost):
            upstreams = [validators.format_host_port(u["host"], u["port"]) for u in item.upstreams]
            return " ".join([*item.domains, *upstreams])
        if isinstance(item, RedirectionHost):
            return " ".join([*item.domains, item.to])
        if isinstance(item, Stream):
            return str(item)
        if not hasattr(item, "domains"):
            return str(item)
        return " ".join(item.domains)


PROXY = Kind("proxy_hosts", ProxyHost, ProxyHostForm, "proxy", "Proxy hosts", "proxy host",
             ("Domains", "Upstreams", "SSL / access", "State", ""), "hosts/_proxy_row.html")
REDIRECTION = Kind("redirection_hosts", RedirectionHost, RedirectionHostForm, "redirection", "Redirection hosts",
                   "redirection host", ("Domains", "Redirects to", "Code", "State", ""), "hosts/_redirection_row.html")
DEAD = Kind("dead_hosts", DeadHost, DeadHostForm, "dead", "404 hosts", "404 host", ("Domains", "State", ""),
            "hosts/_dead_row.html")
STREAM = Kind("streams", Stream, StreamForm, "stream", "Streams", "stream", ("Listen", "Upstream", "State", ""),
              "hosts/_stream_row.html")


def _item(request, kind, pk, needed="view"):
    return access.get_visible(request.user, kind.key, kind.model.objects.all(), pk, needed)


def _context(request, kind, **extra):
    names = {f"{action}_url": f"{kind.namespace}:{kind.url}_{action}" for action in ("list", "add", "edit", "toggle", "delete")}
    return {"kind": kind, "can_manage": access.allowed(request.user, kind.key, "manage"), **names, **extra}


def item_list(request, kind):
    items = access.visible(request.user, kind.key, kind.model.objects.all())
    if kind.model is ProxyHost:
        items = items.select_related("certificate", "access_list")
    query = request.GET.get("q", "").strip().lower()
    if query:
        items = [item for item in items if query in kind.search_text(item).lower()]
    template = "hosts/_rows.html" if request.htmx else "hosts/list.html"
    return render(request, template, _context(request, kind, items=items, query=query))


def item_form(request, kind, pk=None):
    access.require(request.user, kind.key, "manage")
    item = _item(request, kind, pk, "manage") if pk is not None else None
    before = kind.snapshot(item) if item is not None else None
    form = kind.form(request.POST or None, instance=item, user=request.user)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            saved = form.save(owner=request.user)
            record(request.user, "updated" if before else "created", saved, before=before, after=kind.snapshot(saved))
        messages.success(request, f"{kind.singular.capitalize()} {saved} saved; the proxy serves it within seconds.")
        return redirect(f"{kind.namespace}:{kind.url}_list")
    return render(request, "hosts/form.html", _context(request, kind, form=form, item=item))


def item_toggle(request, kind, pk):
    """Enable or disable in place: answers with the row (htmx) or goes back to the list."""
    item = _item(request, kind, pk, "manage")
    before = snapshot(item)
    item.enabled = not item.enabled
    error = None
    try:
        with transaction.atomic():
            item.full_clean(exclude=["owner"])
            item.save(update_fields=["enabled", "updated_at"])
            record(request.user, "enabled" if item.enabled else "disabled", item, before=before, after=snapshot(item))
    except ValidationError as exc:
        item.enabled = not item.enabled
        error = "; ".join(message for messages_ in exc.message_dict.values() for message in messages_)
    if request.htmx:
        response = render(request, kind.row_template, _context(request, kind, item=item, error=error))
        return trigger_client_event(response, "hostsChanged") if error is None else response
    if error:
        messages.error(request, f"{item} stays {'enabled' if item.enabled else 'disabled'}: {error}")
    else:
        messages.success(request, f"{item} {'enabled' if item.enabled else 'disabled'}.")
    return redirect(f"{kind.namespace}:{kind.url}_list")


def item_delete(request, kind, pk):
    item = _item(request, kind, pk, "manage")
    before, label = kind.snapshot(item), str(item)
    try:
        with transaction.atomic():
            record(request.user, "deleted", item, before=before)
            item.delete()
    except ProtectedError as exc:
        users = ", ".join(sorted({str(obj) for obj in exc.protected_objects}))
        messages.error(request, f"{kind.singular.capitalize()} {label} is used by {users}; change those first.")
        return redirect(f"{kind.namespace}:{kind.url}_list")
    messages.success(request, f"{kind.singular.capitalize()} {label} deleted.")
    return redirect(f"{kind.namespace}:{kind.url}_list")


@login_required
def location_row(request):
    """A blank row of the proxy host form's Locations section (htmx "Add location"): its
    index follows the `locations-index` values of the rows already on the page."""
    access.require(request.user, PROXY.key, "manage")
    indexes = [int(value) for value in request.GET.getlist("locations-index") if value.isdecimal() and len(value) <= 6]
    index = max(indexes, default=-1) + 1
    row = LocationForm(index=index)
    row.fields["path"].widget.attrs["autofocus"] = True      # htmx moves the focus to the new row
    return render(request, "hosts/_location.html", {"row": row})


def views_for(kind):
    """The list, add, edit, toggle and delete views of one kind."""

    def checked(view):
        def wrapped(request, *args, **kwargs):
            access.require(request.user, kind.key, "view")
            return view(request, kind, *args, **kwargs)
        wrapped.__name__ = f"{kind.url}_{view.__name__}"
        return login_required(wrapped)

    return {
        "list": checked(item_list),
        "add": checked(item_form),
        "edit": checked(item_form),
        "toggle": require_POST(checked(item_toggle)),
        "delete": require_POST(checked(item_delete)),
    }


proxy = views_for(PROXY)
redirection = views_for(REDIRECTION)
dead = views_for(DEAD)
stream = views_for(STREAM)
