"""A TCP proxy on loopback that a test can take down: the server "goes away" for the client
while the real server behind it keeps running (and can be read directly)."""

from __future__ import annotations

import socket
import threading
import time


class CuttingProxy:
    """Forwards TCP to ``target_port``; goes down the first time client bytes contain ``marker``.

    While down, new connections are closed at once and a connection that sends anything is
    cut; ``refused`` counts both. ``restore()`` brings it back for good (the marker cuts once);
    with ``outage_s`` it comes back by itself that long after the cut.
    """

    def __init__(self, target_port: int, marker: bytes, outage_s: float | None = None):
        self.target_port = target_port
        self.marker = marker
        self.outage_s = outage_s  # given: the server comes back by itself this long after the cut
        self.down_at: float | None = None
        self.restored_at: float | None = None
        self.down = threading.Event()
        self.cut_seen = threading.Event()
        self.refused = 0
        self._count = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _refuse(self) -> None:
        with self._count:
            self.refused += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self._refuse()
                client.close()  # the server is gone: connections die at once
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                armed = not self.cut_seen.is_set()
                if from_client and (self.down.is_set() or (armed and self.marker in data)):
                    if not self.cut_seen.is_set():
                        self.down_at = time.monotonic()
                        if self.outage_s is not None:
                            threading.Timer(self.outage_s, self.restore).start()
                    self.cut_seen.set()  # the server goes away once; after restore() it stays
                    self.down.set()
                    self._refuse()
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

    def restore(self) -> None:
        self.restored_at = time.monotonic()
        self.down.clear()

    def close(self) -> None:
        self.listener.close()
