"""The artifact store on S3 (or anything speaking its API: MinIO, moto's server).

Same layout and contract as the local store: ``s3://bucket/prefix/<loop>/round-NNN/<stage>/``.
A stage is staged in a local folder; on success its files are uploaded (large ones in
multipart uploads) and only then its ``manifest.json``, which marks it complete. A
stage that fails part-way leaves files without a manifest: incomplete, never read.
Reading a stage downloads it once into a local cache, checked against the manifest.

The endpoint comes from ``AWS_ENDPOINT_URL`` (or the config); credentials from the
usual boto3 chain (environment, profile, instance role); none are ever logged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from infra.layout import MANIFEST
from infra.retries import call_with_retries
from infra.store import ArtifactStoreError, Manifest, StagingStore, verify_files

MULTIPART_THRESHOLD = 16 * 1024 * 1024  # bytes; merged checkpoints (~500 MB) go up in parts


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}; expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


class S3ArtifactStore(StagingStore):
    def __init__(self, root: str, cache_dir: str | Path, endpoint_url: str | None = None, client: Any = None,
                 retry_s: float = 120.0):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = parse_s3_uri(root)
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        # boto3 makes one quick retry; our own backoff (infra/retries.py) rides out outages of up to retry_s.
        config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        self.client = client or boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
        self.cache_dir = Path(cache_dir).expanduser().resolve() / self.bucket / (self.prefix or "_")
        self.retry_s = retry_s  # how long one request is retried through an outage

    # --- addressing ------------------------------------------------------------------------

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"

    def _call(self, action: str, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One S3 request, retried on transient errors; a final failure names the object and endpoint."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call_with_retries(f"S3 {action} of {self.uri(key)}", fn, *args, within_s=self.retry_s, max_delay=15.0, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""
            raise ArtifactStoreError(f"S3 {action} of {self.uri(key)}{where} failed: {exc}") from exc

    def _get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

        return self._call("read", key, get)

    def _put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type)

    # --- the store contract ----------------------------------------------------------------

    def manifest(self, key: str) -> Manifest | None:
        data = self._get_bytes(f"{key}/{MANIFEST}")
        return Manifest.model_validate_json(data) if data is not None else None

    def _staging_root(self) -> Path:
        return self.cache_dir

    def _commit(self, key: str, staging: Path, manifest: Manifest) -> None:
        """Upload the files, then the manifest; keep the stage in the local cache, so this machine never downloads it."""
        # An earlier complete run of the stage stops counting before its files are replaced.
        self._call("delete", f"{key}/{MANIFEST}", self.client.delete_object, Bucket=self.bucket, Key=self._object(f"{key}/{MANIFEST}"))
        for entry in manifest.files:
            name = f"{key}/{entry.path}"
            self._call("upload", name, self.client.upload_file, str(staging / entry.path), self.bucket, self._object(name), Config=self.transfer)
        self._put_bytes(f"{key}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
        self._cache(key, staging, manifest)

    def _cache(self, key: str, folder: Path, manifest: Manifest) -> None:
        target = self.cache_dir / key
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, target)
        (target / MANIFEST).write_text(manifest.model_dump_json(indent=2))

    def local_path(self, key: str) -> Path:
        """A local folder holding a complete stage's files (downloaded once, checksums verified)."""
        manifest = self.manifest(key)
        if manifest is None:
            raise FileNotFoundError(f"stage {key} has no complete artifacts in {self.uri('')}")
        target = self.cache_dir / key
        cached = target / MANIFEST
        if cached.exists() and Manifest.model_validate_json(cached.read_text()).files == manifest.files:
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=self.cache_dir) as tmp:
            for entry in manifest.files:
                path = Path(tmp) / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                name = f"{key}/{entry.path}"
                self._call("download", name, self.client.download_file, self.bucket, self._object(name), str(path), Config=self.transfer)
            verify_files(Path(tmp), manifest, self.uri(key))
            self._cache(key, Path(tmp), manifest)
        return target

    def lease(self, key: str, ttl_s: float):
        """An exclusive hold on ``key``, renewed while held and expiring ``ttl_s`` after the last renewal (infra/lease.py)."""
        from infra.lease import S3Lease

        return S3Lease(self.client, self.bucket, self._object(key), ttl_s)

    def read_json(self, key: str) -> Any | None:
        data = self._get_bytes(key)
        return json.loads(data) if data is not None else None

    def write_json(self, key: str, value: Any) -> None:
        self._put_bytes(key, json.dumps(value, indent=2, default=str).encode())
