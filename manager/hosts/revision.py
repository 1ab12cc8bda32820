"""The configuration revision: bumped inside every transaction that changes the
configuration, announced on Redis once that transaction commits.

The engine polls `current_revision()` as a fallback, so a lost or impossible publish
only delays a change by one poll interval; it is logged and never fails the change.
"""
import logging

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from .models import ConfigRevision

log = logging.getLogger(__name__)


def current_revision():
    row = ConfigRevision.objects.filter(pk=1).values_list("revision", flat=True).first()
    return row or 0


def config_changed():
    """Record a configuration change in the current transaction."""
    if not ConfigRevision.objects.filter(pk=1).update(revision=F("revision") + 1):
        ConfigRevision.objects.create(pk=1, revision=1)
    if not any(func is publish_revision for _, func, _ in connection.run_on_commit):
        transaction.on_commit(publish_revision)


def publish_revision():
    if not settings.REDIS_URL:
        return
    revision = current_revision()
    try:
        client = _redis_client()
        client.publish(settings.CONFIG_CHANNEL, str(revision))
    except Exception as exc:  # Redis down: the engine's poll picks the change up.
        log.warning("could not publish config revision %s on Redis: %s", revision, exc)


_clients = {}


def _redis_client():
    url = settings.REDIS_URL
    if url not in _clients:
        import redis

        _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    return _clients[url]
