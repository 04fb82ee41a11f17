import pytest

from infra.artifacts import LocalArtifactStore, read_jsonl, stage_key, write_jsonl
from infra.records import Candidate


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
