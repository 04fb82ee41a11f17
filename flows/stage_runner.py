"""The one runner every stage goes through, and the context a round hands its stages.

``run_stage`` owns what every stage repeats: the stage key, the identity of its inputs (the
checksums of the upstream stages it reads) and of its config sections, resuming past a stage
already complete with the same identity, staging its files so they are committed whole or not
at all, reloading its typed result, logging its metrics as ``<stage>/<name>`` (with its wall
time, ``seconds``, and its peak resident memory, ``peak_rss_mb``; what it loaded is released
after it), and one summary line in the Prefect log. Every stage returns the same shape:
``StageResult(key, result)``.

No stage is retried as a whole: the network calls inside (S3, MLflow, the judge's API) retry
on their own, and training is never rerun on a transient error.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

from pydantic import BaseModel

from infra import layout
from infra.memory import peak_rss, release_memory
from infra.records import Champion, read_jsonl
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore, ArtifactStoreError, CorruptArtifactError, hash_json
from infra.tracking import Tracker

R = TypeVar("R", bound=BaseModel)


@dataclass
class RoundContext:
    """What a round's stages are handed: built once by the flow, so no stage reaches storage or
    tracking through a global."""

    config: FlywheelConfig
    round_index: int
    store: ArtifactStore
    tracker: Tracker
    champion: Champion  # the policy the round started from
    champion_checkpoint: str  # where this machine loads it from
    # An ablation cell's stages live under its own folder, not the round's (None: the round's).
    key_prefix: str | None = None
    # Where the reference's log-probs of the round's pairs are shared (JSON), for cells that
    # train on the same pairs against the same reference; None: computed by each training.
    reference_logps_key: str | None = None

    @property
    def loop(self) -> str:
        return self.config.loop

    @property
    def data_dir(self) -> Path:
        return Path(self.config.storage.data_dir)

    def key(self, stage: str) -> str:
        if self.key_prefix:
            return f"{self.key_prefix}/{stage}"
        return layout.stage_key(self.loop, self.round_index, stage)


@dataclass(frozen=True)
class StageResult(Generic[R]):
    key: str  # where the stage's files are, in the artifact store
    result: R  # its typed result, also saved in the stage as JSON


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task, the ``flywheel`` logger outside one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flywheel")


def inputs_hash(store: ArtifactStore, upstream: Sequence[StageResult], extra: str = "") -> str:
    """Identity of a stage's inputs: the contents (checksums) of the upstream stages it reads."""
    digests = []
    for stage in upstream:
        manifest = store.manifest(stage.key)
        if manifest is None:
            raise FileNotFoundError(f"stage {stage.key} has no complete artifacts to read")
        digests.append([(f.path, f.sha256) for f in manifest.files])
    return hash_json({"upstream": digests, "extra": extra})


def config_hash(config: FlywheelConfig, sections: Sequence[str]) -> str:
    dumped = config.model_dump(mode="json")
    return hash_json({name: dumped[name] for name in sections})


def _reload(store: ArtifactStore, key: str, result_file: str, result_type: type[R]) -> R:
    return result_type.model_validate_json((store.local_path(key) / result_file).read_text())


def run_stage(
    ctx: RoundContext,
    stage: str,
    compute: Callable[[Path], R],
    *,
    result_type: type[R],
    result_file: str,
    reads: Sequence[StageResult] = (),
    starts_from: str = "",
    config_sections: Sequence[str] = (),
    metrics: Callable[[R], dict[str, float]] | None = None,
) -> StageResult[R]:
    """Run ``compute(folder)`` (it writes the stage's files into ``folder`` and returns its result)
    unless the stage is complete from the same ``reads``, ``starts_from`` (the policy it starts
    from) and ``config_sections``; log ``metrics(result)`` as ``<stage>/<name>``."""
    log = stage_logger()
    key = ctx.key(stage)
    input_id = inputs_hash(ctx.store, reads, starts_from)
    config_id = config_hash(ctx.config, config_sections)
    manifest = ctx.store.manifest(key)
    if manifest is not None and (manifest.input_hash, manifest.config_hash) == (input_id, config_id):
        try:
            result = _reload(ctx.store, key, result_file, result_type)
            log.info("%s: complete with the same inputs and config, not run again", key)
            return StageResult(key, result)
        except CorruptArtifactError as err:
            log.warning("%s: %s; running the stage again", key, err)
    log.info("%s: running", key)
    started = time.perf_counter()
    with peak_rss() as memory:
        result = _compute_staged(ctx.store, key, compute, result_file, input_id, config_id)
        release_memory()  # what the stage loaded (models, datasets) is not held into the next one
    seconds = time.perf_counter() - started
    figures = {**(metrics(result) if metrics else {}), "seconds": seconds, "peak_rss_mb": memory.peak_mb, "rss_after_mb": memory.end_mb}
    ctx.tracker.log_metrics({f"{stage}/{name}": value for name, value in figures.items()})
    shown = ", ".join(f"{name} {value:.4g}" for name, value in list(figures.items())[:6] if isinstance(value, (int, float)))
    log.info("%s: done in %.1f s, peak RSS %.0f MB (%s)", stage, seconds, memory.peak_mb, shown)
    return StageResult(key, result)


def _compute_staged(store: ArtifactStore, key: str, compute: Callable[[Path], R], result_file: str, input_id: str, config_id: str) -> R:
    """``compute``'s files and its result, committed to ``key`` whole or not at all."""
    try:
        with store.stage(key, input_hash=input_id, config_hash=config_id) as out:
            result = compute(out)
            (out / result_file).write_text(result.model_dump_json(indent=2))
        return result
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise ArtifactStoreError(
            f"{key}: the disk is full ({err.filename or 'while writing'}): the stage is not marked complete and none of it "
            "is kept; free some space, then run the round again (it resumes at this stage)") from err


def read_stage_records(ctx: RoundContext, stage: StageResult, file: str, model: type[R]) -> list[R]:
    """The records of type ``model`` in ``stage``'s JSONL ``file``."""
    return read_jsonl(ctx.store.local_path(stage.key) / file, model)
