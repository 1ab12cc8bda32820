"""Whether the engine serves a proxy host's last change, and each host's state.

The rule ("applied"): the host's last change has a revision R (`HostChange`, recorded right
after the change committed; a host without one, e.g. created before this existed, uses the
current revision). The change is *applied* when at least one engine worker is live (reported
within `EngineNode.GONE_AFTER`) and every live worker serves a revision >= R: a worker's
snapshot is built from rows read after its revision, so it contains every change up to it.
Otherwise it is an *error* when a live worker's last load/parse error names this host, or
when a live worker still serves < R and has an error (the engine refuses the newer
configuration), and *pending* when no worker has an error (the change will show within one
poll interval). With no live worker the state is *no engine*.
"""
from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from manager.hosts.models import EngineNode, UpstreamError
from manager.hosts.revision import current_revision

APPLIED, PENDING, ERROR, NO_ENGINE = "applied", "pending", "error", "no engine"
RECENT_ERRORS = timedelta(minutes=15)


@dataclass
class HostStatus:
    state: str
    revision: int                         # the revision the host's last change needs
    nodes: list = field(default_factory=list)
    error: str = ""
    error_at: object = None
    error_node: str = ""


def change_revision(host, current=None):
    if _has_change(host):
        return host.last_change.revision
    return current if current is not None else current_revision()


def _has_change(host):
    from .models import HostChange

    try:
        return host.last_change is not None
    except HostChange.DoesNotExist:
        return False


def host_status(host, nodes=None, current=None):
    nodes = list(EngineNode.live()) if nodes is None else list(nodes)
    needed = change_revision(host, current)
    status = HostStatus(PENDING, needed, nodes)
    if not nodes:
        status.state = NO_ENGINE
        return status
    for node in nodes:
        if node.last_error and host.pk in (node.error_hosts or []):
            status.state, status.error, status.error_at, status.error_node = (
                ERROR, node.last_error, node.last_error_at, node.name)
            return status
    behind = [n for n in nodes if n.served_revision is None or n.served_revision < needed]
    if not behind:
        status.state = APPLIED
        return status
    for node in behind:
        if node.last_error:
            status.state, status.error, status.error_at, status.error_node = (
                ERROR, node.last_error, node.last_error_at, node.name)
            return status
    return status


def host_states(hosts, now=None):
    """{host pk: "serving" | "disabled" | "error"} for the overview: error = upstream errors in
    the last 15 minutes or named by a live engine worker's load error."""
    now = now or timezone.now()
    hosts = list(hosts)
    failing = set(UpstreamError.objects.filter(proxy_host__in=hosts, created_at__gte=now - RECENT_ERRORS)
                  .values_list("proxy_host_id", flat=True))
    for node in EngineNode.live(now):
        if node.last_error:
            failing.update(node.error_hosts or [])
    return {h.pk: "disabled" if not h.enabled else "error" if h.pk in failing else "serving" for h in hosts}
