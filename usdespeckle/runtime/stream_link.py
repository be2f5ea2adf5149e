"""OpenIGTLink over TCP for live streams: a receiving client that reconnects, a server for many clients.

The messages are pyigtl's (``pyigtl.messages``: packing, unpacking, timestamps, the CRC-64); the
sockets are this module's, because pyigtl 0.3.4's ``OpenIGTLinkClient`` and ``OpenIGTLinkServer``
do not fit a relay that runs for hours: the server serves one client at a time and queues up to
100 messages while none is connected (a late client first gets 100 stale frames), a client that
only receives never notices that its source closed, neither limits a message's size, errors print
a traceback, and the server takes over SIGINT and SIGTERM.

Here:

- :class:`StreamReceiver` connects to a source (PLUS, a scanner bridge, ``usdespeckle stream
  --replay``), waits for it with a growing pause (0.1 s doubling up to 2 s) when it is not there
  yet or has gone, and hands each IMAGE and TRANSFORM message to a callback from its own thread.
  A message that cannot be read (bad CRC, bad image header) is refused with one log line and the
  stream goes on; one larger than the limit is refused and the connection opened again (its body
  is not read).
- :class:`StreamServer` accepts any number of clients; each gets the newest message of each device
  (one slot per device, never a queue: a slow client skips frames). Closing it frees its port.

Everything is loopback-testable: pass port 0 and read :attr:`StreamServer.port`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from usdespeckle.runtime.options import STREAM_MAX_MESSAGE_BYTES

__all__ = ["HEADER", "MessageRefused", "StreamReceiver", "StreamServer", "read_message"]

logger = logging.getLogger("usdespeckle.runtime.stream")

#: The OpenIGTLink header: version, type (12 bytes), device name (20), timestamp (seconds, fraction),
#: body size, CRC-64 of the body; 58 bytes, big-endian.
HEADER = struct.Struct("> H 12s 20s I I Q Q")
#: Message types the relay reads; others (STATUS, GET_*, ...) are skipped quietly.
READ_TYPES = ("IMAGE", "TRANSFORM")
#: Seconds a message body may stall before the connection is considered broken.
BODY_TIMEOUT = 5.0
#: Bytes of kernel receive buffer asked for: a few frames, so that a source with a short send timeout
#: (pyigtl's server gives up after 10 ms) keeps its connection while the relay's receiving thread
#: waits for the CPU; the thread then reads them all and keeps the newest.
RECEIVE_BUFFER = 8 * 2**20
#: Seconds a client may take to accept one message before it is disconnected.
SEND_TIMEOUT = 10.0
#: Seconds between checks of the stop flag while a socket waits.
TICK = 0.1


class MessageRefused(ValueError):
    """A message that could not be read; the connection goes on (its body was consumed)."""


class _Broken(Exception):
    """The connection is lost or must be opened again (peer closed, stalled, oversized message)."""


class _Oversized(_Broken):
    """A message over the size limit: its body is not read, so the connection is opened again."""


def _recv_exact(sock: socket.socket, size: int, stop: threading.Event, *, idle_ok: bool) -> bytearray | None:
    """Read exactly ``size`` bytes; None when ``stop`` is set.

    Args:
        idle_ok: True before a message starts (waiting is normal); False inside one, where a stall
            longer than :data:`BODY_TIMEOUT` breaks the connection.

    Raises:
        _Broken: the peer closed the connection or stalled inside a message.
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    last = time.monotonic()
    while got < size:
        if stop.is_set():
            return None
        try:
            n = sock.recv_into(view[got:], size - got)
        except TimeoutError:
            if not (idle_ok and got == 0) and time.monotonic() - last > BODY_TIMEOUT:
                raise _Broken(f"no data for {BODY_TIMEOUT:.0f} s inside a message") from None
            continue
        except OSError as err:
            raise _Broken(str(err)) from None
        if n == 0:
            raise _Broken("the source closed the connection")
        got += n
        last = time.monotonic()
    return buffer


def read_message(
    sock: socket.socket, stop: threading.Event, max_bytes: int = STREAM_MAX_MESSAGE_BYTES
) -> Any | None:
    """Read one message from ``sock``: a pyigtl message for IMAGE and TRANSFORM, else None.

    Returns None also when ``stop`` is set.

    Raises:
        MessageRefused: the message is damaged (CRC, header, image data); its bytes were consumed.
        _Broken: the connection is closed or stalled, or the body is over ``max_bytes`` (not read).
    """
    from pyigtl.messages import CRC64, MessageBase

    header = _recv_exact(sock, HEADER.size, stop, idle_ok=True)
    if header is None:
        return None
    _, kind, name, _, _, body_size, crc = HEADER.unpack(header)
    kind_text = kind.rstrip(b" \0").decode("ascii", "replace")
    name_text = name.rstrip(b" \0").decode("utf-8", "replace")
    if body_size > max_bytes:
        raise _Oversized(
            f"refused a {kind_text} message of {body_size} bytes from {name_text!r} (limit {max_bytes}: "
            "--max-message-bytes); connecting again"
        )
    body = _recv_exact(sock, body_size, stop, idle_ok=False)
    if body is None or kind_text not in READ_TYPES:
        return None
    body = bytes(body)
    if CRC64(body) != crc:
        raise MessageRefused(f"refused a {kind_text} message from {name_text!r}: its CRC does not match")
    try:
        fields = MessageBase.parse_header(bytes(header))
        message = MessageBase.create_message(kind_text)
        message.unpack(fields, body)
    except Exception as err:  # pyigtl raises struct.error, ValueError, KeyError, NotImplementedError
        raise MessageRefused(
            f"refused a {kind_text} message from {name_text!r}: {type(err).__name__}: {err}"
        ) from None
    return message


class StreamReceiver:
    """Receives messages from an OpenIGTLink server in a thread of its own, reconnecting as needed.

    Args:
        host, port: the source's address.
        on_message: called as ``on_message(message, received)`` from the receiving thread, with
            a pyigtl ``ImageMessage`` or ``TransformMessage`` and ``time.monotonic()`` at its arrival.
            It must return quickly (store the message, never process it there).
        max_bytes: largest message body accepted, bytes.
        backoff: first and longest pause between connection attempts, seconds.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Any, float], None],
        *,
        max_bytes: int = STREAM_MAX_MESSAGE_BYTES,
        backoff: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.host, self.port = host, int(port)
        self.on_message = on_message
        self.max_bytes = int(max_bytes)
        self.backoff = backoff
        self.connected = threading.Event()
        self.connections = 0  # how many times a connection was made
        self.refused = 0  # messages refused (damaged or oversized)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="igtl-receiver", daemon=True)

    def start(self) -> StreamReceiver:
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop receiving and close the connection (waits up to ``timeout`` seconds for the thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _connect(self) -> socket.socket | None:
        pause, said = self.backoff[0], False
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as err:
                if not said:
                    logger.info(
                        "waiting for the source at %s:%d (%s)", self.host, self.port, err.strerror or err
                    )
                    said = True
                self._stop.wait(pause)
                pause = min(pause * 2, self.backoff[1])
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):  # the system may cap it (Linux: net.core.rmem_max)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.settimeout(TICK)
            self.connections += 1
            logger.info("connected to the source at %s:%d", self.host, self.port)
            return sock
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            sock = self._connect()
            if sock is None:
                return
            self.connected.set()
            try:
                self._receive(sock)
            except _Broken as err:
                logger.warning("%s (source %s:%d)", err, self.host, self.port)
            finally:
                self.connected.clear()
                sock.close()
            self._stop.wait(self.backoff[0])

    def _receive(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                message = read_message(sock, self._stop, self.max_bytes)
            except MessageRefused as err:
                self.refused += 1
                logger.warning("%s", err)
                continue
            except _Oversized:
                self.refused += 1
                raise
            if message is not None:
                self.on_message(message, time.monotonic())


class _Client:
    """One connected client: a sending thread fed by one slot per device, and a draining reader."""

    def __init__(self, sock: socket.socket, address: str, on_close: Callable[[_Client], None]) -> None:
        self.sock, self.address, self.on_close = sock, address, on_close
        self._slots: dict[str, bytes] = {}
        self._ready = threading.Condition()
        self.closed = False
        self.skipped = 0  # messages replaced before this client could take them
        self._threads = [
            threading.Thread(target=self._send_loop, name=f"igtl-send-{address}", daemon=True),
            threading.Thread(target=self._drain_loop, name=f"igtl-drain-{address}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def offer(self, device: str, data: bytes) -> None:
        with self._ready:
            if device in self._slots:
                self.skipped += 1
                del self._slots[device]  # re-inserted last: devices go out in arrival order
            self._slots[device] = data
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            if self.closed:
                return
            self.closed = True
            self._ready.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.on_close(self)

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _send_loop(self) -> None:
        while True:
            with self._ready:
                while not self._slots and not self.closed:
                    self._ready.wait()
                if self.closed:
                    return
                batch = list(self._slots.values())
                self._slots.clear()
            try:
                for data in batch:
                    self.sock.sendall(data)
            except OSError:
                logger.info("client %s disconnected", self.address)
                self.close()
                return

    def _drain_loop(self) -> None:
        """Read and discard what the client sends (Slicer may send STATUS or GET_ messages)."""
        while not self.closed:
            try:
                if not select.select([self.sock], [], [], TICK)[0]:
                    continue
                data = self.sock.recv(65536)
            except (OSError, ValueError):  # ValueError: the socket was closed meanwhile
                data = b""
            if not data:
                if not self.closed:
                    logger.info("client %s disconnected", self.address)
                self.close()
                return


class StreamServer:
    """An OpenIGTLink server sending the newest message of each device to every connected client.

    Args:
        port: TCP port; 0 picks a free one (read :attr:`port`).
        host: interface to listen on: ``127.0.0.1`` (this computer only, default) or ``0.0.0.0``.

    Raises:
        OSError: the port is taken (the message names it).
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            self._listener = socket.create_server((host, int(port)))  # SO_REUSEADDR on POSIX
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise OSError(f"cannot serve on {host}:{port} ({reason}); choose another --serve port") from None
        self._listener.settimeout(TICK)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connections = 0  # clients accepted so far
        self._thread = threading.Thread(target=self._accept_loop, name="igtl-accept", daemon=True)
        self._thread.start()

    @property
    def clients(self) -> int:
        """Clients connected now."""
        with self._lock:
            return len(self._clients)

    def send(self, message: Any) -> int:
        """Offer a pyigtl message to every client (packed once); returns the number of clients."""
        data = message.pack()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.offer(message.device_name, data)
        return len(clients)

    def close(self, timeout: float = 2.0) -> None:
        """Disconnect every client and free the port."""
        self._stop.set()
        self._thread.join(timeout)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()
            client.join(timeout)

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(SEND_TIMEOUT)
            name = f"{address[0]}:{address[1]}"
            logger.info("client %s connected to port %d", name, self.port)
            with self._lock:
                self.connections += 1
                self._clients.append(_Client(sock, name, self._forget))
