"""Writes that go straight to the socket, and the cases that must go through Twisted's queue."""
import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from proxy_engine.fastio import send, send_sequence
from tests.engine.support import Harness


def connection():
    """A real TCP transport (over a socket pair) on a MemoryReactor, and the peer socket."""
    ours, peer = socket.socketpair()
    reactor = MemoryReactor()
    transport = tcp.Connection(ours, Protocol(), reactor)
    transport.connected = 1
    peer.setblocking(False)
    return transport, peer, reactor


def read_all(peer):
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        chunks.append(chunk)


def test_it_sends_at_once_when_nothing_is_queued():
    transport, peer, reactor = connection()
    send_sequence(transport, [b"HTTP/1.1 200 OK\r\n", b"\r\n", b"hi"])
    assert read_all(peer) == b"HTTP/1.1 200 OK\r\n\r\nhi"
    assert transport not in reactor.getWriters(), "no epoll registration for a write that went out"
    assert not transport.dataBuffer and not transport._tempDataLen


def test_what_the_kernel_does_not_take_is_queued_in_order():
    transport, peer, reactor = connection()
    big = b"x" * (8 << 20)
    send(transport, big)
    assert transport in reactor.getWriters()
    send(transport, b"after")                      # queued behind, never overtaking
    got = read_all(peer)
    assert 0 < len(got) < len(big)
    while transport in reactor.getWriters():
        transport.doWrite()
        got += read_all(peer)
    assert got == big + b"after"


def test_a_closing_transport_gets_the_ordinary_write():
    transport, peer, reactor = connection()
    transport.loseConnection()
    send(transport, b"last words")
    assert read_all(peer) == b""
    assert transport._tempDataLen == len(b"last words")


def test_other_transports_get_the_ordinary_write():
    transport = StringTransport()
    send_sequence(transport, [b"a", b"b"])
    send(transport, b"c")
    assert transport.value() == b"abc"


def test_a_response_head_and_body_read_together_reach_the_client_in_one_write():
    h = Harness()
    client, ct = h.client()
    writes = []
    ct.write = lambda data: (writes.append(data), StringTransport.write(ct, data))
    client.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
    _, up, _ = h.connect_upstream()
    up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\nhello")
