"""The S3 artifact store against a real S3 endpoint on loopback (moto's server)."""

from __future__ import annotations

import uuid

import pytest

from infra.s3_store import S3ArtifactStore
from infra.store import ArtifactStoreError
from infra.store_factory import open_store


@pytest.fixture
def bucket(s3_server):
    s3_server.start()
    name = f"flywheel-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def make_store(s3_server, bucket, cache, retry_s: float = 120.0) -> S3ArtifactStore:
    store = open_store(f"s3://{bucket}/runs", cache_dir=cache, endpoint_url=s3_server.url, retry_s=retry_s)
    assert isinstance(store, S3ArtifactStore)
    return store


def test_stage_uploads_files_then_manifest(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket, tmp_path / "cache-a")
    with store.stage("loop/round-001/judge", input_hash="in1", config_hash="cfg1") as out:
        (out / "judgments.jsonl").write_text('{"a": 1}\n')
        (out / "sub").mkdir()
        (out / "sub" / "x.bin").write_bytes(b"\x00" * 1000)
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "runs/loop/round-001/judge/judgments.jsonl",
        "runs/loop/round-001/judge/manifest.json",
        "runs/loop/round-001/judge/sub/x.bin",
    ]
    manifest = store.manifest("loop/round-001/judge")
    assert (manifest.input_hash, manifest.config_hash) == ("in1", "cfg1")
    assert {f.path: f.size for f in manifest.files} == {"judgments.jsonl": 9, "sub/x.bin": 1000}
    assert store.uri("loop/round-001/judge") == f"s3://{bucket}/runs/loop/round-001/judge"


def test_another_machine_downloads_and_verifies(s3_server, bucket, tmp_path):
    writer = make_store(s3_server, bucket, tmp_path / "cache-a")
    with writer.stage("loop/round-001/generate") as out:
        (out / "candidates.jsonl").write_text("hello\n")
    reader = make_store(s3_server, bucket, tmp_path / "cache-b")  # an empty cache: a new machine
    folder = reader.local_path("loop/round-001/generate")
    assert str(folder).startswith(str(tmp_path / "cache-b"))
    assert (folder / "candidates.jsonl").read_text() == "hello\n"
    # Tampered data is caught against the manifest's checksums.
    s3_server.client().put_object(Bucket=bucket, Key="runs/loop/round-001/generate/candidates.jsonl", Body=b"HELLO\n")
    fresh = make_store(s3_server, bucket, tmp_path / "cache-c")
    with pytest.raises(ArtifactStoreError, match="checksum differs"):
        fresh.local_path("loop/round-001/generate")


def test_failed_stage_is_never_marked_complete(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket, tmp_path / "cache")
    with pytest.raises(RuntimeError, match="boom"):
        with store.stage("loop/round-001/train") as out:
            (out / "half.bin").write_bytes(b"1" * 10)
            raise RuntimeError("boom")
    assert store.manifest("loop/round-001/train") is None
    with pytest.raises(FileNotFoundError, match="no complete artifacts"):
        store.local_path("loop/round-001/train")


def test_large_files_go_up_in_multipart_uploads(s3_server, bucket, tmp_path):
    from boto3.s3.transfer import TransferConfig

    store = make_store(s3_server, bucket, tmp_path / "cache")
    five_mb = 5 * 1024 * 1024  # S3's smallest part
    store.transfer = TransferConfig(multipart_threshold=five_mb, multipart_chunksize=five_mb)
    with store.stage("loop/round-001/train") as out:
        (out / "model.safetensors").write_bytes(b"w" * (12 * 1024 * 1024))
    head = s3_server.client().head_object(Bucket=bucket, Key="runs/loop/round-001/train/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert head["ContentLength"] == 12 * 1024 * 1024


def test_json_pointers_round_trip(s3_server, bucket, tmp_path):
    store = make_store(s3_server, bucket, tmp_path / "cache")
    assert store.read_json("loop/champion.json") is None
    store.write_json("loop/champion.json", {"round": 2})
    assert store.read_json("loop/champion.json") == {"round": 2}


def test_server_gone_fails_clearly_and_rerun_succeeds(s3_server, bucket, tmp_path):
    # A short retry budget: the test is about the failure once it is spent (test_s3_fault.py rides out an outage).
    store = make_store(s3_server, bucket, tmp_path / "cache", retry_s=3)
    s3_server.stop()
    try:
        with pytest.raises(ArtifactStoreError) as err:
            with store.stage("loop/round-001/filter") as out:
                (out / "pairs.jsonl").write_text("{}\n")
        assert f"s3://{bucket}/runs/loop/round-001/filter" in str(err.value)
        assert s3_server.url in str(err.value)
    finally:
        s3_server.start()
    assert store.manifest("loop/round-001/filter") is None
    with store.stage("loop/round-001/filter") as out:
        (out / "pairs.jsonl").write_text("{}\n")
    assert store.is_complete("loop/round-001/filter")
