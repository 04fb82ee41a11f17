"""The artifact store: every stage's outputs under ``<root>/<loop>/<round>/<stage>/``.

A stage writes into a private staging folder; only when it finishes are the
files moved into place, followed by ``manifest.json`` (files, sizes, sha256,
input and config hashes). A stage folder without a manifest is incomplete and
is never read, so a stage's artifacts exist whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from pydantic import BaseModel

MANIFEST = "manifest.json"
R = TypeVar("R", bound=BaseModel)


def round_name(round_index: int) -> str:
    return f"round-{round_index:03d}"


def stage_key(loop: str, round_index: int, stage: str) -> str:
    return f"{loop}/{round_name(round_index)}/{stage}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_json(value: Any) -> str:
    """A stable hash of a JSON-able value (configs, input references)."""
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    key: str
    files: list[FileEntry]
    input_hash: str = ""
    config_hash: str = ""
    created_at: str


def build_manifest(key: str, folder: Path, input_hash: str, config_hash: str) -> Manifest:
    files = [
        FileEntry(path=p.relative_to(folder).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    return Manifest(
        key=key,
        files=files,
        input_hash=input_hash,
        config_hash=config_hash,
        created_at=datetime.now(timezone.utc).isoformat(),
    )


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> int:
    n = 0
    with open(path, "w") as fh:
        for record in records:
            fh.write(record.model_dump_json() + "\n")
            n += 1
    return n


def read_jsonl(path: Path, model: type[R]) -> list[R]:
    with open(path) as fh:
        return [model.model_validate_json(line) for line in fh if line.strip()]


class LocalArtifactStore:
    """Artifacts in a local folder: the embedded default."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def manifest(self, key: str) -> Manifest | None:
        path = self.root / key / MANIFEST
        if not path.exists():
            return None
        return Manifest.model_validate_json(path.read_text())

    def is_complete(self, key: str) -> bool:
        return self.manifest(key) is not None

    @contextlib.contextmanager
    def stage(self, key: str, input_hash: str = "", config_hash: str = "") -> Iterator[Path]:
        """Yield an empty staging folder; on success its files become the stage's artifacts."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield staging
            self._commit(key, staging, build_manifest(key, staging, input_hash, config_hash))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

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
        """A local folder holding a complete stage's files."""
        if not self.is_complete(key):
            raise FileNotFoundError(f"stage {key} has no complete artifacts in {self.root}")
        return self.root / key

    def read_json(self, key: str) -> Any | None:
        path = self.root / key
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, key: str, value: Any) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(value, indent=2, default=str))
        os.replace(tmp, path)


ArtifactStore = LocalArtifactStore  # the contract; S3ArtifactStore (infra/s3_store.py) keeps it too


def open_store(root: str, cache_dir: str | Path | None = None, endpoint_url: str | None = None):
    """A local folder store, or an S3 store for ``s3://bucket/prefix`` roots."""
    if root.startswith("s3://"):
        from infra.s3_store import S3ArtifactStore

        return S3ArtifactStore(root, cache_dir or Path(".flywheel") / "s3-cache", endpoint_url)
    return LocalArtifactStore(root)


def store_from_config(storage) -> ArtifactStore:
    """The artifact store a ``StorageConfig`` describes."""
    return open_store(storage.resolved_artifact_root(), Path(storage.data_dir) / "s3-cache", storage.s3_endpoint_url)
