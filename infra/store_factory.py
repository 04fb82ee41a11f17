"""Which artifact store a root names: a local folder (infra/local_store.py) or S3 (infra/s3_store.py).

Apart from ``infra/store.py`` so the contract imports neither store that keeps it.
"""

from __future__ import annotations

from pathlib import Path

from infra.local_store import LocalArtifactStore
from infra.s3_store import S3ArtifactStore
from infra.settings import StorageConfig
from infra.store import ArtifactStore


def open_store(root: str, cache_dir: str | Path | None = None, endpoint_url: str | None = None,
               retry_s: float = 120.0) -> ArtifactStore:
    """A local folder store, or an S3 store for ``s3://bucket/prefix`` roots."""
    if root.startswith("s3://"):
        return S3ArtifactStore(root, cache_dir or Path(".flywheel") / "s3-cache", endpoint_url, retry_s=retry_s)
    return LocalArtifactStore(root)


def store_from_config(storage: StorageConfig) -> ArtifactStore:
    """The artifact store a ``StorageConfig`` describes."""
    return open_store(storage.resolved_artifact_root(), Path(storage.data_dir) / "s3-cache", storage.s3_endpoint_url,
                      storage.s3_retry_s)
