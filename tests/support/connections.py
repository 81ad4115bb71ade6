"""Raw TCP clients that misbehave on purpose, and what the server holds for them,
read from /proc (its sockets, its memory)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

ESTABLISHED = "01"


class RawConnection:
    """A client connection under the test's full control: it sends what it is told
    and reads only when asked (a bare socket: nothing reads ahead into a buffer). A
    small receive buffer makes a client that does not read fill up fast."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    @classmethod
    async def open(cls, port: int, receive_buffer: int | None = None) -> RawConnection:
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    @property
    def local_port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.socket, data)

    async def read_until_closed(self, timeout: float) -> bytes:  # noqa: ASYNC109
        """Everything until the server closes the connection (a reset counts as
        closed); TimeoutError if it is still open after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await loop.sock_recv(self.socket, 65_536)
                except ConnectionResetError:
                    return bytes(received)
                if not chunk:
                    return bytes(received)
                received += chunk

    async def read_response(self, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        """One whole response with a Content-Length, the connection left open."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                head, found, body = bytes(received).partition(b"\r\n\r\n")
                if found:
                    length = next(
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    if len(body) >= length:
                        return bytes(received)
                chunk = await loop.sock_recv(self.socket, 65_536)
                assert chunk, f"closed after {bytes(received)!r}"
                received += chunk

    def close(self) -> None:
        self.socket.close()


def watch_request(path: str = "/api/v1/watch", api_key: str = "gateway-service-key") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: potok\r\nx-api-key: {api_key}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()


def decode_chunked(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, decoded; it must end with the last chunk."""
    decoded = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(decoded)
        decoded += rest[:size]
        body = rest[size + 2 :]


def server_sockets(port: int) -> set[int]:
    """The remote ports of the ESTABLISHED connections whose local end is `port`
    (the server's ends, on loopback)."""
    remote_ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if state == ESTABLISHED and int(local.rsplit(":", 1)[1], 16) == port:
                    remote_ports.add(int(remote.rsplit(":", 1)[1], 16))
    return remote_ports


def resident_bytes(pid: int) -> int:
    """The process's resident memory (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")
