import pytest

from infra.layout import stage_key
from infra.local_store import LocalArtifactStore
from infra.records import Candidate, read_jsonl, write_jsonl


def test_stage_written_whole_with_manifest(tmp_path):
    store = LocalArtifactStore(tmp_path)
    key = stage_key("loop", 1, "generate")
    records = [Candidate(prompt_id="p", index=i, text=f"t{i}", temperature=0.7, n_tokens=2) for i in range(3)]
    with store.stage(key, input_hash="in", config_hash="cfg") as out:
        write_jsonl(out / "candidates.jsonl", records)
    manifest = store.manifest(key)
    assert manifest is not None and manifest.input_hash == "in" and manifest.config_hash == "cfg"
    assert [f.path for f in manifest.files] == ["candidates.jsonl"]
    assert manifest.files[0].size == (tmp_path / key / "candidates.jsonl").stat().st_size
    assert read_jsonl(store.local_path(key) / "candidates.jsonl", Candidate) == records


def test_failed_stage_leaves_nothing(tmp_path):
    store = LocalArtifactStore(tmp_path)
    key = stage_key("loop", 1, "judge")
    with pytest.raises(RuntimeError):
        with store.stage(key) as out:
            (out / "half.jsonl").write_text("{}\n")
            raise RuntimeError("judge died")
    assert not store.is_complete(key)
    assert not (tmp_path / key).exists()
    assert not any(p.name.startswith(".staging") for p in tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="no complete artifacts"):
        store.local_path(key)


def test_rerun_replaces_stage(tmp_path):
    store = LocalArtifactStore(tmp_path)
    key = stage_key("loop", 2, "filter")
    with store.stage(key) as out:
        (out / "a.txt").write_text("old")
    with store.stage(key) as out:
        (out / "b.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / key).iterdir()) == ["b.txt", "manifest.json"]


def test_both_stores_keep_the_contract(tmp_path):
    from infra.s3_store import S3ArtifactStore
    from infra.store import ArtifactStore, StagingStore

    assert isinstance(LocalArtifactStore(tmp_path), ArtifactStore)
    assert issubclass(S3ArtifactStore, StagingStore) and issubclass(LocalArtifactStore, StagingStore)


def test_corrupted_file_is_detected_when_the_stage_is_read(tmp_path):
    from infra.store import CorruptArtifactError

    key = stage_key("loop", 1, "filter")
    with LocalArtifactStore(tmp_path).stage(key) as out:
        (out / "pairs.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    path = tmp_path / key / "pairs.jsonl"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01  # one flipped bit, same size
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="pairs.jsonl: checksum differs"):
        LocalArtifactStore(tmp_path).local_path(key)
