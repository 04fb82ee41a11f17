"""MLflow tracking: one run per round, config as params, stage figures as metrics.

The tracker talks to MLflow through an explicit run id (never the thread-local
"active run"), so Prefect tasks in worker threads log into the right run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from infra.settings import FlywheelConfig, StorageConfig

CHAMPION_ALIAS = "champion"


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
    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        mlflow.set_tracking_uri(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_location
            if location is None and uri.startswith("sqlite:///"):
                location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.run_id: str | None = None

    @classmethod
    def from_config(cls, config: FlywheelConfig) -> "Tracker":
        return cls(tracking_uri(config.storage), config.storage.experiment)

    def start_round(self, loop: str, round_index: int, config: FlywheelConfig) -> str:
        return self.start_run(
            f"{loop}-round-{round_index:03d}", {"flywheel.loop": loop, "flywheel.round": str(round_index)}, config
        )

    def start_run(self, run_name: str, tags: dict[str, str], config: FlywheelConfig) -> str:
        """A new run in the experiment, with the flattened config as its params."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        params = {k: str(v)[:500] for k, v in flatten(config.model_dump(mode="json")).items()}
        items = list(params.items())
        from mlflow.entities import Param

        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
        return self.run_id

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no round run started: call start_round first")
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        run_id = self._require_run()
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None and not (isinstance(value, float) and math.isnan(value))
        ]
        for start in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[start : start + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        run_id = self._require_run()
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self._require_run(), str(path), artifact_path)

    # --- the model registry: promoted policies and the `champion` alias ----------------------

    def register_champion(self, model_name: str, adapter_dir: Path, tags: dict[str, str]) -> str:
        """Log the adapter to the round's run, register it as a new version of ``model_name``
        with lineage ``tags`` (merged checkpoint URI among them), and move the alias
        ``champion`` to it. Returns the version number."""
        from mlflow.exceptions import MlflowException

        run_id = self._require_run()
        self.client.log_artifacts(run_id, str(adapter_dir), "adapter")
        try:
            self.client.create_registered_model(model_name, description="Policies promoted by the Flywheel loop.")
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        # register_model() wants an MLflow Model folder; a plain adapter folder registers this way.
        source = f"{self.client.get_run(run_id).info.artifact_uri}/adapter"
        version = self.client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        self.client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
        return str(version.version)

    def champion_tags(self, model_name: str) -> dict[str, str] | None:
        """The lineage tags of the version carrying the ``champion`` alias, or None."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException:
            return None
        return dict(version.tags)

    def end_round(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
