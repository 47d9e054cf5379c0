"""A kombu AMQP transport that reads ahead: fewer system calls per event received.

py-amqp reads each frame with three ``recv`` calls of exactly the bytes it needs (the 7-byte
header, the payload, the end octet), and sets and restores the socket's timeout around every
frame. A KAT event is three frames (method, header, body), so a burst of 10,000 events costs
about 150,000 system calls on the listener's receiving thread, which profiling showed as its
largest single cost.

:class:`ReadAheadTransport` is kombu's own ``pyamqp`` transport with one change underneath:
its TCP transport asks the socket for up to :data:`READ_AHEAD` bytes whenever it must read
(``recv`` returns what has arrived, so it never waits for more than a frame needs) and keeps
the rest in py-amqp's own read buffer, which py-amqp already consumes first. While a complete
frame is in that buffer, reading it touches no socket, so the timeout is not set around it.

Everything else (framing, channels, acks, TLS) is py-amqp's: an ``amqps://`` URL gets py-amqp's
stock SSL transport.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp.transport import TCPTransport
from amqp.transport import Transport as amqp_transport
from kombu.transport import pyamqp

#: Bytes asked of the socket per read: about twenty KAT events. Larger is slower: every read
#: copies what is left of py-amqp's bytes buffer (64 KiB read 10,000 events in 205-290 ms on a
#: socketpair, 8 KiB in 120-240 ms, py-amqp's exact reads in 400-530 ms).
READ_AHEAD = 8192

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size; then the payload and 0xCE
FRAME_END = 0xCE


class ReadAheadTCPTransport(TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport, reading up to :data:`READ_AHEAD` bytes per ``recv``."""

    _read_buffer: bytes  # py-amqp's: received, not yet taken

    def _read(self, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)) -> bytes:
        # As py-amqp's own _read (same errors, same buffer), but asks for more than ``n``.
        recv = self._quick_recv
        buffered: bytes = self._read_buffer
        try:
            while len(buffered) < n:
                try:
                    chunk = recv(max(n - len(buffered), READ_AHEAD))
                except OSError as exc:
                    if exc.errno in _errnos:
                        if initial and self.raise_on_initial_eintr:
                            raise TimeoutError() from exc
                        continue
                    raise
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                buffered += chunk
        except BaseException:
            self._read_buffer = buffered
            raise
        self._read_buffer = buffered[n:]
        return buffered[:n]

    def take_frame(self) -> tuple[int, int, bytes] | None:
        """The next frame, taken from the read buffer if all of it is there; else ``None`` (nothing taken).

        A frame whose end octet is wrong is left for py-amqp's ``read_frame``, which raises for it.
        """
        buffered: bytes = self._read_buffer
        if len(buffered) < _HEADER.size:
            return None
        frame_type, channel, size = _HEADER.unpack_from(buffered)
        end = _HEADER.size + size
        if len(buffered) <= end or buffered[end] != FRAME_END:
            return None
        self._read_buffer = buffered[end + 1 :]
        return frame_type, channel, buffered[_HEADER.size : end]

    def read_frame(self, unpack: Any = struct.unpack) -> tuple[int, int, bytes]:
        # A buffered frame in one slice; py-amqp's three reads only when it must wait for bytes.
        frame = self.take_frame()
        return frame if frame is not None else super().read_frame(unpack)

    def frame_buffered(self) -> bool:
        """Whether a whole frame is in the read buffer (so reading it needs no socket)."""
        buffered: bytes = self._read_buffer
        if len(buffered) < _HEADER.size:
            return False
        size = _HEADER.unpack_from(buffered)[2]
        return bool(len(buffered) >= _HEADER.size + size + 1)

    @contextmanager
    def having_timeout(self, timeout: float | None) -> Iterator[Any]:
        if timeout is not None and self.frame_buffered():
            yield self.sock  # the frame is buffered: no socket read, so no timeout to set and restore
            return
        with super().having_timeout(timeout) as sock:
            yield sock


class _Connection(pyamqp.Connection):
    def blocking_read(self, timeout: float | None = None) -> Any:
        frame = self._take_frame()
        if frame is None:  # the socket must be read: py-amqp's, with its timeout
            return super().blocking_read(timeout)
        return self.on_inbound_frame(frame)

    def drain_buffered(self) -> None:
        """Handle every frame already received (none is waited for)."""
        while (frame := self._take_frame()) is not None:
            self.on_inbound_frame(frame)

    def _take_frame(self) -> tuple[int, int, bytes] | None:
        transport = self._transport
        return transport.take_frame() if isinstance(transport, ReadAheadTCPTransport) else None

    def Transport(
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: Any = None,
        **kwargs: Any,
    ) -> Any:
        options = dict(read_timeout=read_timeout, write_timeout=write_timeout, socket_settings=socket_settings)
        if ssl:
            return amqp_transport(host, connect_timeout=connect_timeout, ssl=ssl, **options, **kwargs)
        return ReadAheadTCPTransport(host, connect_timeout=connect_timeout, **options, **kwargs)


class ReadAheadTransport(pyamqp.Transport):
    """kombu's ``pyamqp`` transport over :class:`ReadAheadTCPTransport`; pass as ``transport=``."""

    Connection = _Connection

    def drain_events(self, connection: _Connection, **kwargs: Any) -> Any:
        """kombu's (frames until one method is complete, waiting up to ``timeout``), then every
        frame already received: the consumer's loop goes round once per read, not once per event
        (a pass of that loop costs about as much as the frames of an event).

        Only here, in the consumer's own wait: py-amqp's waits for a reply (``basic_consume``,
        say) stay one method at a time, since a delivery handled before ``basic_consume`` has
        registered its callback would be rejected (and redelivered out of order).
        """
        result = connection.drain_events(**kwargs)
        connection.drain_buffered()
        return result
