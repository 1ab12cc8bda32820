"""The revision of each proxy host's last change, for "applied" on the host status page."""
from django.db import models


class HostChange(models.Model):
    """Written once each change of a proxy host (or of one of its locations) has committed:
    the configuration revision current right after that commit. It is at least the revision
    the change itself bumped to (a later change can only make it larger), so "every engine
    serves >= this revision" never claims a change applied before it is."""

    proxy_host = models.OneToOneField("hosts.ProxyHost", on_delete=models.CASCADE, primary_key=True,
                                      related_name="last_change")
    revision = models.BigIntegerField()
    changed_at = models.DateTimeField(auto_now=True)
