"""TLS certificates: issued by Let's Encrypt (certbot) or uploaded."""
from django.conf import settings
from django.db import models

from . import dns


class DnsProvider(models.Model):
    """Credentials for DNS-01 through a certbot DNS plugin (Cloudflare or RFC 2136).

    The secret fields (`SECRET_FIELDS`) are never logged, never shown back in the dashboard
    and exported only with `exportconfig --include-secrets`; they reach certbot in a 0600
    file that exists only while certbot runs (`acme.dns_credentials_file`)."""

    KIND_CHOICES = [("cloudflare", "Cloudflare"), ("rfc2136", "RFC 2136 (BIND, Knot, PowerDNS…)")]
    ALGORITHM_CHOICES = [(a, a) for a in dns.ALGORITHMS]
    SECRET_FIELDS = dns.SECRETS

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    # cloudflare
    api_token = models.TextField(blank=True)
    # rfc2136
    server = models.CharField(max_length=253, blank=True, help_text="IP address of the primary DNS server")
    port = models.PositiveIntegerField(default=53)
    key_name = models.CharField(max_length=253, blank=True)
    key_secret = models.TextField(blank=True)
    algorithm = models.CharField(max_length=16, choices=ALGORITHM_CHOICES, default="hmac-sha256")
    # both: how long certbot waits for the TXT record to reach every name server
    propagation_seconds = models.PositiveIntegerField(default=30)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def __repr__(self):  # no secret in tracebacks or logs
        return f"<DnsProvider {self.name!r} ({self.kind})>"

    @property
    def secret_fields(self):
        return self.SECRET_FIELDS.get(self.kind, ())

    @property
    def summary(self):
        """What the dashboard shows: never a secret."""
        if self.kind == "rfc2136":
            return f"{self.server}:{self.port}, key {self.key_name} ({self.algorithm})"
        return "API token set" if self.api_token else "no API token"


class Certificate(models.Model):
    PROVIDER_CHOICES = [("letsencrypt", "Let's Encrypt"), ("custom", "Custom")]
    STATUS_CHOICES = [("pending", "Pending"), ("valid", "Valid"), ("expired", "Expired"), ("error", "Error")]
    # The last ACME request's progress (status says what is served; this says what is happening).
    PROGRESS_CHOICES = [("", "None"), ("queued", "Queued"), ("validating", "Validating"),
                        ("issued", "Issued"), ("failed", "Failed")]

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=PROVIDER_CHOICES, default="letsencrypt")
    domains = models.JSONField(default=list)
    certificate_pem = models.TextField(blank=True)
    key_pem = models.TextField(blank=True)
    chain_pem = models.TextField(blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="pending")
    last_error = models.TextField(blank=True)
    progress = models.CharField(max_length=16, choices=PROGRESS_CHOICES, default="", blank=True)
    # How the ACME server validates the names: HTTP-01 through the engine, or DNS-01
    # through `dns_provider` (the only way for wildcard names).
    CHALLENGE_CHOICES = [("http", "HTTP-01 (through this proxy)"), ("dns", "DNS-01 (a TXT record at your DNS provider)")]
    challenge = models.CharField(max_length=8, choices=CHALLENGE_CHOICES, default="http")
    dns_provider = models.ForeignKey(DnsProvider, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="certificates")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def usable(self):
        return self.status == "valid" and bool(self.certificate_pem and self.key_pem)


class AcmeChallenge(models.Model):
    """An HTTP-01 token the engine answers while the ACME server validates it
    (published in the snapshot's `acme_challenges`; rows older than an hour are ignored)."""

    token = models.CharField(max_length=256, unique=True)
    key_authorization = models.TextField()
    domain = models.CharField(max_length=253, blank=True)
    certificate = models.ForeignKey(Certificate, null=True, blank=True, on_delete=models.CASCADE, related_name="acme_challenges")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.domain} {self.token}"
