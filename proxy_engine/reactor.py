"""The engine's reactor: Twisted's epoll reactor with a leaner event dispatch.

`EPollReactor.doPoll` wraps every ready socket's handler in `log.callWithLogger`, which asks
the transport for its log prefix, builds a context dict and runs the handler through the
thread-local context tracker: several Python calls per event, paid twice per proxied
request (client read, upstream read). `EngineReactor` calls `_doReadOrWrite` directly;
that method already catches and logs whatever a handler raises and disconnects the
socket. Log records from inside handlers lose the transport's prefix as their "system";
the engine logs through `logging`, which never used it.

`install()` must run before anything imports `twisted.internet.reactor` (workers call it
first thing after the fork).
"""
import errno
import logging

from twisted.internet.epollreactor import EPollReactor

log = logging.getLogger(__name__)


class EngineReactor(EPollReactor):
    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                try:
                    dispatch(selectable, fd, event)
                except Exception:
                    log.exception("error while handling an event on %r", selectable)

    doIteration = doPoll


def install():
    """Install `EngineReactor` as the global reactor (once, before it is first imported)."""
    from twisted.internet.main import installReactor

    reactor = EngineReactor()
    installReactor(reactor)
    return reactor
