"""The one stage runner: resume past a complete stage, redo one whose config changed or whose
files were corrupted, write whole or not at all, log metrics under the stage's name. On a real
local store and a real (sqlite) MLflow tracker, outside Prefect."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel

from flows.stage_runner import RoundContext, StageResult, run_stage
from infra import layout
from infra.local_store import LocalArtifactStore
from infra.records import Champion
from infra.settings import FlywheelConfig
from infra.tracking import Tracker


class Counted(BaseModel):
    n_lines: int


@pytest.fixture
def ctx(tmp_path) -> RoundContext:
    config = FlywheelConfig.model_validate({"loop": "runner", "storage": {"data_dir": str(tmp_path / "data")}})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "runner")
    tracker.start_round("runner", 1, config)
    return RoundContext(config=config, round_index=1, store=LocalArtifactStore(tmp_path / "artifacts"), tracker=tracker,
                        champion=Champion(checkpoint="base", round=0), champion_checkpoint="base")


def write_lines(calls: list[int], text: str = "a\nb\nc\n"):
    def compute(out):
        calls.append(1)
        (out / "lines.txt").write_text(text)
        return Counted(n_lines=text.count("\n"))

    return compute


def run(ctx, compute, sections=("filter",)):
    return run_stage(ctx, layout.FILTER, compute, result_type=Counted, result_file=layout.FILTER_REPORT,
                     config_sections=sections, metrics=lambda r: {"n_lines": r.n_lines})


def test_complete_stage_is_reloaded_not_rerun(ctx):
    calls: list[int] = []
    first = run(ctx, write_lines(calls))
    second = run(ctx, write_lines(calls))
    assert calls == [1] and second == first == StageResult("runner/round-001/filter", Counted(n_lines=3))


def test_changed_config_section_reruns_the_stage(ctx):
    calls: list[int] = []
    run(ctx, write_lines(calls))
    ctx.config = ctx.config.model_copy(update={"filter": ctx.config.filter.model_copy(update={"min_chars": 3})})
    run(ctx, write_lines(calls))
    assert calls == [1, 1]


def test_corrupted_artifact_is_detected_and_the_stage_redone(ctx, caplog):
    calls: list[int] = []
    done = run(ctx, write_lines(calls))
    path = ctx.store.local_path(done.key) / "lines.txt"
    path.write_bytes(b"x" + path.read_bytes()[1:])  # one byte flipped, same size
    ctx.store = LocalArtifactStore(ctx.store.root)  # a new process: nothing verified yet
    with caplog.at_level(logging.WARNING, logger="flywheel"):
        again = run(ctx, write_lines(calls))
    assert calls == [1, 1], "the corrupted stage was reloaded instead of redone"
    assert "checksum differs" in caplog.text and "running the stage again" in caplog.text
    assert (ctx.store.local_path(again.key) / "lines.txt").read_text() == "a\nb\nc\n"


def test_failing_stage_writes_nothing_and_keeps_no_result(ctx):
    def compute(out):
        (out / "lines.txt").write_text("half")
        raise RuntimeError("stage died")

    with pytest.raises(RuntimeError, match="stage died"):
        run(ctx, compute)
    assert ctx.store.manifest(ctx.key(layout.FILTER)) is None


def test_metrics_are_named_after_the_stage(ctx):
    run(ctx, write_lines([]))
    metrics = ctx.tracker.client.get_run(ctx.tracker.run_id).data.metrics
    assert metrics["filter/n_lines"] == 3 and "filter/seconds" in metrics
    assert metrics["filter/peak_rss_mb"] >= metrics["filter/rss_after_mb"] > 50  # this process: Python, torch, mlflow


@pytest.mark.parametrize("full_at", ["lines.txt", layout.MANIFEST])
def test_disk_full_while_a_stage_writes_leaves_it_incomplete_and_the_rerun_completes(ctx, monkeypatch, full_at):
    """ENOSPC from a real write, on the stage's own file or on its manifest: the stage is not marked
    complete, no staging folder is left, the error says what happened, and once space returns the
    rerun runs the stage and completes it."""
    import errno
    import os
    from pathlib import Path

    from infra.store import ArtifactStoreError

    real_write = Path.write_text

    def write_until_full(self, data, *args, **kwargs):
        if self.name == full_at:
            real_write(self, data[: len(data) // 2], *args, **kwargs)  # half of it landed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, data, *args, **kwargs)

    calls: list[int] = []
    monkeypatch.setattr(Path, "write_text", write_until_full)
    with pytest.raises(ArtifactStoreError, match="runner/round-001/filter: the disk is full .*not marked complete"):
        run(ctx, write_lines(calls))
    monkeypatch.undo()  # space returns
    key = ctx.key(layout.FILTER)
    assert ctx.store.manifest(key) is None and not list(ctx.store.root.glob(".staging-*"))
    done = run(ctx, write_lines(calls))
    assert calls == [1, 1] and ctx.store.is_complete(key)
    assert (ctx.store.local_path(done.key) / "lines.txt").read_text() == "a\nb\nc\n"
