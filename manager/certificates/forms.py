"""Dashboard forms for certificates; every rule comes from manager.lib.validators."""
from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from manager.lib import validators

from . import dns
from .models import Certificate, DnsProvider

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
    """Request a certificate from the configured ACME directory: HTTP-01 through the engine, or
    DNS-01 through a stored DNS provider (the only way to get wildcard names)."""

    name = forms.SlugField(max_length=100, help_text="A short name, used by hosts to pick this certificate.")
    domains = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}),
                              help_text="One name per line. Wildcards (*.example.com) need the DNS-01 challenge.")
    challenge = forms.ChoiceField(choices=Certificate.CHALLENGE_CHOICES, initial="http", widget=forms.RadioSelect,
                                  required=False,
                                  help_text="HTTP-01: every name points at this proxy and port 80 reaches it. "
                                            "DNS-01: Gatehouse sets a TXT record through your DNS provider; "
                                            "required for wildcard names.")
    dns_provider = forms.ModelChoiceField(queryset=DnsProvider.objects.all(), required=False, label="DNS provider",
                                          empty_label="(choose one for DNS-01)",
                                          help_text="Add one under DNS providers first.")

    def clean_name(self):
        name = self.cleaned_data["name"]
        if Certificate.objects.filter(name=name).exists():
            raise ValidationError(f"a certificate named {name!r} already exists")
        return name

    def clean_domains(self):
        names, errors = [], []
        for line in self.cleaned_data["domains"].replace(",", "\n").splitlines():
            if line.strip():
                try:
                    names.append(validators.hostname(line))
                except validators.Invalid as exc:
                    errors.append(str(exc))
        if errors:
            raise ValidationError(errors)
        return list(dict.fromkeys(names))

    def clean(self):
        from .acme import AcmeError, check_domains

        cleaned = super().clean()
        challenge = cleaned["challenge"] = cleaned.get("challenge") or "http"
        if challenge == "dns" and not cleaned.get("dns_provider"):
            self.add_error("dns_provider", "DNS-01 needs a DNS provider: choose one (or add one under DNS providers)")
        if challenge == "http":
            cleaned["dns_provider"] = None
        if "domains" in cleaned:
            try:
                check_domains(cleaned["domains"], challenge)
            except AcmeError as exc:
                self.add_error("domains", str(exc))
        return cleaned

    def save(self, owner):
        return Certificate.objects.create(name=self.cleaned_data["name"], provider="letsencrypt",
                                          domains=self.cleaned_data["domains"],
                                          challenge=self.cleaned_data["challenge"],
                                          dns_provider=self.cleaned_data["dns_provider"], owner=owner)


class DnsProviderForm(forms.Form):
    """Add DNS-01 credentials. Secret fields are write-only: never rendered back."""

    name = forms.SlugField(max_length=100, help_text="Certificates using DNS-01 pick the provider by this name.")
    kind = forms.ChoiceField(choices=DnsProvider.KIND_CHOICES)
    api_token = forms.CharField(required=False, label="Cloudflare API token", strip=True,
                                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                                help_text="Cloudflare only: a token with the Zone:DNS:Edit permission. "
                                          "Stored, never shown again.")
    server = forms.CharField(required=False, label="DNS server IP address",
                             help_text="RFC 2136 only: the primary server's IPv4 or IPv6 address.")
    port = forms.IntegerField(required=False, initial=53, min_value=1, max_value=65535)
    key_name = forms.CharField(required=False, label="TSIG key name", max_length=253)
    key_secret = forms.CharField(required=False, label="TSIG secret (base64)", strip=True,
                                 widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
                                 help_text="The secret line of `tsig-keygen`. Stored, never shown again.")
    algorithm = forms.ChoiceField(choices=DnsProvider.ALGORITHM_CHOICES, initial="hmac-sha256", required=False,
                                  label="TSIG algorithm")
    propagation_seconds = forms.IntegerField(initial=30, min_value=0, max_value=dns.MAX_PROPAGATION,
                                             help_text="How long certbot waits for the TXT record to reach every "
                                                       "name server before the ACME server looks.")

    FIELDS = {"cloudflare": ("api_token",), "rfc2136": ("server", "port", "key_name", "key_secret", "algorithm")}

    def clean_name(self):
        name = self.cleaned_data["name"]
        if DnsProvider.objects.filter(name=name).exists():
            raise ValidationError(f"a DNS provider named {name!r} already exists")
        return name

    def clean(self):
        cleaned = super().clean()
        kind = cleaned.get("kind")
        if kind not in self.FIELDS:
            return cleaned
        defaults = {"port": 53, "algorithm": "hmac-sha256"}
        for field in self.FIELDS[kind]:
            value = cleaned.get(field)
            if value in (None, ""):
                if field in defaults:
                    cleaned[field] = defaults[field]
                    continue
                if field not in self.errors:
                    self.add_error(field, f"required for {dict(DnsProvider.KIND_CHOICES)[kind]}")
                continue
            try:
                cleaned[field] = dns.check_field(kind, field, value)
            except ValueError as exc:
                self.add_error(field, str(exc))
        return cleaned

    def save(self):
        kind = self.cleaned_data["kind"]
        values = {field: self.cleaned_data[field] for field in self.FIELDS[kind]}
        return DnsProvider.objects.create(name=self.cleaned_data["name"], kind=kind,
                                          propagation_seconds=self.cleaned_data["propagation_seconds"], **values)
