"""TLS certificates: issued by Let's Encrypt (certbot) or uploaded."""
from django.conf import settings
from django.db import models


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
