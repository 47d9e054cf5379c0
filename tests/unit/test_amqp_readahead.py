"""The read-ahead AMQP transport: same frames as py-amqp's, from far fewer socket reads."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from amqp.exceptions import UnexpectedFrame

from kat_scheduler.events.amqp_readahead import ReadAheadTCPTransport

FRAME_END = b"\xce"


def frame(channel: int, payload: bytes, frame_type: int = 1) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + FRAME_END


class CountingSocket:
    """A socket whose ``recv`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.fixture
def pair() -> Iterator[tuple[ReadAheadTCPTransport, CountingSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    transport = ReadAheadTCPTransport("127.0.0.1:5672")  # not connected: we hand it a socket
    counting = CountingSocket(ours)
    transport.sock = counting
    transport._setup_transport()
    transport.connected = True
    yield transport, counting, theirs
    ours.close()
    theirs.close()


def test_a_burst_of_frames_is_read_whole_with_a_few_socket_reads(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, counting, broker = pair
    payloads = [f"event {n}".encode() * (n % 7 + 1) for n in range(300)]
    broker.sendall(b"".join(frame(n % 3 + 1, p) for n, p in enumerate(payloads)))

    read = [transport.read_frame() for _ in payloads]

    assert [(t, c, bytes(p)) for t, c, p in read] == [(1, n % 3 + 1, p) for n, p in enumerate(payloads)]
    assert counting.recvs <= 5  # py-amqp's own transport: three reads per frame, 900 here
    assert not transport.frame_buffered()


def test_a_frame_cut_off_by_a_timeout_is_read_whole_once_the_rest_arrives(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, _, broker = pair
    whole = frame(5, b"x" * 1000)
    broker.sendall(frame(1, b"first") + whole[:400])

    with transport.having_timeout(0.05):
        assert transport.read_frame()[1:] == (1, b"first")
    with pytest.raises(socket.timeout), transport.having_timeout(0.05):
        transport.read_frame()
    broker.sendall(whole[400:])
    with transport.having_timeout(0.05):
        assert transport.read_frame() == (1, 5, b"x" * 1000)


def test_a_buffered_frame_is_read_without_setting_the_socket_timeout(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, counting, broker = pair
    broker.sendall(frame(1, b"a") + frame(1, b"b"))
    with transport.having_timeout(1.0):
        transport.read_frame()
    assert transport.frame_buffered()
    transport.sock.settimeout(None)

    with transport.having_timeout(0.5) as sock:
        assert sock.gettimeout() is None  # left alone: this frame needs no socket read
        assert transport.read_frame()[2] == b"b"
    assert counting.recvs == 1


def test_a_closed_connection_is_an_error_not_a_hang(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, _, broker = pair
    broker.sendall(frame(1, b"complete") + frame(1, b"cut")[:5])
    broker.close()

    assert transport.read_frame()[2] == b"complete"
    with pytest.raises(OSError, match="closed"):
        transport.read_frame()


def test_only_a_whole_buffered_frame_is_taken_without_reading_the_socket(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, counting, broker = pair
    cut = frame(2, b"y" * 100)
    broker.sendall(frame(1, b"a") + frame(1, b"b") + cut[:50])
    assert transport.read_frame()[2] == b"a"
    reads = counting.recvs

    assert transport.take_frame() == (1, 1, b"b")
    assert transport.take_frame() is None  # half a frame: left where it is
    assert counting.recvs == reads
    broker.sendall(cut[50:])
    assert transport.read_frame() == (1, 2, b"y" * 100)


def test_a_frame_with_a_wrong_end_octet_is_an_error_not_a_frame(
    pair: tuple[ReadAheadTCPTransport, CountingSocket, socket.socket],
) -> None:
    transport, _, broker = pair
    broker.sendall(frame(1, b"fine") + frame(1, b"broken")[:-1] + b"\x00")
    assert transport.read_frame()[2] == b"fine"

    assert transport.take_frame() is None
    with pytest.raises(UnexpectedFrame, match="frame_end"):
        transport.read_frame()
