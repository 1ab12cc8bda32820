"""Dashboard forms for certificates; every rule comes from manager.lib.validators."""
from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from manager.lib import validators

from .models import Certificate

PEM_HELP = "Paste the PEM text, or choose a file below."


class CustomCertificateForm(forms.Form):
    """Upload or paste a certificate, its key and (optionally) its chain.

    A pasted field wins over an uploaded file only when the file is absent."""

    name = forms.SlugField(max_length=100, help_text="A short name, used by hosts to pick this certificate.")
    certificate_pem = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, label="Certificate", help_text=PEM_HELP)
    certificate_file = forms.FileField(required=False, label="…or certificate file")
    key_pem = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, label="Private key", help_text=PEM_HELP)
    key_file = forms.FileField(required=False, label="…or key file")
    chain_pem = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, label="Chain (intermediates)", help_text="Optional.")
    chain_file = forms.FileField(required=False, label="…or chain file")

    MAX_FILE = 256 * 1024

    def clean_name(self):
        name = self.cleaned_data["name"]
        if Certificate.objects.filter(name=name).exists():
            raise ValidationError(f"a certificate named {name!r} already exists")
        return name

    def _text(self, field):
        upload = self.cleaned_data.get(field + "_file")
        if upload:
            if upload.size > self.MAX_FILE:
                self.add_error(field + "_file", "file too large for a PEM (256 KiB at most)")
                return ""
            try:
                return upload.read().decode("ascii")
            except UnicodeDecodeError:
                self.add_error(field + "_file", "not a PEM text file (binary DER is not supported)")
                return ""
        return (self.cleaned_data.get(field + "_pem") or "").strip()

    def clean(self):
        cleaned = super().clean()
        certificate, key, chain = self._text("certificate"), self._text("key"), self._text("chain")
        if not certificate:
            self.add_error("certificate_pem", "a certificate is required")
        if not key:
            self.add_error("key_pem", "the private key is required")
        if self.errors:
            return cleaned
        leaf = None
        try:
            leaf = validators.certificate_chain(certificate)[0]
        except validators.Invalid as exc:
            self.add_error("certificate_pem", str(exc))
        try:
            validators.private_key(key)
        except validators.Invalid as exc:
            self.add_error("key_pem", str(exc))
        if chain:
            try:
                validators.certificate_chain(chain)
            except validators.Invalid as exc:
                self.add_error("chain_pem", str(exc))
        if leaf is not None and not self.errors:
            try:
                validators.certificate_with_key(certificate, key)
            except validators.Invalid as exc:
                self.add_error("key_pem", str(exc))
        if leaf is not None:
            cleaned["leaf"] = leaf
        cleaned.update(certificate_pem=certificate + "\n", key_pem=key + "\n", chain_pem=(chain + "\n") if chain else "")
        return cleaned

    def save(self, owner):
        leaf = self.cleaned_data["leaf"]
        expires = leaf.not_valid_after_utc
        return Certificate.objects.create(
            name=self.cleaned_data["name"], provider="custom", domains=validators.certificate_names(leaf),
            certificate_pem=self.cleaned_data["certificate_pem"], key_pem=self.cleaned_data["key_pem"],
            chain_pem=self.cleaned_data["chain_pem"], expires_at=expires,
            status="valid" if expires > timezone.now() else "expired", owner=owner,
        )


class LetsEncryptForm(forms.Form):
    """Request a certificate from the configured ACME directory (HTTP-01 through the engine)."""

    name = forms.SlugField(max_length=100, help_text="A short name, used by hosts to pick this certificate.")
    domains = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                              help_text="One name per line. Wildcards (*.example.com) need DNS-01, which is not available yet.")

    def clean_name(self):
        name = self.cleaned_data["name"]
        if Certificate.objects.filter(name=name).exists():
            raise ValidationError(f"a certificate named {name!r} already exists")
        return name

    def clean_domains(self):
        from .acme import AcmeError, check_domains

        names, errors = [], []
        for line in self.cleaned_data["domains"].replace(",", "\n").splitlines():
            if line.strip():
                try:
                    names.append(validators.hostname(line))
                except validators.Invalid as exc:
                    errors.append(str(exc))
        if errors:
            raise ValidationError(errors)
        try:
            return check_domains(list(dict.fromkeys(names)))
        except AcmeError as exc:
            raise ValidationError(str(exc)) from None

    def save(self, owner):
        return Certificate.objects.create(name=self.cleaned_data["name"], provider="letsencrypt",
                                          domains=self.cleaned_data["domains"], owner=owner)
