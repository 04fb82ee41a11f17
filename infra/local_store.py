"""The artifact store in a local folder: the embedded default."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from infra.layout import MANIFEST
from infra.store import Manifest, StagingStore, verify_files


class LocalArtifactStore(StagingStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self._verified: set[tuple[str, str]] = set()  # (key, manifest time): each stage checked once per process

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def manifest(self, key: str) -> Manifest | None:
        path = self.root / key / MANIFEST
        if not path.exists():
            return None
        return Manifest.model_validate_json(path.read_text())

    def _staging_root(self) -> Path:
        return self.root

    def _commit(self, key: str, staging: Path, manifest: Manifest) -> None:
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # Drop the manifest first so a crash between the two steps leaves an incomplete stage.
            (target / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(target)
        os.replace(staging, target)

    def local_path(self, key: str) -> Path:
        manifest = self.manifest(key)
        if manifest is None:
            raise FileNotFoundError(f"stage {key} has no complete artifacts in {self.root}")
        folder = self.root / key
        if (key, manifest.created_at) not in self._verified:
            verify_files(folder, manifest, str(folder))
            self._verified.add((key, manifest.created_at))
        return folder

    def lease(self, key: str, ttl_s: float):
        """An exclusive hold on ``key`` for one process (infra/lease.py); the kernel ends it with the process."""
        from infra.lease import LocalLease

        return LocalLease(self.root / key)

    def read_json(self, key: str) -> Any | None:
        path = self.root / key
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, key: str, value: Any) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(value, indent=2, default=str))
        os.replace(tmp, path)
