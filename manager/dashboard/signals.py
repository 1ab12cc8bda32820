"""Record `HostChange` after every committed change of a proxy host or its locations.

Connected by the dashboard app, which comes after `manager.hosts` in INSTALLED_APPS, so the
revision bump (`manager.hosts.signals`) has happened before these run; the revision is read
on commit, when the bump is visible."""
from django.db import transaction
from django.db.models.signals import post_delete, post_save


def _record(host_id):
    from manager.hosts.models import ProxyHost
    from manager.hosts.revision import current_revision

    from .models import HostChange

    if host_id is None or not ProxyHost.objects.filter(pk=host_id).exists():
        return
    HostChange.objects.update_or_create(proxy_host_id=host_id, defaults={"revision": current_revision()})


def _host_saved(sender, instance, **kwargs):
    if not kwargs.get("raw"):
        transaction.on_commit(lambda: _record(instance.pk))


def _location_changed(sender, instance, **kwargs):
    if not kwargs.get("raw"):
        host_id = instance.proxy_host_id
        transaction.on_commit(lambda: _record(host_id))


def connect():
    from manager.hosts.models import Location, ProxyHost

    post_save.connect(_host_saved, sender=ProxyHost, dispatch_uid="dashboard-host-change")
    post_save.connect(_location_changed, sender=Location, dispatch_uid="dashboard-location-change")
    post_delete.connect(_location_changed, sender=Location, dispatch_uid="dashboard-location-delete")
