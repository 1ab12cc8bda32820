"""The settings form: validated with the configuration document's own rules (schema), so
the dashboard accepts exactly what an import accepts; each error lands on its field."""
from django import forms

from manager.hosts.models import Settings
from manager.lib import validators

from .schema import VERSION, parse_document

# Document path prefix -> form field.
PATHS = {
    "settings.default_site.action": "default_site_action",
    "settings.default_site.to": "default_site_to",
    "settings.default_site.body": "default_site_body",
    "settings.acme.email": "acme_email",
    "settings.acme.directory": "acme_directory",
    "settings.acme.ca_bundle": "acme_ca_bundle",
    "settings.tls.fallback": "tls_fallback",
    "settings.trusted_proxies": "trusted_proxies",
    "settings.cache.memory_bytes": "cache_memory_bytes",
    "settings.cache.disk_bytes": "cache_disk_bytes",
}


class SettingsForm(forms.ModelForm):
    trusted_proxies = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False,
        help_text="One address or CIDR network a line (10.0.0.0/8); their X-Forwarded-For is believed.")
    acme_email = forms.CharField(required=False, label="ACME email")
    acme_directory = forms.CharField(label="ACME directory")
    acme_ca_bundle = forms.CharField(required=False, label="ACME CA bundle",
                                     help_text=Settings._meta.get_field("acme_ca_bundle").help_text)
    cache_memory_bytes = forms.CharField(
        required=False, label="Cache: memory",
        help_text="Memory each engine worker keeps cached responses in, all hosts together, e.g. 64m (the "
                  "default), 1g.")
    cache_disk_bytes = forms.CharField(
        required=False, label="Cache: disk",
        help_text="Disk space per engine worker for cached responses beyond memory (in the engine's cache "
                  "directory), e.g. 10g; 0 or empty = no disk cache.")

    class Meta:
        model = Settings
        fields = ("default_site_action", "default_site_to", "default_site_body", "acme_email", "acme_directory",
                  "acme_ca_bundle", "tls_fallback", "trusted_proxies", "cache_memory_bytes", "cache_disk_bytes")
        labels = {"default_site_action": "Default site", "default_site_to": "Redirect to",
                  "default_site_body": "Custom page (HTML)", "tls_fallback": "TLS fallback"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["trusted_proxies"] = "\n".join(self.instance.trusted_proxies or [])
            self.initial["cache_memory_bytes"] = validators.format_size(self.instance.cache_memory_bytes)
            self.initial["cache_disk_bytes"] = validators.format_size(self.instance.cache_disk_bytes)

    def clean(self):
        data = self.cleaned_data
        site = {"action": data.get("default_site_action", "")}
        if site["action"] == "redirect":
            site["to"] = data.get("default_site_to", "")
        if site["action"] == "html":
            site["body"] = data.get("default_site_body", "")
        acme = {"email": data.get("acme_email") or None, "directory": data.get("acme_directory", ""),
                "ca_bundle": data.get("acme_ca_bundle") or None}
        section = {
            "default_site": site,
            "acme": {key: value for key, value in acme.items() if value is not None},
            "tls": {"fallback": data.get("tls_fallback", "")},
            "trusted_proxies": [line.strip() for line in (data.get("trusted_proxies") or "").splitlines() if line.strip()],
        }
        cache = {key: _size_text(data.get(field)) for key, field in (("memory_bytes", "cache_memory_bytes"),
                                                                     ("disk_bytes", "cache_disk_bytes"))}
        cache = {key: value for key, value in cache.items() if value is not None}
        if cache:
            section["cache"] = cache
        doc, errors = parse_document({"version": VERSION, "settings": section})
        for error in errors:
            field = next((name for path, name in PATHS.items() if error.path.startswith(path)), None)
            self.add_error(field if field in self.fields else None, error.message)
        if not errors:
            data.update(doc["settings"])
        return data

    def _get_validation_exclusions(self):
        # The schema above is the one set of rules (the import bypasses the model fields'
        # validators, e.g. URLField refusing https://pebble:14000/dir); do not apply a second.
        return {field.name for field in Settings._meta.fields}


def _size_text(text):
    """A size field's text as YAML would hold it: digits as a number, empty as absent."""
    text = (text or "").strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text
