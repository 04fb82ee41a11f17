"""A TCP proxy on loopback that a test can take down: the server "goes away" for the client
while the real server behind it keeps running (and can be read directly)."""

from __future__ import annotations

import socket
import threading
import time


class _Proxy:
    """Forwards TCP from a loopback port to ``target_port``; subclasses decide, per connection and
    per chunk the client sends, whether it goes through."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()

    def _admit(self, client: socket.socket) -> bool:
        """Whether a new connection is forwarded (False: it was dealt with)."""
        return True

    def _stop_at(self, data: bytes, src: socket.socket) -> bool:
        """Whether the client's chunk ``data`` ends its connection instead of going through."""
        return False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._admit(client):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self._stop_at(data, src):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


class CuttingProxy(_Proxy):
    """Forwards TCP to ``target_port``; goes down the first time client bytes contain ``marker``.

    While down, new connections are closed at once and a connection that sends anything is
    cut; ``refused`` counts both. ``restore()`` brings it back for good (the marker cuts once);
    with ``outage_s`` it comes back by itself that long after the cut.
    """

    def __init__(self, target_port: int, marker: bytes, outage_s: float | None = None):
        super().__init__(target_port)
        self.marker = marker
        self.outage_s = outage_s  # given: the server comes back by itself this long after the cut
        self.down_at: float | None = None
        self.restored_at: float | None = None
        self.down = threading.Event()
        self.cut_seen = threading.Event()
        self.refused = 0
        self._count = threading.Lock()
        self.start()

    def _refuse(self) -> None:
        with self._count:
            self.refused += 1

    def _admit(self, client: socket.socket) -> bool:
        if self.down.is_set():
            self._refuse()
            client.close()  # the server is gone: connections die at once
            return False
        return True

    def _stop_at(self, data: bytes, src: socket.socket) -> bool:
        armed = not self.cut_seen.is_set()
        if not (self.down.is_set() or (armed and self.marker in data)):
            return False
        if not self.cut_seen.is_set():
            self.down_at = time.monotonic()
            if self.outage_s is not None:
                threading.Timer(self.outage_s, self.restore).start()
        self.cut_seen.set()  # the server goes away once; after restore() it stays
        self.down.set()
        self._refuse()
        return True

    def restore(self) -> None:
        self.restored_at = time.monotonic()
        self.down.clear()


class HoldingProxy(_Proxy):
    """Forwards TCP to ``target_port``; once ``arm``-ed, holds the first request whose first line
    starts with ``method`` and contains ``path``: it is neither forwarded nor answered, so its
    sender waits (until it is killed, say). ``held`` is set then; the proxy disarms itself.
    """

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self.request: tuple[bytes, bytes] | None = None
        self.held = threading.Event()
        self._arming = threading.Lock()
        self.start()

    def arm(self, method: bytes, path: bytes) -> None:
        with self._arming:
            self.held.clear()
            self.request = (method + b" ", path)

    def _holds(self, data: bytes) -> bool:
        with self._arming:
            if self.request is None:
                return False
            method, path = self.request
            line = data.split(b"\r\n", 1)[0]
            if not (line.startswith(method) and path in line):
                return False
            self.request = None
            self.held.set()
            return True

    def _stop_at(self, data: bytes, src: socket.socket) -> bool:
        if not self._holds(data):
            return False
        while src.recv(65536):  # the held request goes nowhere, until its sender goes away
            pass
        return True
