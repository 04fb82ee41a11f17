"""`flywheel proof` on the tiny model: seeds change what they should (two seeds give different pairs
and adapters; the same seed twice gives the same ones), and the report holds every figure over the
seeds with the eval's own interval, the unrequested forms and the telling examples per seed."""

from __future__ import annotations

import pytest

from flows.proof import proof_key, run_proof, seed_config
from flows.proof_intervals import outcome_per_prompt, seeds_and_prompts_interval
from infra import layout
from infra.records import read_jsonl
from infra.store_factory import store_from_config
from tasks.evaluate import PairVerdict
from tests.tiny_round import tiny_round_config, word_band_prompt_file


@pytest.fixture(scope="module")
def proofs(tiny_model, prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("proof")
    prompts = word_band_prompt_file(root / "prompts.jsonl")
    config = tiny_round_config(tiny_model, "proof", prompts, root / "data", evaluate={"n_unconstrained": 0},
                               promotion={"max_failure_increase": 1.0, "require_regression_pass": False})
    two = run_proof(config=config, seeds=2, rounds=1)
    again = run_proof(config=config.model_copy(update={"loop": "again"}), seeds=1, rounds=1)  # seed 0 once more
    return config, two, again


def _files(config, loop: str, stage: str, name: str) -> bytes:
    store = store_from_config(config.storage)
    return (store.local_path(layout.stage_key(loop, 1, stage)) / name).read_bytes()


def test_seeds_change_pairs_and_adapters_and_the_same_seed_repeats_them(proofs):
    config, two, again = proofs
    assert [r.loop for r in two.runs] == ["proof-seed0", "proof-seed1"] and again.runs[0].loop == "again-seed0"
    adapter = f"{layout.ADAPTER}/adapter_model.safetensors"
    for stage, name in ((layout.FILTER, layout.PAIRS), (layout.TRAIN, adapter)):
        seed0, seed1, repeat = (_files(config, loop, stage, name) for loop in ("proof-seed0", "proof-seed1", "again-seed0"))
        assert seed0 != seed1, f"two seeds gave the same {name}"
        assert seed0 == repeat, f"the same seed gave another {name}"


def test_a_seed_moves_the_sampling_and_training_seeds_only():
    from infra.settings import FlywheelConfig

    config = FlywheelConfig.model_validate({"loop": "p", "generate": {"seed": 5}, "train": {"seed": 7}})
    second = seed_config(config, 2)
    assert (second.loop, second.generate.seed, second.train.seed) == ("p-seed2", 7, 9)
    assert second.prompts == config.prompts and second.evaluate == config.evaluate


def test_the_report_has_every_figure_over_the_seeds(proofs):
    config, two, _ = proofs
    rows = {r.metric: r for r in two.rows}
    store = store_from_config(config.storage)
    win = rows["win rate"]
    values = [run.rounds[0].win_rate for run in two.runs]
    assert win.values == values and win.mean == pytest.approx(sum(values) / 2)
    assert win.low == min(values) and win.high == max(values) and win.std is not None
    halves = [(s.win_rate_high - s.win_rate_low) / 2 for s in (run.rounds[0] for run in two.runs)]
    assert win.eval_half_width == pytest.approx(sum(halves) / 2)
    assert {"pairs", "reward acc.", "seen types change", "unconstrained: words new", "promoted"} <= rows.keys()
    # the mean's interval (seeds and held-out prompts resampled) holds the mean, and only the eval's figures have one
    for row in (rows[name] for name in ("win rate", "seen types change", "unseen types change")):
        assert row.mean_low is None or row.mean_low <= row.mean <= row.mean_high, row
    verdicts = [read_jsonl(store.local_path(layout.stage_key(run.loop, 1, layout.EVALUATE)) / layout.VERDICTS, PairVerdict)
                for run in two.runs]
    expected = seeds_and_prompts_interval([outcome_per_prompt(v) for v in verdicts], config.evaluate.bootstrap_samples, config.evaluate.seed)
    assert (win.mean_low, win.mean_high) == expected
    assert rows["pairs"].mean_low is None and rows["reward acc."].mean_high is None
    for run in two.runs:
        assert run.held_out["prompts"] == 4 and set(run.unrequested) == {"round 0", "champion"}
        assert run.unrequested["round 0"]["answers"] == 4
        assert len(run.best) == len(run.worst) == 3
    markdown = (store.local_path(proof_key("proof", 2, 1)) / "proof.md").read_text()
    assert "## seed 0 (loop proof-seed0)" in markdown and "## seed 1 (loop proof-seed1)" in markdown
    assert "| 1 | win rate |" in markdown and "mean's 95% CI" in markdown and "Unrequested forms" in markdown and "gained most" in markdown
    assert store.read_json(f"{proof_key('proof', 2, 1)}/proof.json")["seeds"] == 2


def test_a_finished_seed_is_read_not_run_again(proofs):
    config, two, _ = proofs
    rerun = run_proof(config=config, seeds=2, rounds=1)
    assert [r.rounds[0].mlflow_run_id for r in rerun.runs] == [r.rounds[0].mlflow_run_id for r in two.runs]
    one = run_proof(config=config, seeds=1, rounds=1)  # a report over fewer seeds goes beside, not over, the other
    assert one.runs[0].rounds[0].mlflow_run_id == two.runs[0].rounds[0].mlflow_run_id
    store = store_from_config(config.storage)
    assert store.read_json(f"{proof_key('proof', 1, 1)}/proof.json")["seeds"] == 1
    assert store.read_json(f"{proof_key('proof', 2, 1)}/proof.json")["seeds"] == 2
