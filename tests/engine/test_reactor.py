"""EngineReactor's event dispatch, on a reactor that is built but never installed or run."""
import socket

from twisted.internet.abstract import FileDescriptor

from proxy_engine.reactor import EngineReactor


class Reader(FileDescriptor):
    def __init__(self, reactor, sock):
        super().__init__(reactor)
        self.sock = sock
        self.reads = []
        self.lost = []

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        self.reads.append(self.sock.recv(100))

    def connectionLost(self, reason):
        self.lost.append(reason)


def test_a_ready_socket_is_dispatched_to_its_reader():
    reactor = EngineReactor()
    ours, peer = socket.socketpair()
    try:
        reader = Reader(reactor, ours)
        reactor.addReader(reader)
        reactor.doPoll(0)
        assert reader.reads == []
        peer.send(b"ping")
        reactor.doPoll(0)
        assert reader.reads == [b"ping"]
        reactor.removeReader(reader)
        peer.send(b"again")
        reactor.doPoll(0)
        assert reader.reads == [b"ping"]
    finally:
        ours.close()
        peer.close()
        reactor._poller.close()


def test_a_reader_that_raises_is_disconnected_and_the_loop_goes_on():
    reactor = EngineReactor()
    ours, peer = socket.socketpair()
    try:
        reader = Reader(reactor, ours)
        reader.doRead = lambda: 1 / 0
        reactor.addReader(reader)
        peer.send(b"boom")
        reactor.doPoll(0)
        assert len(reader.lost) == 1 and reader.lost[0].check(ZeroDivisionError)
        assert reader not in reactor.getReaders()
    finally:
        ours.close()
        peer.close()
        reactor._poller.close()
