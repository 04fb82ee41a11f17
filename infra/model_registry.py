"""The MLflow model registry: promoted policies as versions of one registered model, the alias
``champion`` on the current one.

The registry decides what the next round starts from, so its calls retry at length and then
raise rather than guess: a promotion that did not reach it must not look done, and an
unreachable server must not read as "no champion" (that would restart the loop from base).
"""

from __future__ import annotations

from pathlib import Path

from infra.metric_queue import MetricQueue
from infra.mlflow_retries import LONG
from infra.retries import is_transient

CHAMPION_ALIAS = "champion"


class ModelRegistry:
    """Registry calls through ``queue.call``, so updates queued during an outage reach the server first."""

    def __init__(self, client, queue: MetricQueue):
        self.client = client
        self.queue = queue

    def register_champion(self, model_name: str, run_id: str | None, adapter_dir: Path, tags: dict[str, str]) -> str:
        """Log the adapter to the round's run ``run_id``, register it as a new version of
        ``model_name`` with lineage ``tags`` (merged checkpoint URI among them), and move the alias
        ``champion`` to it. Returns the version number. Retried at length, then raised."""
        if run_id is None:
            raise RuntimeError("no round run started: call start_round first")
        self.queue.call("log_artifacts (adapter)", self.client.log_artifacts, run_id, str(adapter_dir), "adapter", budget=LONG)
        self._ensure_registered_model(model_name)
        # register_model() wants an MLflow Model folder; a plain adapter folder registers this way.
        source = f"{self.queue.call('get run', self.client.get_run, run_id, budget=LONG).info.artifact_uri}/adapter"
        # A retry after an answer lost on its way back registers the same adapter twice; the
        # alias then marks the later version, which is as good.
        version = self.queue.call("create model version", self.client.create_model_version, model_name,
                                  source=source, run_id=run_id, tags=tags, budget=LONG)
        self.queue.call("set champion alias", self.client.set_registered_model_alias, model_name, CHAMPION_ALIAS,
                        version.version, budget=LONG)
        return str(version.version)

    def champion_tags(self, model_name: str) -> dict[str, str] | None:
        """The lineage tags of the version carrying the ``champion`` alias, or None when there
        is none. An unreachable server raises: guessing "no champion" would restart from base."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.queue.call("get champion", self.client.get_model_version_by_alias, model_name, CHAMPION_ALIAS,
                                      budget=LONG)
        except MlflowException as exc:
            if is_transient(exc):
                raise
            return None
        return dict(version.tags)

    def _ensure_registered_model(self, model_name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.queue.call("create registered model", self.client.create_registered_model, model_name,
                            description="Policies promoted by the Flywheel loop.", budget=LONG)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
