"""The "Upstream health" panel of a proxy host: what the live engine workers say about each
of the host's upstreams.

Each engine worker reports the state of the upstreams of the hosts that have active or
passive checks with its status (`EngineNode.upstream_health`, see
`manager.hosts.models.clean_health`): {"<host id>": {"<host>:<port>": {state, since,
reason}}}. Only live workers count (reported within `EngineNode.GONE_AFTER`). Workers
check independently, so an upstream can be down on one and up on another: the panel says
"down on 1 of 2 nodes" (engine workers) with the earliest `since` and the reasons given.
"""
import datetime
from dataclasses import dataclass, field

from manager.hosts.models import EngineNode
from manager.lib import validators

UP, DOWN, PARTLY_DOWN, UNKNOWN = "up", "down", "partly down", "not reported"


@dataclass
class UpstreamHealth:
    upstream: str                 # as the dashboard shows it: http://10.0.1.20:8096
    state: str                    # UP, DOWN, PARTLY_DOWN or UNKNOWN
    summary: str                  # "down on 1 of 2 nodes"
    since: datetime.datetime = None
    reasons: list = field(default_factory=list)
    nodes: list = field(default_factory=list)     # [(worker name, state, reason)]


@dataclass
class HostHealth:
    configured: bool              # the host has active or passive checks
    workers: int                  # live workers
    upstreams: list               # [UpstreamHealth]


def _upstreams_of(host):
    """The host's upstreams and its locations' ones, each once, in order."""
    seen, result = set(), []
    entries = list(host.upstreams) + [u for location in host.locations.all() for u in location.upstreams]
    for entry in entries:
        identity = (entry["scheme"], entry["host"], entry["port"])
        if identity not in seen:
            seen.add(identity)
            result.append(entry)
    return result


def _keys(entry):
    """The keys a worker may file an upstream under: host:port, IPv6 with or without brackets."""
    return (validators.format_host_port(entry["host"], entry["port"]), f"{entry['host']}:{entry['port']}")


def _when(since):
    if since is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(since, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _nodes(count):
    return f"{count} node{'s' if count != 1 else ''}"


def host_health(host, nodes=None):
    nodes = list(EngineNode.live()) if nodes is None else list(nodes)
    result = HostHealth(configured=host.has_health_checks(), workers=len(nodes), upstreams=[])
    if not result.configured:
        return result
    for entry in _upstreams_of(host):
        shown = validators.format_upstream_url(entry["scheme"], entry["host"], entry["port"])
        reports = []
        for node in nodes:
            states = (node.upstream_health or {}).get(str(host.pk)) or {}
            state = next((states[key] for key in _keys(entry) if key in states), None)
            if state is not None:
                reports.append((node, state))
        down = [(node, state) for node, state in reports if state["state"] == "down"]
        row = UpstreamHealth(shown, UNKNOWN, "", nodes=[(n.name, s["state"], s.get("reason", "")) for n, s in reports])
        if not nodes:
            row.summary = "no engine worker has reported in the last 2 minutes"
        elif not reports:
            row.summary = f"not reported yet by the {_nodes(len(nodes))}"
        elif down:
            row.state = DOWN if len(down) == len(reports) else PARTLY_DOWN
            row.summary = f"down on {len(down)} of {_nodes(len(nodes))}"
            times = [when for when in (_when(state.get("since")) for _, state in down) if when is not None]
            row.since = min(times) if times else None
            row.reasons = list(dict.fromkeys(state["reason"] for _, state in down if state.get("reason")))
        else:
            row.state = UP
            row.summary = f"up on {len(reports)} of {_nodes(len(nodes))}"
            times = [when for when in (_when(state.get("since")) for _, state in reports) if when is not None]
            row.since = max(times) if times else None
        result.upstreams.append(row)
    return result
