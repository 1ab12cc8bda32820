"""Builders shared by the engine tests: documents, and a proxy wired to fake transports."""
import copy

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from proxy_engine.events import RequestIds
from proxy_engine.protocol import ProxyFactory
from proxy_engine.snapshot import parse_snapshot

BASE = {
    "revision": 1,
    "settings": {"default_site": {"action": "404"}, "trusted_proxies": ["10.0.0.0/8"]},
    "proxy_hosts": [{
        "id": 1,
        "domains": ["app.example.test", "*.apps.example.test"],
        "upstreams": [{"scheme": "http", "host": "10.0.1.10", "port": 3000, "weight": 1}],
        "load_balancing": {"policy": "round_robin", "health_check": None},
        "websockets": True,
        "timeouts": {"connect": 5.0, "response": 30.0},
        "max_body_size": 1000,
        "locations": [
            {"path": "/static/", "upstreams": [{"scheme": "http", "host": "10.0.1.20", "port": 80, "weight": 1}]},
            {"path": "/static/big/", "upstreams": [{"scheme": "http", "host": "10.0.1.30", "port": 80, "weight": 1}]},
            {"path": "/inherit/", "upstreams": []},
        ],
    }],
    "redirection_hosts": [{"id": 4, "domains": ["old.example.test"], "to": "https://new.example.test",
                           "code": 301, "preserve_path": True}],
    "dead_hosts": [{"id": 5, "domains": ["gone.example.test"]}],
    "streams": [], "access_lists": [], "certificates": [],
}


def document(**changes):
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


class RecordingSink:
    """An event sink that keeps what the engine reported, as dicts."""

    def __init__(self):
        self.events = []

    def on_upstream_error(self, host_id, request_id, upstream, status, cause, detail, timestamp):
        self.events.append(dict(host_id=host_id, request_id=request_id, upstream=upstream, status=status,
                                cause=cause, detail=detail, timestamp=timestamp))


class Harness:
    """A ProxyFactory on a MemoryReactorClock; clients and upstreams on StringTransports."""

    def __init__(self, doc=None, peer="192.0.2.7"):
        self.reactor = MemoryReactorClock()
        self.events = RecordingSink()
        self.factory = ProxyFactory(self.reactor, header_timeout=10.0, idle_timeout=20.0, events=self.events,
                                    request_ids=RequestIds("t"))
        self.factory.swap(parse_snapshot(doc or document()))
        self.peer = peer

    def client(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", self.peer, 40000))
        proto.makeConnection(transport)
        return proto, transport

    def connect_upstream(self, index=-1):
        """Complete the connection attempt number `index`; returns (address, protocol, transport)."""
        host, port, attempt, timeout, _ = self.reactor.tcpClients[index]
        proto = attempt.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return (host, port, timeout), proto, transport
