"""The audit log: who changed what and when, with the before and after."""
from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, blank=True, help_text="kept when the user is deleted")
    action = models.CharField(max_length=32)          # created, updated, deleted, enabled, disabled, imported, ...
    kind = models.CharField(max_length=64)            # proxy_host, certificate, user, settings, configuration, ...
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"{self.username or 'system'} {self.action} {self.kind} {self.object_repr}"
