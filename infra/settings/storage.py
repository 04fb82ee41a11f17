"""`storage`: the artifact store, MLflow tracking and the model registry, and the loop's hold."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from infra.settings.base import Section


class StorageConfig(Section):
    data_dir: Path = Field(Path(".flywheel"), description="Where caches, the model cache and default stores live.")
    artifact_root: str | None = Field(
        None,
        description="Artifact store root: a local folder (default <data_dir>/artifacts) or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for s3:// roots (MinIO, moto); default: env AWS_ENDPOINT_URL, else AWS."
    )
    s3_retry_s: float = Field(
        120.0, ge=0,
        description="How long an S3 request that fails transiently (refused or reset connection, timeout, 5xx, "
        "throttling) is retried before its stage fails: an S3 outage shorter than this does not stop the round.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: env MLFLOW_TRACKING_URI, else sqlite under data_dir)."
    )
    experiment: str = Field("flywheel", description="MLflow experiment that holds one run per round and one per "
        "`flywheel compare`.")
    registered_model: str | None = Field(
        None,
        description="MLflow registered model that promoted policies become versions of, the alias 'champion' "
        "marking the current one (default: '<loop>-policy').",
    )

    loop_wait_s: float = Field(
        0.0, ge=0,
        description="How long a round waits for another process's round of the same loop to finish before it is "
        "refused (0: refused at once). Two processes never run rounds of one loop at the same time.",
    )
    loop_lease_s: float = Field(
        120.0, ge=10,
        description="On S3, how long a round's hold on its loop outlives the last renewal (renewed every third of it), "
        "so a holder whose machine died frees the loop after this long.",
    )

    def resolved_artifact_root(self) -> str:
        # FLYWHEEL_ARTIFACT_ROOT lets a deployment point every run at S3 without a config change.
        return self.artifact_root or os.environ.get("FLYWHEEL_ARTIFACT_ROOT") or str(self.data_dir / "artifacts")
