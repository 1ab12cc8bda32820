"""Dashboard users' rights, as Nginx Proxy Manager has them: per kind of item
hidden / view / manage, and visibility of all items or only one's own.

Administrators are Django superusers: they manage everything, including users, settings
and the audit log. Everyone else has a `Profile` (created on first use with nothing visible: least privilege).
"""
from django.conf import settings
from django.db import models

LEVELS = [("hidden", "Hidden"), ("view", "View"), ("manage", "Manage")]
VISIBILITY = [("all", "All items"), ("own", "Only items they created")]
KINDS = ("proxy_hosts", "redirection_hosts", "dead_hosts", "streams", "access_lists", "certificates")


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gatehouse_profile")
    visibility = models.CharField(max_length=3, choices=VISIBILITY, default="own")
    proxy_hosts = models.CharField(max_length=6, choices=LEVELS, default="hidden")
    redirection_hosts = models.CharField(max_length=6, choices=LEVELS, default="hidden")
    dead_hosts = models.CharField(max_length=6, choices=LEVELS, default="hidden")
    streams = models.CharField(max_length=6, choices=LEVELS, default="hidden")
    access_lists = models.CharField(max_length=6, choices=LEVELS, default="hidden")
    certificates = models.CharField(max_length=6, choices=LEVELS, default="hidden")

    def __str__(self):
        return f"rights of {self.user}"


class FailedLogin(models.Model):
    """One failed login attempt; `manager.accounts.throttle` counts recent ones per username
    and per client address. A table, so every dashboard worker process sees the same counts."""

    username = models.CharField(max_length=150, db_index=True)
    address = models.CharField(max_length=45, db_index=True)
    created_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return f"failed login for {self.username!r} from {self.address} at {self.created_at}"
