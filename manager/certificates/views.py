"""Certificate pages: list, detail, request, custom upload, renew, delete, DNS providers.

Access: the user's rights for certificates (`manager.accounts.access`: view to read,
manage for anything else; visibility all/own); every mutating view is POST-only and
CSRF-protected. Private keys and DNS secrets are never shown.
"""
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import ProtectedError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from manager.accounts import access
from manager.audit.log import record, snapshot
from manager.lib import validators

from . import acme
from .forms import CustomCertificateForm, DnsProviderForm, LetsEncryptForm
from .models import Certificate, DnsProvider


def _can(permission):
    """The user's level for certificates: "view" for reading, "manage" for anything else."""
    needed = "view" if permission == "view" else "manage"

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            access.require(request.user, "certificates", needed)
            return view(request, *args, **kwargs)
        return checked
    return decorator


def _certificate(request, pk, needed="view"):
    return access.get_visible(request.user, "certificates", Certificate.objects, pk, needed)


def _facts(certificate):
    """What the audit log keeps of a certificate: no PEMs (the key is left out by snapshot())."""
    return snapshot(certificate, exclude=("certificate_pem", "chain_pem"))


@login_required
@_can("view")
def certificate_list(request):
    certificates = access.visible(request.user, "certificates", Certificate.objects.all())
    template = "certificates/_rows.html" if request.htmx else "certificates/list.html"
    return render(request, template, {"certificates": certificates})


@login_required
@_can("view")
def certificate_detail(request, pk):
    certificate = _certificate(request, pk)
    issuer = None
    if certificate.certificate_pem:
        try:
            leaf = validators.certificate_chain(certificate.certificate_pem)[0]
            issuer = leaf.issuer.rfc4514_string()
        except validators.Invalid:
            issuer = None
    template = "certificates/_state.html" if request.htmx else "certificates/detail.html"
    return render(request, template, {
        "certificate": certificate, "cert": certificate, "issuer": issuer, "hosts": certificate.proxy_hosts.all(),
    })


@login_required
@_can("add")
@require_POST
def certificate_probe(request):
    """Check each name of the request form (htmx) and answer with the results."""
    from .probe import check

    names, problems = [], []
    for line in request.POST.get("domains", "").replace(",", "\n").splitlines():
        if line.strip():
            try:
                names.append(validators.hostname(line))
            except validators.Invalid as exc:
                problems.append(str(exc))
    results = [check(name) for name in dict.fromkeys(names)]
    return render(request, "certificates/_probe.html", {"results": results, "problems": problems})


def _queue(certificate):
    from .tasks import issue_certificate

    acme.set_progress(certificate.pk, "queued")
    issue_certificate.delay(certificate.pk)


@login_required
@_can("add")
def certificate_request(request):
    form = LetsEncryptForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            certificate = form.save(owner=request.user)
            record(request.user, "requested", certificate, after=_facts(certificate))
        _queue(certificate)
        messages.success(request, f"Certificate {certificate.name} requested; this page shows its progress.")
        return redirect("certificates:detail", pk=certificate.pk)
    return render(request, "certificates/request.html", {"form": form})


@login_required
@_can("change")
@require_POST
def certificate_renew(request, pk):
    certificate = _certificate(request, pk, "manage")
    if certificate.provider != "letsencrypt":
        messages.error(request, f"{certificate.name} is an uploaded certificate: upload a new one instead.")
    elif certificate.progress in ("queued", "validating"):
        messages.error(request, f"{certificate.name} is already being requested.")
    else:
        record(request.user, "renewed", certificate, before=_facts(certificate))
        _queue(certificate)
        messages.success(request, f"Renewal of {certificate.name} queued.")
    return redirect("certificates:detail", pk=pk)


@login_required
@_can("add")
def certificate_upload(request):
    form = CustomCertificateForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            certificate = form.save(owner=request.user)
            record(request.user, "uploaded", certificate, after=_facts(certificate))
        messages.success(request, f"Certificate {certificate.name} saved; it covers {', '.join(certificate.domains)}.")
        return redirect("certificates:detail", pk=certificate.pk)
    return render(request, "certificates/upload.html", {"form": form})


@login_required
@_can("delete")
@require_POST
def certificate_delete(request, pk):
    certificate = _certificate(request, pk, "manage")
    before = _facts(certificate)
    try:
        with transaction.atomic():
            record(request.user, "deleted", certificate, before=before)
            certificate.delete()
    except ProtectedError:
        users = ", ".join(str(host) for host in certificate.proxy_hosts.all())
        messages.error(request, f"Certificate {certificate.name} is used by {users}; change those hosts first.")
        return redirect("certificates:detail", pk=pk)
    messages.success(request, f"Certificate {certificate.name} deleted.")
    return redirect("certificates:list")


# -- DNS providers (DNS-01 credentials): list, add, delete. Secrets are write-only. ----------


_can_dns = _can     # DNS providers are part of the certificates' rights


@login_required
@_can_dns("view")
def dns_provider_list(request):
    providers = DnsProvider.objects.all()
    return render(request, "certificates/dns_providers.html", {"providers": providers})


@login_required
@_can_dns("add")
def dns_provider_add(request):
    form = DnsProviderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            provider = form.save()
            record(request.user, "created", provider, after=snapshot(provider))
        messages.success(request, f"DNS provider {provider.name} saved; its secret is stored and will not be shown again.")
        return redirect("certificates:dns_list")
    return render(request, "certificates/dns_provider_add.html", {"form": form})


@login_required
@_can_dns("delete")
@require_POST
def dns_provider_delete(request, pk):
    provider = get_object_or_404(DnsProvider, pk=pk)
    try:
        with transaction.atomic():
            record(request.user, "deleted", provider, before=snapshot(provider))
            provider.delete()
    except ProtectedError:
        users = ", ".join(str(c) for c in provider.certificates.all())
        messages.error(request, f"DNS provider {provider.name} is used by {users}; change or delete those certificates first.")
        return redirect("certificates:dns_list")
    messages.success(request, f"DNS provider {provider.name} deleted.")
    return redirect("certificates:dns_list")
