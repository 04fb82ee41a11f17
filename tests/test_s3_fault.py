"""The S3 server goes away in the middle of a round: the round fails with a clear message,
nothing half-written is marked complete, and the rerun after the server returns finishes.

The fault goes through a real socket: the round talks to moto through a TCP proxy that
drops the connection carrying the upload of the judge stage's file and then refuses
every connection until it is restored."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

from infra.store import store_from_config
from tests.tiny_round import tiny_round_config, word_band_prompt_file

pytestmark = pytest.mark.slow


class CuttingProxy:
    """Forwards TCP to ``target``; goes down the first time client bytes contain ``marker``."""

    def __init__(self, target_port: int, marker: bytes):
        self.target_port = target_port
        self.marker = marker
        self.down = threading.Event()
        self.cut_seen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
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
                    self.cut_seen.set()  # the server goes away once; after restore() it stays
                    self.down.set()
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
        self.down.clear()


def test_round_survives_the_s3_server_going_away(tiny_model, s3_server, prefect_harness, tmp_path):
    from flows.round import run_next_round

    bucket = f"fault-{uuid.uuid4().hex[:8]}"
    s3_server.start()
    s3_server.client().create_bucket(Bucket=bucket)
    proxy = CuttingProxy(s3_server.port, marker=b"/round-001/judge/judgments.jsonl")
    config = tiny_round_config(
        tiny_model, "fault", word_band_prompt_file(tmp_path / "prompts.jsonl"), tmp_path / "data",
        storage={"artifact_root": f"s3://{bucket}/fw", "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}"},
    )
    with pytest.raises(Exception) as failure:
        run_next_round(config)
    assert proxy.cut_seen.is_set(), "the round never reached the judge upload"
    message = str(failure.value)
    assert f"s3://{bucket}/fw/fault/round-001" in message and f"127.0.0.1:{proxy.port}" in message

    # Straight to moto, past the proxy: the judge stage is not marked complete.
    direct = store_from_config(config.storage.model_copy(update={"s3_endpoint_url": s3_server.url}))
    assert direct.manifest("fault/round-001/judge") is None
    generated = direct.manifest("fault/round-001/generate")
    assert generated is not None

    proxy.restore()
    summary = run_next_round(config)
    assert summary.round == 1
    assert direct.manifest("fault/round-001/generate") == generated, "generation was redone"
    for stage in ["judge", "filter", "train", "evaluate", "regression", "promote"]:
        assert direct.is_complete(f"fault/round-001/{stage}"), stage
