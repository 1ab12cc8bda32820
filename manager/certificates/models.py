"""TLS certificates: issued by Let's Encrypt (certbot) or uploaded."""
from django.conf import settings
from django.db import models


class Certificate(models.Model):
    PROVIDER_CHOICES = [("letsencrypt", "Let's Encrypt"), ("custom", "Custom")]
    STATUS_CHOICES = [("pending", "Pending"), ("valid", "Valid"), ("expired", "Expired"), ("error", "Error")]

    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=16, choices=PROVIDER_CHOICES, default="letsencrypt")
    domains = models.JSONField(default=list)
    certificate_pem = models.TextField(blank=True)
    key_pem = models.TextField(blank=True)
    chain_pem = models.TextField(blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="pending")
    last_error = models.TextField(blank=True)
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
