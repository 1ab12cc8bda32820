"""The settings page (administrators only): global settings, export the configuration as
YAML, and import a document with a preview before anything is applied.

Import is two POSTs: "preview" validates the document and applies it in a transaction
that is rolled back (`import_yaml(dry_run=True)`, as `importconfig --check`), showing what
would change and every error with its path; the document is kept in the session under its
digest. "apply" takes that digest and applies the same document, all or nothing.
"""
import hashlib

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from manager.accounts import access
from manager.audit.log import record, snapshot
from manager.hosts.models import Settings

from .exporter import export_yaml
from .forms import SettingsForm
from .importer import import_yaml
from .schema import DocumentInvalid

SESSION_KEY = "gatehouse_pending_import"
MAX_DOCUMENT = 5 * 1024 * 1024


def _admin_only(view):
    def checked(request, *args, **kwargs):
        access.require_admin(request.user)
        return view(request, *args, **kwargs)
    checked.__name__, checked.__doc__ = view.__name__, view.__doc__
    return login_required(checked)


@_admin_only
def settings_page(request):
    config = Settings.load()
    before = snapshot(config)
    form = SettingsForm(request.POST or None, instance=config)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            config = form.save()
            record(request.user, "updated", config, kind="settings", before=before, after=snapshot(config))
        messages.success(request, "Settings saved.")
        return redirect("settings:page")
    return render(request, "settings/page.html", {"form": form})


@_admin_only
@require_GET
def export(request):
    secrets = request.GET.get("secrets") == "1"
    if secrets:
        record(request.user, "exported", kind="configuration", object_repr="with secrets")
    response = HttpResponse(export_yaml(include_secrets=secrets), content_type="application/yaml; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="gatehouse-{stamp}.yaml"'
    return response


def _digest(text, replace):
    return hashlib.sha256(f"{int(replace)}:{text}".encode()).hexdigest()


def _document(request):
    upload = request.FILES.get("file")
    if upload is not None:
        if upload.size > MAX_DOCUMENT:
            return None, "The file is larger than 5 MB."
        try:
            return upload.read().decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "The file is not UTF-8 text."
    return request.POST.get("document", ""), None


@_admin_only
@require_POST
def import_preview(request):
    text, problem = _document(request)
    replace = request.POST.get("mode") == "replace"
    context = {"replace": replace, "document": text or ""}
    if problem or not (text or "").strip():
        context["errors"] = [problem or "Paste a document or choose a file."]
        return render(request, "settings/import_preview.html", context, status=400)
    try:
        summary = import_yaml(text, replace=replace, dry_run=True)
    except DocumentInvalid as exc:
        context["errors"] = [str(error) for error in exc.errors]
        return render(request, "settings/import_preview.html", context, status=400)
    digest = _digest(text, replace)
    request.session[SESSION_KEY] = {"digest": digest, "text": text, "replace": replace}
    context.update(summary=summary.lines(), digest=digest)
    return render(request, "settings/import_preview.html", context)


@_admin_only
@require_POST
def import_apply(request):
    pending = request.session.get(SESSION_KEY)
    if not pending or pending["digest"] != request.POST.get("digest"):
        messages.error(request, "That preview is no longer current: preview the document again.")
        return redirect("settings:page")
    try:
        with transaction.atomic():
            summary = import_yaml(pending["text"], replace=pending["replace"])
            record(request.user, "imported", kind="configuration",
                   object_repr="replaced" if pending["replace"] else "merged",
                   after={"mode": "replace" if pending["replace"] else "merge", "changes": summary.lines()})
    except DocumentInvalid as exc:
        context = {"replace": pending["replace"], "document": pending["text"],
                   "errors": [str(error) for error in exc.errors]}
        return render(request, "settings/import_preview.html", context, status=400)
    del request.session[SESSION_KEY]
    messages.success(request, "Configuration imported: " + "; ".join(summary.lines()))
    return redirect("settings:page")
