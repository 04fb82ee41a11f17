"""The offline queue of MLflow updates: what only records a round waits here while the server is away.

A best-effort update (metrics, params, tags, an artifact copy, a dataset input, a run's end) is sent at once,
after a short retry; when the server stays away it is kept in a queue, in memory and appended
to ``<data_dir>/mlflow-pending/<run_id>.<pid>.jsonl`` (the spill file), and the caller goes on.
The next call that reaches the server, and a run's end, send the queue first, in order, with the
metrics' original steps and timestamps (MLflow ignores a metric sent twice). A process that
ended before the server came back leaves its spill file behind; another one sends it with
``adopt_spill``. A tracking outage thus never stops training.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.mlflow_retries import LONG, QUICK, STRICT
from infra.retries import call_with_retries, is_transient

# While updates are queued, the server is tried again after 5 s, then 10, 20, ... at most 60 s
# apart: a server that swallows packets costs a timeout per try, and training waits for it.
OFFLINE_RETRY_S, OFFLINE_RETRY_MAX_S = 5.0, 60.0

logger = logging.getLogger("flywheel.tracking")


class MetricQueue:
    """Best-effort MLflow updates, sent now or queued until the server answers; see the module docstring.

    An update is a JSON-able dict naming its ``kind`` (metrics, params, tags, artifact, dataset, end) and
    its ``run_id``. Without ``pending_dir``, queued updates live in memory only.
    """

    def __init__(self, client: Any, uri: str, pending_dir: Path | None):
        self.client = client
        self.uri = uri
        self.pending_dir = pending_dir
        self._pending: list[dict[str, Any]] = []  # queued updates, oldest first, each naming its run
        self._spilled: set[str] = set()  # runs with a spill file of this process
        self._lock = threading.RLock()
        self._next_try = 0.0  # time.monotonic() before which queued updates wait
        self._offline_s = OFFLINE_RETRY_S  # the wait after the next failed try

    def record(self, op: dict[str, Any]) -> None:
        """Send a best-effort update, or queue it when the server is away (after a short retry)."""
        with self._lock:
            if self._pending and (time.monotonic() < self._next_try or not self._flush({"attempts": 1})):
                self._queue(op)  # the server was away a moment ago: keep order, do not wait on it again
                return
            try:
                call_with_retries(f"MLflow {op['kind']} update", self._send, op, **QUICK)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._queue(op)
                self._wait_for_server()
                logger.warning(
                    "MLflow at %s is unreachable (%s); queuing updates of run %s in %s and going on",
                    self.uri, type(exc).__name__, op["run_id"], self.spill_path(op["run_id"]) or "memory",
                )

    def send_last(self, op: dict[str, Any]) -> bool:
        """Send ``op`` (a run's end) after everything queued, retried at length; True when it arrived.
        When the server stays away, ``op`` is queued behind the rest and False returned."""
        with self._lock:
            if self.flush():
                try:
                    call_with_retries(f"MLflow {op['kind']}", self._send, op, **LONG)
                    return True
                except Exception as exc:
                    if not is_transient(exc):
                        raise
            self._queue(op)
            return False

    def flush(self, attempts: int | None = None) -> bool:
        """Send the queued updates now, each retried up to ``attempts`` times (default: the long
        budget); True when none is left."""
        return self._flush({"attempts": attempts or LONG["attempts"]})

    def adopt_spill(self, path: str | Path) -> bool:
        """Send the updates in a spill file left by a process that ended before the server came
        back (the file is removed; what fails again is queued here); True when all arrived."""
        path = Path(path).resolve()
        with self._lock:
            if any(self.spill_path(run_id) == path for run_id in self._spilled):  # ours: already queued
                return self.flush()
            ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            path.unlink()
            for op in ops:
                self._queue(op)
            return self.flush()

    def pending_of(self, run_id: str) -> list[dict[str, Any]]:
        """The updates of ``run_id`` still queued, oldest first."""
        with self._lock:
            return [op for op in self._pending if op["run_id"] == run_id]

    def call(self, what: str, fn: Callable[..., Any], *args: Any, budget: dict[str, Any] = STRICT, **kwargs: Any) -> Any:
        """A call whose answer is needed now: queued updates go first once the server is back,
        then ``fn`` is retried within ``budget`` and raises when the server stays away."""
        self._try_flush()
        return call_with_retries(f"MLflow {what}", fn, *args, **budget, **kwargs)

    def _flush(self, budget: dict[str, Any]) -> bool:
        with self._lock:
            sent = 0
            try:
                while self._pending:
                    op = self._pending[0]
                    try:
                        call_with_retries(f"MLflow queued {op['kind']} update", self._send, op, **budget)
                    except Exception as exc:
                        if is_transient(exc):
                            self._wait_for_server()
                            return False
                        logger.error("MLflow refused a queued %s of run %s; dropping it: %s: %s",
                                     op["kind"], op["run_id"], type(exc).__name__, exc)
                    self._pending.pop(0)
                    sent += 1
                return True
            finally:
                if sent:
                    self._rewrite_spills()
                    self._offline_s = OFFLINE_RETRY_S
                    if not self._pending:
                        logger.warning("MLflow at %s answers again: sent %d queued updates", self.uri, sent)

    def _wait_for_server(self) -> None:
        self._next_try = time.monotonic() + self._offline_s
        self._offline_s = min(self._offline_s * 2, OFFLINE_RETRY_MAX_S)

    def _try_flush(self) -> None:
        with self._lock:
            if self._pending and time.monotonic() >= self._next_try:
                self._flush({"attempts": 1})

    def _send(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id, kind = op["run_id"], op["kind"]
        if kind == "metrics":
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]])
        elif kind == "params":
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "artifact":
            self.client.log_artifact(run_id, op["path"], op["artifact_path"])
        elif kind == "dataset":
            self.client.log_inputs(run_id, datasets=[dataset_input(op["dataset"], op["context"])])
        elif kind == "end":
            self.client.set_terminated(run_id, status=op["status"], end_time=op["end_time"])
        else:
            raise ValueError(f"unknown queued MLflow update {kind!r}")

    # --- the spill files: the queue on disk, one file per run and process -----------------------

    def spill_path(self, run_id: str) -> Path | None:
        """Where this process spills the queued updates of ``run_id`` (None: memory only)."""
        return self.pending_dir / f"{run_id}.{os.getpid()}.jsonl" if self.pending_dir else None

    def _queue(self, op: dict[str, Any]) -> None:
        self._pending.append(op)
        path = self.spill_path(op["run_id"])
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as out:
                out.write(json.dumps(op) + "\n")
            self._spilled.add(op["run_id"])
        except OSError as exc:  # the update is still queued in memory
            logger.warning("could not write the MLflow spill file %s: %s", path, exc)

    def _rewrite_spills(self) -> None:
        """Each spill file holds exactly its run's updates still queued."""
        for run_id in list(self._spilled):
            path = self.spill_path(run_id)
            left = [op for op in self._pending if op["run_id"] == run_id]
            try:
                if not left:
                    path.unlink(missing_ok=True)
                    self._spilled.discard(run_id)
                    continue
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(op) + "\n" for op in left))
                os.replace(tmp, path)
            except OSError as exc:
                logger.warning("could not rewrite the MLflow spill file %s: %s", path, exc)


def dataset_input(dataset: dict[str, str], context: str):
    """An MLflow dataset input from ``mlflow.data``'s ``Dataset.to_dict()`` (name, digest, source,
    source_type, schema, profile: all strings, so it queues as JSON), with its role ``context``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return DatasetInput(Dataset(**dataset), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
