"""Where everything lives in the artifact store: the one place that names rounds, stages and files.

    <root>/<loop>/history.json                     every round's summary
    <root>/<loop>/champion.json                    the champion pointer (when MLflow has no alias)
    <root>/<loop>/comparisons.json                 `flywheel compare` results
    <root>/<loop>/benchmark_scores/<hash>.json     benchmark scores cached per policy
    <root>/<loop>/baseline_answers/<hash>.json     the round-0 policy's answers to the unconstrained prompts
    <root>/<loop>/champion_answers/<hash>.json     a champion's answers in the pairwise eval (rounds and ablation cells share them)
    <root>/<loop>/compare/<name>/                  one comparison's artifacts
    <root>/<loop>/round-NNN/champion_before.json   the champion the round started from (pinned)
    <root>/<loop>/round-NNN/<stage>/               a stage's files and its manifest.json
    <root>/<loop>/ablations.json                   every ablation's result (`flywheel ablate`, `sweep-beta`)
    <root>/<loop>/ablations/ablation-NNN/          its cells' stages and its summary (flows/ablate.py)

A stage's name is the same everywhere: its Prefect task, its folder here, its config section
(where it has one) and the prefix of its MLflow metrics.
"""

from __future__ import annotations

# Stages, in the order a round runs them.
PROMPTS = "prompts"
GENERATE = "generate"
JUDGE = "judge"
FILTER = "filter"
TRAIN = "train"
EVALUATE = "evaluate"
REGRESSION = "regression"
PROMOTE = "promote"
FIGURES = "figures"
CONFIG = "config"
STAGES = (CONFIG, PROMPTS, GENERATE, JUDGE, FILTER, TRAIN, EVALUATE, REGRESSION, PROMOTE, FIGURES)

# Files inside stage folders.
MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"  # config: the round's effective configuration
TRAIN_PROMPTS = "train.jsonl"  # prompts: this round's training sample
EVAL_PROMPTS = "eval.jsonl"  # prompts: the held-out set (the same every round)
CANDIDATES = "candidates.jsonl"  # generate
JUDGMENTS = "judgments.jsonl"  # judge
PAIRS = "pairs.jsonl"  # filter: the kept pairs as records
TRL_DATASET = "train"  # filter: the same pairs as a `datasets` folder in TRL's format
ADAPTER = "adapter"  # train: the LoRA adapter
MERGED = "merged"  # train: the full checkpoint the next round starts from
TRAINING_FIGURE = "training.png"  # train
COMPLETIONS = "completions.jsonl"  # evaluate: both policies' answers
VERDICTS = "verdicts.jsonl"  # evaluate
UNCONSTRAINED = "unconstrained.jsonl"  # evaluate: both policies' answers to the unconstrained prompts
UNCONSTRAINED_VERDICTS = "unconstrained_verdicts.jsonl"  # evaluate: a model judge's verdicts on them
BENCHMARKS_BEFORE = "before.json"  # regression
BENCHMARKS_AFTER = "after.json"  # regression
LOOP_FIGURE = "loop.png"  # figures
EXAMPLES = "examples.md"  # flywheel compare: the held-out answers that gained and lost most
# Each stage's typed result, the record the runner reloads when it resumes past the stage.
STAGE_SUMMARY = "summary.json"  # prompts, generate, judge
FILTER_REPORT = "report.json"
TRAIN_RESULT = "train_result.json"
PAIRWISE = "pairwise.json"
REGRESSION_RESULT = "regression.json"
DECISION = "decision.json"


def round_name(round_index: int) -> str:
    return f"round-{round_index:03d}"


def round_key(loop: str, round_index: int) -> str:
    return f"{loop}/{round_name(round_index)}"


def stage_key(loop: str, round_index: int, stage: str) -> str:
    return f"{round_key(loop, round_index)}/{stage}"


def champion_before_key(loop: str, round_index: int) -> str:
    return f"{round_key(loop, round_index)}/champion_before.json"


def history_key(loop: str) -> str:
    return f"{loop}/history.json"


def champion_key(loop: str) -> str:
    return f"{loop}/champion.json"


def comparisons_key(loop: str) -> str:
    return f"{loop}/comparisons.json"


def comparison_key(loop: str, challenger_round: int, baseline_round: int) -> str:
    return f"{loop}/compare/{round_name(challenger_round)}-vs-{round_name(baseline_round)}"


def benchmark_scores_key(loop: str, digest: str) -> str:
    return f"{loop}/benchmark_scores/{digest}.json"


def champion_answers_key(loop: str, digest: str) -> str:
    """A champion's answers to a round's held-out and unconstrained prompts, cached per policy weights and eval config."""
    return f"{loop}/champion_answers/{digest}.json"


def baseline_answers_key(loop: str, digest: str) -> str:
    """The round-0 policy's answers to the unconstrained prompts, cached per base model and eval config."""
    return f"{loop}/baseline_answers/{digest}.json"


def merged_uri(store, train_key: str) -> str:
    """Where a trained policy's full checkpoint lives, as the store names it (stable across machines)."""
    return f"{store.uri(train_key)}/{MERGED}"


def round_run_name(loop: str, round_index: int) -> str:
    """The round's Prefect flow-run name and MLflow run name."""
    return f"{loop}-{round_name(round_index)}"


def ablations_key(loop: str) -> str:
    return f"{loop}/ablations.json"


def ablation_numbers_key(loop: str) -> str:
    """Which number each ablation (matrix, round and config) has: the same one run again keeps it."""
    return f"{loop}/ablation_numbers.json"


def ablation_key(loop: str, number: int) -> str:
    return f"{loop}/ablations/ablation-{number:03d}"
