"""MLflow tracking: one run per round, config as params, stage figures as metrics.

The tracker talks to MLflow through an explicit run id (never the thread-local
"active run"), so Prefect tasks in worker threads log into the right run.

Every call to the server is retried on transient errors (``infra.retries``). What only
records the round (metrics, params, tags, artifact copies, the round's pairs as a dataset
input, the run's end) is best-effort and goes through ``tracker.queue`` (infra/metric_queue.py),
which keeps it while the server is away and sends it when it returns: a tracking outage never
stops training. The model registry, ``tracker.registry`` (infra/model_registry.py), decides
what the next round starts from, so it retries longer and then raises rather than guess.

The experiment carries MLflow's kind tag for model training, so MLflow's UI opens it on its
runs; links into the UI are infra/mlflow_links.py's.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from infra.metric_queue import MetricQueue
from infra.mlflow_retries import bound_mlflow_http_retries
from infra.model_registry import ModelRegistry
from infra.settings import FlywheelConfig, StorageConfig

METRICS_PER_BATCH, PARAMS_PER_BATCH = 500, 100  # under MLflow's log_batch limits (1000, 100)

# MLflow 3's UI opens an experiment by its kind (its own tag, values from its UI): without one it
# guesses, and opens a training experiment on the GenAI overview (traces) instead of its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
INFERRED_KINDS = ("custom_model_development_inferred", "genai_development_inferred", "no_inferred_type")

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


class Tracker:
    """The round's MLflow run, reached through retries; see the module docstring.

    ``queue`` holds the best-effort updates an outage delays (``tracker.queue.flush()``,
    ``tracker.queue.adopt_spill(path)``); ``registry`` holds the promoted policies.
    """

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
        pending_dir = Path(data_dir).resolve() / "mlflow-pending" if data_dir is not None else None
        self.queue = MetricQueue(self.client, uri, pending_dir)
        self.registry = ModelRegistry(self.client, self.queue)
        self.run_id: str | None = None
        self.experiment_id = self._experiment_id(experiment, artifact_location)

    @classmethod
    def from_config(cls, config: FlywheelConfig) -> Tracker:
        return cls(tracking_uri(config.storage), config.storage.experiment, data_dir=config.storage.data_dir)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.queue.call("get experiment", self.client.get_experiment_by_name, name)
        if found is not None:
            self._mark_training_experiment(found)
            return found.experiment_id
        location = artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
        try:
            return self.queue.call("create experiment", self.client.create_experiment, name, artifact_location=location,
                                   tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as exc:  # created meanwhile, by another round or by our own lost-answer retry
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
            found = self.queue.call("get experiment", self.client.get_experiment_by_name, name)
            self._mark_training_experiment(found)
            return found.experiment_id

    def _mark_training_experiment(self, experiment) -> None:
        """Tag an experiment Flywheel did not create (or created before it tagged) as model training,
        unless someone chose its kind; best-effort: the UI only opens it on another tab without it."""
        if experiment.tags.get(EXPERIMENT_KIND_TAG, "") not in ("", *INFERRED_KINDS):
            return
        try:
            self.queue.call("tag experiment", self.client.set_experiment_tag, experiment.experiment_id,
                            EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        except Exception as exc:  # any failure: the tag only changes which page the UI opens on
            logger.warning("could not tag MLflow experiment %s as model training: %s: %s",
                           experiment.experiment_id, type(exc).__name__, exc)

    def start_round(self, loop: str, round_index: int, config: FlywheelConfig) -> str:
        return self.start_run(
            f"{loop}-round-{round_index:03d}", {"flywheel.loop": loop, "flywheel.round": str(round_index)}, config
        )

    def start_run(self, run_name: str, tags: dict[str, str], config: FlywheelConfig) -> str:
        """A new run in the experiment, with the flattened config as its params."""
        run = self.queue.call("create run", self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [(k, str(v)[:500]) for k, v in flatten(config.model_dump(mode="json")).items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.queue.record({"kind": "params", "run_id": self.run_id, "params": dict(items[start : start + PARAMS_PER_BATCH])})
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
            self.queue.record({"kind": "metrics", "run_id": run_id, "metrics": rows[start : start + METRICS_PER_BATCH]})

    def set_tags(self, tags: dict[str, str]) -> None:
        self.queue.record({"kind": "tags", "run_id": self._require_run(), "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run (a copy: the file stays in the artifact store, and is sent later from there)."""
        self.queue.record({"kind": "artifact", "run_id": self._require_run(), "path": str(Path(path).resolve()),
                           "artifact_path": artifact_path})

    def log_dataset(self, dataset: dict[str, str], context: str = "training") -> None:
        """Record a dataset as an input of the run, in the role ``context``: ``dataset`` is what
        ``mlflow.data``'s ``Dataset.to_dict()`` gives (name, digest, source, schema, profile)."""
        self.queue.record({"kind": "dataset", "run_id": self._require_run(), "dataset": dataset, "context": context})

    def end_round(self, status: str = "FINISHED") -> None:
        """End the run, sending whatever is queued first; if the server stays away, the updates
        stay in the spill file, named in a warning, and the round still ends."""
        if self.run_id is None:
            return
        end = {"kind": "end", "run_id": self.run_id, "status": status, "end_time": int(time.time() * 1000)}
        if self.queue.send_last(end):
            return
        logger.warning(
            "MLflow at %s stayed unreachable: %d updates of run %s (metrics, tags, artifacts, its end) "
            "are kept in %s; send them with tracker.queue.adopt_spill(path) once the server is back",
            self.uri, len(self.queue.pending_of(self.run_id)), self.run_id,
            self.queue.spill_path(self.run_id) or "memory only (no data dir)",
        )
