"""Certificate pages: list, detail, custom upload, delete.

Access: Django model permissions (`certificates.view_certificate`, `add_`, `delete_`);
every mutating view is POST-only and CSRF-protected. The private key is never shown.
"""
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import ProtectedError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from manager.lib import validators

from .forms import CustomCertificateForm
from .models import Certificate


def _can(permission):
    return permission_required(f"certificates.{permission}_certificate", raise_exception=True)


@login_required
@_can("view")
def certificate_list(request):
    certificates = Certificate.objects.all()
    template = "certificates/_rows.html" if request.htmx else "certificates/list.html"
    return render(request, template, {"certificates": certificates})


@login_required
@_can("view")
def certificate_detail(request, pk):
    certificate = get_object_or_404(Certificate, pk=pk)
    issuer = None
    if certificate.certificate_pem:
        try:
            leaf = validators.certificate_chain(certificate.certificate_pem)[0]
            issuer = leaf.issuer.rfc4514_string()
        except validators.Invalid:
            issuer = None
    return render(request, "certificates/detail.html", {
        "certificate": certificate, "issuer": issuer, "hosts": certificate.proxy_hosts.all(),
    })


@login_required
@_can("add")
def certificate_upload(request):
    form = CustomCertificateForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        certificate = form.save(owner=request.user)
        messages.success(request, f"Certificate {certificate.name} saved; it covers {', '.join(certificate.domains)}.")
        return redirect("certificates:detail", pk=certificate.pk)
    return render(request, "certificates/upload.html", {"form": form})


@login_required
@_can("delete")
@require_POST
def certificate_delete(request, pk):
    certificate = get_object_or_404(Certificate, pk=pk)
    try:
        certificate.delete()
    except ProtectedError:
        users = ", ".join(str(host) for host in certificate.proxy_hosts.all())
        messages.error(request, f"Certificate {certificate.name} is used by {users}; change those hosts first.")
        return redirect("certificates:detail", pk=pk)
    messages.success(request, f"Certificate {certificate.name} deleted.")
    return redirect("certificates:list")
