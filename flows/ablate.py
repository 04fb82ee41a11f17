"""`flywheel ablate` and `flywheel sweep-beta`: which objective, LoRA rank and beta, judged on
held-out evidence.

Every cell (objective x rank x beta) trains on the same finished round's pairs (and replay), from
that round's champion, and is evaluated on that round's held-out prompts against that champion:
each cell is its own Prefect flow run (``flywheel-ablation-cell``), its training dispatched to
``train.deployment`` when one is configured (then the cells run at once), and its MLflow run a
child of the ablation's run. A
cell that fails is reported and the others go on; a rerun of the same ablation skips the cells
done from the same inputs (``cell.json`` carries their identity; the train and evaluate stages
resume as a round's do). Cells with a reference share its log-probs of the pairs, computed by the
first of them (``reference_logps.json``).

    <root>/<loop>/ablations.json                       every ablation: number, round, matrix, recommendation
    <root>/<loop>/ablations/ablation-NNN/<cell>/        a cell's train/ and evaluate/ (regression/) stages, cell.json
    <root>/<loop>/ablations/ablation-NNN/summary/       table.md, margins.png, result.json
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from prefect import flow, get_run_logger
from pydantic import BaseModel, model_validator

from flows.publish import artifact_key, figure_markdown
from flows.render import as_markdown, as_records
from flows.round_records import read_history
from flows.stage_runner import RoundContext, StageResult, read_stage_records
from flows.stages import check_regression_task, evaluate_pairwise_task
from flows.table import Table
from flows.train_flow import train_challenger
from infra import layout
from infra.champion import local_checkpoint
from infra.ray_cluster import join_if_used
from infra.records import Champion
from infra.retries import call_with_retries
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore, hash_json
from infra.store_factory import store_from_config
from infra.tracking import Tracker
from tasks.ablation import AblationCell, CellResult, Recommendation, ablation_figure, cell_figures, matrix, recommend, table_rows

SUMMARY = "summary"
# transformers' model loading is not thread-safe (seen: "Cannot copy out of meta tensor" when two
# cells' evaluations loaded checkpoints at once), so the cells' local work takes turns.
LOCAL_MODELS = threading.Lock()
CELL_FILE = "cell.json"


class AblationError(ValueError):
    """The ablation cannot run as asked; the message says why."""


class AblationSpec(BaseModel):
    round: int = 0  # the finished round whose pairs the cells train on; 0: the latest
    objectives: list[str]
    ranks: list[int]
    betas: list[float | None] = [None]  # None: each objective's configured beta
    benchmarks: bool = False
    sweep: bool = False
    parallel: int = 0  # cells run at once; 0: all of them when training goes to train.deployment, else one

    @model_validator(mode="after")
    def _known_and_positive(self) -> "AblationSpec":
        from tasks.training.objectives import OBJECTIVES

        problems = [f"unknown objective {o!r}; known: {', '.join(OBJECTIVES.names())}" for o in self.objectives if o not in OBJECTIVES]
        problems += [f"LoRA rank {r} must be >= 1" for r in self.ranks if r < 1]
        problems += [f"beta {b} must be > 0" for b in self.betas if b is not None and b <= 0]
        if not (self.objectives and self.ranks and self.betas):
            problems.append("the matrix needs at least one objective, rank and beta")
        if problems:
            raise AblationError("; ".join(problems))
        return self


class AblationResult(BaseModel):
    number: int
    loop: str
    spec: AblationSpec
    champion_round: int
    cells: list[CellResult]
    recommendation: Recommendation
    artifacts: str
    mlflow_run_id: str = ""


def read_ablations(store: ArtifactStore, loop: str) -> list[AblationResult]:
    return [AblationResult.model_validate(a) for a in store.read_json(layout.ablations_key(loop)) or []]


def read_ablation(store: ArtifactStore, loop: str, number: int) -> AblationResult:
    found = next((a for a in read_ablations(store, loop) if a.number == number), None)
    if found is None:
        known = ", ".join(str(a.number) for a in read_ablations(store, loop)) or "none"
        raise AblationError(f"loop {loop!r} has no ablation {number} (known: {known})")
    return found


def _number_for(store: ArtifactStore, loop: str, spec: AblationSpec, config_id: str) -> int:
    """The same ablation run again keeps its number (and so its finished cells)."""
    earlier = store.read_json(layout.ablation_numbers_key(loop)) or {}
    identity = hash_json({"spec": spec.model_dump(mode="json", exclude={"parallel"}), "config": config_id})
    if identity not in earlier:
        earlier[identity] = max(earlier.values(), default=0) + 1
        store.write_json(layout.ablation_numbers_key(loop), earlier)
    return earlier[identity]


def _finished_round(store: ArtifactStore, config: FlywheelConfig, round_index: int | None) -> int:
    """``round_index``, or the latest round whose pairs and prompts are complete."""
    done = lambda r: all(store.is_complete(layout.stage_key(config.loop, r, s)) for s in (layout.PROMPTS, layout.FILTER))  # noqa: E731
    if round_index is not None:
        if not done(round_index):
            raise AblationError(f"round {round_index} of loop {config.loop!r} has no complete pairs and prompts to ablate on")
        return round_index
    rounds = [r.round for r in read_history(store, config.loop) if done(r.round)]
    if not rounds:
        raise AblationError(f"loop {config.loop!r} has no finished round to ablate on: run `flywheel round` first")
    return max(rounds)


def _reload(store: ArtifactStore, key: str, file: str, model):
    return model.model_validate_json((store.local_path(key) / file).read_text())


@flow(name="flywheel-ablation-cell")
def run_cell(config: FlywheelConfig, round_index: int, cell: AblationCell, prefix: str, champion: Champion,
             parent_run_id: str, identity: str, benchmarks: bool = False, kl: bool = False) -> CellResult:
    """One cell: train (here, or on train.deployment) and evaluate against the round's champion."""
    from tasks.filter import FilterReport
    from tasks.prompts import PromptsSummary

    cell_config = config.model_copy(update={"train": cell.train_config(config.train)})
    join_if_used(cell_config)
    store = store_from_config(config.storage)
    tracker = Tracker.from_config(cell_config)
    tracker.start_run(f"{config.loop}-{prefix.rsplit('/', 1)[-1]}-{cell.name}", {
        "mlflow.parentRunId": parent_run_id, "flywheel.loop": config.loop, "flywheel.round": str(round_index),
        "flywheel.ablation_cell": cell.name}, cell_config)
    ctx = RoundContext(config=cell_config, round_index=round_index, store=store, tracker=tracker, champion=champion,
                       champion_checkpoint=local_checkpoint(champion, store, config.storage.data_dir),
                       key_prefix=f"{prefix}/{cell.name}", reference_logps_key=f"{prefix}/reference_logps.json")
    pairs_key, prompts_key = (layout.stage_key(config.loop, round_index, s) for s in (layout.FILTER, layout.PROMPTS))
    pairs = StageResult(pairs_key, _reload(store, pairs_key, layout.FILTER_REPORT, FilterReport))
    prompts = StageResult(prompts_key, _reload(store, prompts_key, layout.STAGE_SUMMARY, PromptsSummary))
    try:
        challenger, not_trained = train_challenger(ctx, pairs)
        if challenger is None:
            raise AblationError(f"cell {cell.name}: {not_trained}")
        with LOCAL_MODELS:  # cells running at once train elsewhere; here they load models one at a time
            pairwise = evaluate_pairwise_task(ctx, challenger, prompts)
            regression = check_regression_task(ctx, challenger) if benchmarks else None
            moved = _kl_to_start(ctx, challenger, prompts) if kl else None
    except BaseException:
        tracker.end_round("FAILED")
        raise
    result = cell_figures(cell, challenger.result, pairwise.result, regression.result if regression else None)
    result = result.model_copy(update={"identity": identity, "mlflow_run_id": tracker.run_id or "", "kl_to_start": moved,
                                       "artifacts": store.uri(f"{prefix}/{cell.name}")})
    if moved is not None:
        tracker.log_metrics({"ablation/kl_to_start": moved})
    tracker.end_round("FINISHED")
    store.write_json(f"{prefix}/{cell.name}/{CELL_FILE}", result.model_dump(mode="json"))
    return result


KL_PROMPTS = 32  # held-out prompts sampled for the KL estimate: enough to rank betas, cheap next to the eval


def _kl_to_start(ctx: RoundContext, challenger: StageResult, prompts: StageResult) -> float:
    """KL(trained policy || the champion it started from), on the policy's samples (tasks/divergence.py)."""
    from infra.records import Prompt
    from tasks.divergence import sampled_kl

    held_out = read_stage_records(ctx, prompts, layout.EVAL_PROMPTS, Prompt)[:KL_PROMPTS]
    policy = str(ctx.store.local_path(challenger.key) / layout.MERGED)
    return sampled_kl(policy, ctx.champion_checkpoint, held_out, ctx.config.generate, ctx.config.model, ctx.config.evaluate)


def _cell_identity(store: ArtifactStore, config: FlywheelConfig, round_index: int, cell: AblationCell,
                   champion: Champion, benchmarks: bool) -> str:
    reads = {s: [(f.path, f.sha256) for f in store.manifest(layout.stage_key(config.loop, round_index, s)).files]
             for s in (layout.PROMPTS, layout.FILTER)}
    sections = config.model_copy(update={"train": cell.train_config(config.train)}).model_dump(mode="json")
    return hash_json({"reads": reads, "champion": champion.checkpoint, "benchmarks": benchmarks,
                      "config": {k: sections[k] for k in ("model", "train", "evaluate", "judge", "prompts", "regression")}})


def _run_or_reuse(store: ArtifactStore, config: FlywheelConfig, spec: AblationSpec, cell: AblationCell, prefix: str,
                  champion: Champion, parent_run_id: str) -> CellResult:
    log = get_run_logger()
    identity = _cell_identity(store, config, spec.round, cell, champion, spec.benchmarks)
    saved = store.read_json(f"{prefix}/{cell.name}/{CELL_FILE}")
    if saved is not None and saved.get("identity") == identity and saved.get("status") == "done":
        log.info("%s: done earlier from the same inputs, not run again", cell.name)
        return CellResult.model_validate(saved)
    name = f"{config.loop}-{prefix.rsplit('/', 1)[-1]}-{cell.name}"
    try:
        return run_cell.with_options(flow_run_name=name)(
            config=config, round_index=spec.round, cell=cell, prefix=prefix, champion=champion,
            parent_run_id=parent_run_id, identity=identity, benchmarks=spec.benchmarks, kl=spec.sweep)
    except Exception as err:  # reported, not fatal: the other cells go on
        log.warning("cell %s failed: %s", cell.name, err)
        return CellResult(cell=cell, status="failed", error=f"{type(err).__name__}: {err}", identity=identity)


def _run_cells(cells: list[AblationCell], parallel: int, run: Callable[[AblationCell], CellResult]) -> list[CellResult]:
    """Every cell's result, in the matrix's order. With ``parallel`` > 1 (training on a work pool)
    up to that many cells run at once, each in a thread with its own copy of the flow's context,
    so each stays a child flow run of the ablation. The first cell with a reference computes the
    reference log-probs the others reuse: it runs with the reference-free cells, the other
    cells with a reference after it."""
    from tasks.training.objectives import OBJECTIVES

    if parallel <= 1 or len(cells) <= 1:
        return [run(cell) for cell in cells]
    with_reference = [c for c in cells if OBJECTIVES.get(c.objective).uses_reference]
    first_wave = with_reference[:1] + [c for c in cells if c not in with_reference]
    done: dict[str, CellResult] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="ablation-cell") as pool:
        for wave in (first_wave, with_reference[1:]):
            futures = {c.name: pool.submit(contextvars.copy_context().run, run, c) for c in wave}
            done.update({name: future.result() for name, future in futures.items()})
    return [done[c.name] for c in cells]


def current_cell(config: FlywheelConfig, round_index: int) -> AblationCell:
    """The settings the loop's config trains with, as a cell (to compare the others against)."""
    from tasks.training.objectives import objective_for

    objective = objective_for(config.train, round_index)
    return AblationCell(objective=objective.name, lora_r=config.train.lora_r, beta=objective.beta(config.train, round_index))


@flow(name="flywheel-ablate", flow_run_name="{config.loop}-ablate")
def run_ablation(config: FlywheelConfig, spec: AblationSpec) -> AblationResult:
    """The matrix's cells one after another, then the table, figure and recommendation."""
    store = store_from_config(config.storage)
    spec = spec.model_copy(update={"round": _finished_round(store, config, spec.round or None)})
    pinned = store.read_json(layout.champion_before_key(config.loop, spec.round))
    if pinned is None:
        raise AblationError(f"round {spec.round} of loop {config.loop!r} has no pinned champion")
    champion = Champion.model_validate(pinned)
    config_id = hash_json({k: v for k, v in config.model_dump(mode="json").items() if k != "storage"})
    number = _number_for(store, config.loop, spec, config_id)
    prefix = layout.ablation_key(config.loop, number)
    tracker = Tracker.from_config(config)
    tracker.start_run(f"{config.loop}-ablation-{number:03d}", {"flywheel.loop": config.loop, "flywheel.ablation": str(number),
                                                             "flywheel.round": str(spec.round)}, config)
    cells = _run_cells(matrix(spec.objectives, spec.ranks, spec.betas), spec.parallel or (99 if config.train.deployment else 1),
                       lambda cell: _run_or_reuse(store, config, spec, cell, prefix, champion, tracker.run_id or ""))
    current = current_cell(config, spec.round)
    advice = recommend(cells, current)
    result = AblationResult(number=number, loop=config.loop, spec=spec, champion_round=champion.round, cells=cells,
                            recommendation=advice, artifacts=store.uri(prefix), mlflow_run_id=tracker.run_id or "")
    _record(store, tracker, result)
    tracker.end_round("FINISHED")
    return result


def ablation_table(result: AblationResult) -> Table:
    header, rows = table_rows(result.cells, sweep=result.spec.sweep)
    return Table(header, rows)


def ablation_markdown(result: AblationResult, figure: bytes | None = None) -> str:
    kind = "beta sweep" if result.spec.sweep else "ablation"
    lines = [
        f"# {result.loop} {kind} {result.number}: round {result.spec.round}'s pairs, against round {result.champion_round}'s policy",
        "", f"Artifacts: `{result.artifacts}`", "", as_markdown(ablation_table(result)), "", "## Recommendation", "",
        *(f"- {reason}" for reason in result.recommendation.reasons),
    ]
    if result.recommendation.cell is not None:
        lines += ["", f"Adopt with `flywheel loop --adopt-ablation {result.number}`."]
    if figure:
        lines += ["", figure_markdown("held-out vs training margin, per epoch", figure)]
    return "\n".join(lines)


def _record(store: ArtifactStore, tracker: Tracker, result: AblationResult) -> None:
    """Table, figure and result in the store, the MLflow parent run and the Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    figure = ablation_figure(result.cells)
    key = f"{layout.ablation_key(result.loop, result.number)}/{SUMMARY}"
    with store.stage(key) as out:
        (out / "table.md").write_text(ablation_markdown(result))
        (out / "margins.png").write_bytes(figure)
        (out / "result.json").write_text(result.model_dump_json(indent=2))
    tracker.log_artifact(store.local_path(key) / "margins.png", "figures")
    tracker.log_artifact(store.local_path(key) / "table.md", "ablation")
    tracker.log_metrics({"ablation/cells_done": sum(c.status == "done" for c in result.cells),
                         "ablation/cells_failed": sum(c.status == "failed" for c in result.cells),
                         "ablation/recommends_change": float(result.recommendation.change)})
    tracker.set_tags({"flywheel.recommendation": result.recommendation.cell.name if result.recommendation.cell else "no change"})
    others = [a for a in read_ablations(store, result.loop) if a.number != result.number]
    store.write_json(layout.ablations_key(result.loop), [a.model_dump(mode="json") for a in [*others, result]])
    slug = artifact_key(f"{result.loop}-{'sweep' if result.spec.sweep else 'ablation'}")
    call_with_retries("Prefect API: ablation table artifact", create_table_artifact, key=slug,
                      table=as_records(ablation_table(result)), description=f"{result.loop}: ablation {result.number}")
    call_with_retries("Prefect API: ablation summary artifact", create_markdown_artifact, key=f"{slug}-summary",
                      markdown=ablation_markdown(result, figure), description=f"{result.loop}: ablation {result.number}")


def adopt_ablation(config: FlywheelConfig, number: int) -> tuple[FlywheelConfig, Recommendation]:
    """``config`` with the settings of ablation ``number``'s recommended cell (unchanged when it
    recommends no change), marked with where they came from (train.adopted_ablation)."""
    result = read_ablation(store_from_config(config.storage), config.loop, number)
    advice = result.recommendation
    train = advice.cell.train_config(config.train) if advice.cell else config.train
    train = train.model_copy(update={"adopted_ablation": number})
    return config.model_copy(update={"train": train}), advice
