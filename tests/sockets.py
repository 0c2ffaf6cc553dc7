"""The server's end of a test's TCP connection, from any process, to read its socket options.

A test holds the client's socket; the accepted socket lives in the server, maybe
in another process (``natsmesh gateway``, its workers). Linux lends another
process's file descriptor with ``pidfd_getfd`` (5.6+; ptrace rights over the
process, which a test has over the children it started): the copy is the same
socket, so ``getsockopt`` on it reads the server's options.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import pytest

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def _borrow(pidfd: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    got = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if got < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"pidfd_getfd is not available here: {os.strerror(code)}")
        raise OSError(code, os.strerror(code))
    return got


def _sockets_of(pid: int) -> Iterator[socket.socket]:
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                fd = os.dup(int(name)) if pid == os.getpid() else _borrow(pidfd, int(name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # closed meanwhile
            yield socket.socket(fileno=fd)
    finally:
        os.close(pidfd)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a gateway's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def server_end(pids: Iterable[int], client: socket.socket) -> socket.socket:
    """A copy of the server's socket of ``client``'s connection, found among ``pids``."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reading another process's socket needs Linux")
    wanted = client.getsockname()
    pids = list(pids)
    for pid in pids:
        for sock in _sockets_of(pid):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    if sock.getpeername() == wanted:
                        return sock
                except OSError:
                    pass  # a listening socket has no peer
            sock.close()
    raise LookupError(f"no process of {list(pids)} holds the server end of {wanted}")


def no_delay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def post(path: str, body: bytes, *extra: bytes, host: str = "x") -> bytes:
    """A keep-alive HTTP/1.1 POST of a JSON ``body``; ``extra`` header lines (CRLF-ended)."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    return head + b"".join(extra) + b"\r\n" + body


def answer(reader: BinaryIO, *, head_only: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response off ``reader``: its status line, headers (lower-case names), body."""
    status = reader.readline()
    headers: dict[bytes, bytes] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get(b"content-length", b"0"))
    return status, headers, reader.read(length)


def keep_alive(url: str, path: str, body: bytes, *, requests: int = 2) -> socket.socket:
    """A connection that has carried ``requests`` POSTs of ``body``, kept open (blocking I/O).

    Raises AssertionError unless every answer is a 200 on the same connection.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    request = post(path, body, host=host)
    reader = sock.makefile("rb")
    for _ in range(requests):
        sock.sendall(request)
        status, _, _ = answer(reader)
        assert status.startswith(b"HTTP/1.1 200 "), status
    reader.close()  # the socket stays open: makefile() holds a reference of its own
    return sock
