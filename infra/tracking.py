"""MLflow tracking: one run per round, config as params, stage figures as metrics.

The tracker talks to MLflow through an explicit run id (never the thread-local
"active run"), so Prefect tasks in worker threads log into the right run.

Every call to the server is retried on transient errors (``infra.retries``). What only
records the round (metrics, params, tags, artifact copies, the run's end) is best-effort:
when the server stays away, the update is kept in a pending queue, in memory and appended
to ``<data_dir>/mlflow-pending/<run_id>.<pid>.jsonl``, and the round goes on; the next call
that reaches the server, and ``end_round``, send the queue first, in order, with the
metrics' original steps and timestamps (MLflow ignores a metric sent twice). A tracking
outage thus never stops training. The model registry (``register_champion``,
``champion_tags``) decides what the next round starts from, so it retries longer and
then raises rather than guess.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.retries import call_with_retries, is_transient
from infra.settings import FlywheelConfig, StorageConfig

CHAMPION_ALIAS = "champion"
QUICK = {"attempts": 2, "first_delay": 0.5}  # a best-effort update: a short retry, then queue it
STRICT = {"attempts": 5}  # a call the round cannot go on without (~8 s of waits)
LONG = {"attempts": 8}  # the registry and the final flush: ~30 s of waits
# While updates are queued, the server is tried again after 5 s, then 10, 20, ... at most 60 s
# apart: a server that swallows packets costs a timeout per try, and training waits for it.
OFFLINE_RETRY_S, OFFLINE_RETRY_MAX_S = 5.0, 60.0
METRICS_PER_BATCH, PARAMS_PER_BATCH = 500, 100  # under MLflow's log_batch limits (1000, 100)

logger = logging.getLogger("flywheel.tracking")


def tracking_uri(storage: StorageConfig) -> str:
    if storage.tracking_uri:
        return storage.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = (Path(storage.data_dir) / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys, as MLflow params."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def bound_mlflow_http_retries() -> None:
    """Let our retry loop, not MLflow's, ride out an outage (unless the environment says otherwise).

    MLflow's REST client retries each request itself, by default 7 times with backoff factor 2
    (waits of 4, 8, ... 120 s: minutes), and waits up to 120 s for an answer; during an outage a
    single per-step ``log_batch`` would hold training that long. One immediate retry (for a
    dropped keep-alive connection) and a 10 s timeout make a failed call fail fast, so the
    tracker can queue the update and move on. Raise MLFLOW_HTTP_REQUEST_TIMEOUT for an artifact
    store too slow to take an adapter upload in 10 s.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class Tracker:
    """The round's MLflow run, reached through retries; see the module docstring."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 data_dir: str | Path | None = None):
        import mlflow
        from mlflow import MlflowClient

        if uri.startswith(("http://", "https://")):
            bound_mlflow_http_retries()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        # Without a data dir, queued updates live in memory only.
        self.pending_dir = Path(data_dir).resolve() / "mlflow-pending" if data_dir is not None else None
        self.run_id: str | None = None
        self._pending: list[dict[str, Any]] = []  # queued updates, oldest first, each naming its run
        self._spilled: set[str] = set()  # runs with a spill file of this process
        self._lock = threading.RLock()
        self._next_try = 0.0  # time.monotonic() before which queued updates wait
        self._offline_s = OFFLINE_RETRY_S  # the wait after the next failed try
        self.experiment_id = self._experiment_id(experiment, artifact_location)

    @classmethod
    def from_config(cls, config: FlywheelConfig) -> Tracker:
        return cls(tracking_uri(config.storage), config.storage.experiment, data_dir=config.storage.data_dir)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self._call("get experiment", self.client.get_experiment_by_name, name)
        if found is not None:
            return found.experiment_id
        location = artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
        try:
            return self._call("create experiment", self.client.create_experiment, name, artifact_location=location)
        except MlflowException as exc:  # created meanwhile, by another round or by our own lost-answer retry
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
            return self._call("get experiment", self.client.get_experiment_by_name, name).experiment_id

    def start_round(self, loop: str, round_index: int, config: FlywheelConfig) -> str:
        return self.start_run(
            f"{loop}-round-{round_index:03d}", {"flywheel.loop": loop, "flywheel.round": str(round_index)}, config
        )

    def start_run(self, run_name: str, tags: dict[str, str], config: FlywheelConfig) -> str:
        """A new run in the experiment, with the flattened config as its params."""
        run = self._call("create run", self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [(k, str(v)[:500]) for k, v in flatten(config.model_dump(mode="json")).items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self._record({"kind": "params", "run_id": self.run_id, "params": dict(items[start : start + PARAMS_PER_BATCH])})
        return self.run_id

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no round run started: call start_round first")
        return self.run_id

    # --- best-effort updates: sent now, or queued until the server answers ----------------------

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        run_id = self._require_run()
        now = int(time.time() * 1000)
        rows = [
            [key, float(value), now, step or 0]
            for key, value in metrics.items()
            if value is not None and not (isinstance(value, float) and math.isnan(value))
        ]
        for start in range(0, len(rows), METRICS_PER_BATCH):
            self._record({"kind": "metrics", "run_id": run_id, "metrics": rows[start : start + METRICS_PER_BATCH]})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record({"kind": "tags", "run_id": self._require_run(), "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run (a copy: the file stays in the artifact store, and is sent later from there)."""
        self._record({"kind": "artifact", "run_id": self._require_run(), "path": str(Path(path).resolve()),
                      "artifact_path": artifact_path})

    def end_round(self, status: str = "FINISHED") -> None:
        """End the run, sending whatever is queued first; if the server stays away, the updates
        stay in the spill file, named in a warning, and the round still ends."""
        if self.run_id is None:
            return
        end = {"kind": "end", "run_id": self.run_id, "status": status, "end_time": int(time.time() * 1000)}
        with self._lock:
            if self.flush_pending():
                try:
                    call_with_retries("MLflow end", self._send, end, **LONG)
                    return
                except Exception as exc:
                    if not is_transient(exc):
                        raise
            self._queue(end)
            left = [op for op in self._pending if op["run_id"] == self.run_id]
            logger.warning(
                "MLflow at %s stayed unreachable: %d updates of run %s (metrics, tags, artifacts, its end) "
                "are kept in %s; send them with Tracker.adopt_spill(path) once the server is back",
                self.uri, len(left), self.run_id, self._spill_path(self.run_id) or "memory only (no data dir)",
            )

    def flush_pending(self, attempts: int | None = None) -> bool:
        """Send the queued updates now, each retried up to ``attempts`` times (default: the long
        budget); True when none is left."""
        return self._flush({"attempts": attempts or LONG["attempts"]})

    def adopt_spill(self, path: str | Path) -> bool:
        """Send the updates in a spill file left by a process that ended before the server came
        back (the file is removed; what fails again is queued here); True when all arrived."""
        path = Path(path).resolve()
        with self._lock:
            if any(self._spill_path(run_id) == path for run_id in self._spilled):  # ours: already queued
                return self.flush_pending()
            ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            path.unlink()
            for op in ops:
                self._queue(op)
            return self.flush_pending()

    def _record(self, op: dict[str, Any]) -> None:
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
                    self.uri, type(exc).__name__, op["run_id"], self._spill_path(op["run_id"]) or "memory",
                )

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
        elif kind == "end":
            self.client.set_terminated(run_id, status=op["status"], end_time=op["end_time"])
        else:
            raise ValueError(f"unknown queued MLflow update {kind!r}")

    # --- the spill files: the queue on disk, one file per run and process -----------------------

    def _spill_path(self, run_id: str) -> Path | None:
        return self.pending_dir / f"{run_id}.{os.getpid()}.jsonl" if self.pending_dir else None

    def _queue(self, op: dict[str, Any]) -> None:
        self._pending.append(op)
        path = self._spill_path(op["run_id"])
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
            path = self._spill_path(run_id)
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

    # --- calls whose answer the round needs: retried, then raised ----------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, budget: dict[str, Any] = STRICT, **kwargs: Any) -> Any:
        self._try_flush()  # queued updates go first once the server is back
        return call_with_retries(f"MLflow {what}", fn, *args, **budget, **kwargs)

    # --- the model registry: promoted policies and the `champion` alias ----------------------

    def register_champion(self, model_name: str, adapter_dir: Path, tags: dict[str, str]) -> str:
        """Log the adapter to the round's run, register it as a new version of ``model_name``
        with lineage ``tags`` (merged checkpoint URI among them), and move the alias
        ``champion`` to it. Returns the version number. Retried at length, then raised:
        a promotion that did not reach the registry must not look done."""
        from mlflow.exceptions import MlflowException

        run_id = self._require_run()
        self._call("log_artifacts (adapter)", self.client.log_artifacts, run_id, str(adapter_dir), "adapter", budget=LONG)
        try:
            self._call("create registered model", self.client.create_registered_model, model_name,
                       description="Policies promoted by the Flywheel loop.", budget=LONG)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        # register_model() wants an MLflow Model folder; a plain adapter folder registers this way.
        source = f"{self._call('get run', self.client.get_run, run_id, budget=LONG).info.artifact_uri}/adapter"
        # A retry after an answer lost on its way back registers the same adapter twice; the
        # alias then marks the later version, which is as good.
        version = self._call("create model version", self.client.create_model_version, model_name,
                             source=source, run_id=run_id, tags=tags, budget=LONG)
        self._call("set champion alias", self.client.set_registered_model_alias, model_name, CHAMPION_ALIAS,
                   version.version, budget=LONG)
        return str(version.version)

    def champion_tags(self, model_name: str) -> dict[str, str] | None:
        """The lineage tags of the version carrying the ``champion`` alias, or None when there
        is none. An unreachable server raises: guessing "no champion" would restart from base."""
        from mlflow.exceptions import MlflowException

        try:
            version = self._call("get champion", self.client.get_model_version_by_alias, model_name, CHAMPION_ALIAS,
                                 budget=LONG)
        except MlflowException as exc:
            if is_transient(exc):
                raise
            return None
        return dict(version.tags)
