"""The artifact-store contract: every stage's outputs under ``<root>/<loop>/round-NNN/<stage>/``.

A stage writes into a private staging folder; only when it finishes are its files committed,
followed by ``manifest.json`` (files, sizes, sha256, input and config hashes). A stage folder
without a manifest is incomplete and is never read, so a stage's artifacts exist whole or not
at all. Reading a stage checks its files against the manifest: a corrupted file is an error
(``CorruptArtifactError``), never training data.

Two stores keep the contract: ``LocalArtifactStore`` (infra/local_store.py, the embedded
default) and ``S3ArtifactStore`` (infra/s3_store.py); ``open_store`` (infra/store_factory.py)
picks one by the root.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from pydantic import BaseModel

from infra.layout import MANIFEST


class ArtifactStoreError(RuntimeError):
    """The store could not be read or written; the message names where."""


class CorruptArtifactError(ArtifactStoreError):
    """A stage's file differs from its manifest (a flipped byte, a truncated copy)."""


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


@runtime_checkable
class ArtifactStore(Protocol):
    """What stages and flows need of a store."""

    def uri(self, key: str) -> str:
        """Where ``key`` lives, as a stable name (a path, or an s3:// URI)."""

    def manifest(self, key: str) -> Manifest | None:
        """The stage's manifest, or None while it is incomplete."""

    def is_complete(self, key: str) -> bool: ...

    def stage(self, key: str, input_hash: str = "", config_hash: str = "") -> contextlib.AbstractContextManager[Path]:
        """An empty folder to write the stage into; committed whole when the block ends without error."""

    def local_path(self, key: str) -> Path:
        """A local folder holding a complete stage's files, checked against its manifest."""

    def lease(self, key: str, ttl_s: float) -> Any:
        """An exclusive hold on ``key`` across processes and machines (infra/lease.py)."""

    def read_json(self, key: str) -> Any | None: ...

    def write_json(self, key: str, value: Any) -> None: ...


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


def build_manifest(key: str, folder: Path, input_hash: str, config_hash: str) -> Manifest:
    files = [
        FileEntry(path=p.relative_to(folder).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    return Manifest(
        key=key, files=files, input_hash=input_hash, config_hash=config_hash, created_at=datetime.now(timezone.utc).isoformat()
    )


def verify_files(folder: Path, manifest: Manifest, where: str) -> None:
    """Raise CorruptArtifactError naming the first file of ``folder`` that differs from ``manifest``."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            raise CorruptArtifactError(f"{where}/{entry.path}: missing, though the manifest lists it")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise CorruptArtifactError(f"{where}/{entry.path}: checksum differs from the manifest (corrupted)")


class StagingStore(abc.ABC):
    """The ``stage()`` skeleton both stores share: stage locally, build the manifest, commit."""

    @abc.abstractmethod
    def _staging_root(self) -> Path:
        """A local folder on the same file system as the store's own copies."""

    @abc.abstractmethod
    def _commit(self, key: str, staging: Path, manifest: Manifest) -> None:
        """Make ``staging`` the stage's artifacts, the manifest last."""

    @abc.abstractmethod
    def manifest(self, key: str) -> Manifest | None: ...

    def is_complete(self, key: str) -> bool:
        return self.manifest(key) is not None

    @contextlib.contextmanager
    def stage(self, key: str, input_hash: str = "", config_hash: str = "") -> Iterator[Path]:
        root = self._staging_root()
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        try:
            yield staging
            self._commit(key, staging, build_manifest(key, staging, input_hash, config_hash))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

