"""Writing to a Twisted TCP transport without a detour through the reactor.

`FileDescriptor.write` only queues: the bytes leave on the next reactor iteration, after one
`epoll_ctl` that registers the socket for writing and another that removes it once the
buffer is empty. For a proxy relaying small messages that is two system calls, one more
loop pass and one more event dispatch per write, for a socket that was writable anyway.

`send(transport, data)` hands `data` to the kernel at once when the transport is a plain TCP
connection (not TLS) with nothing queued, which is what a proxy almost always finds; only
what the kernel did not take is queued with the ordinary `write`. Any other transport (TLS,
test doubles) and a transport that has bytes queued or is closing gets the ordinary `write`,
so ordering, producer pausing and error handling stay Twisted's.
"""
from twisted.internet import tcp

_PLAIN_TCP = frozenset((tcp.Server, tcp.Client, tcp.Connection))


def send(transport, data):
    """Write `data` (bytes) to `transport`, at once when that is safe."""
    if (transport.__class__ in _PLAIN_TCP and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._aborting and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataLen):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0            # the reactor meets the error again on its own write
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def send_sequence(transport, parts):
    """Write a list of byte strings as one piece (one system call when sent at once)."""
    send(transport, b"".join(parts))
