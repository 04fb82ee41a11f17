"""The ablation's recommendation follows the article: held-out evidence, margins that track, and
"no change" when the intervals overlap."""

from __future__ import annotations

import pytest

from tasks.ablation import AblationCell, CellResult, epoch_margins, matrix, recommend


def _cell(objective, rate, low, high, alarms=()):
    return CellResult(cell=AblationCell(objective=objective, lora_r=16), status="done", win_rate=rate, win_rate_low=low,
                      win_rate_high=high, heldout_margin=0.1, alarms=list(alarms))


@pytest.mark.parametrize("cells, current, adopted", [
    ([_cell("dpo", 0.5, 0.4, 0.6), _cell("simpo", 0.55, 0.45, 0.65)], "dpo", None),  # intervals overlap: no change
    ([_cell("dpo", 0.4, 0.35, 0.45), _cell("simpo", 0.7, 0.6, 0.8)], "dpo", "simpo"),  # clear of the current cell
    ([_cell("dpo", 0.4, 0.35, 0.45), _cell("simpo", 0.7, 0.6, 0.8, ["over_optimization"])], "dpo", None),  # not tracking
    ([_cell("dpo", 0.7, 0.6, 0.8), _cell("simpo", 0.4, 0.3, 0.45)], "dpo", None),  # the current settings lead
])
def test_recommendation_rule(cells, current, adopted):
    advice = recommend(cells, AblationCell(objective=current, lora_r=16))
    assert (advice.cell.objective if advice.cell else None) == adopted, advice.reasons


def test_matrix_puts_reference_objectives_first_and_scales_alpha():
    from infra.settings import TrainConfig

    cells = matrix(["simpo", "dpo"], [16, 8], [None])
    assert [c.name for c in cells] == ["dpo-r16-betadefault", "dpo-r8-betadefault", "simpo-r16-betadefault", "simpo-r8-betadefault"]
    config = cells[3].train_config(TrainConfig(lora_r=16, lora_alpha=32))
    assert (config.objective, config.lora_r, config.lora_alpha, config.simpo.beta) == (["simpo"], 8, 16, 2.0)
    swept = AblationCell(objective="orpo", lora_r=8, beta=0.2).train_config(TrainConfig())
    assert swept.orpo.weight == 0.2 and swept.beta == TrainConfig().beta


def test_epoch_margins_split_the_steps_at_each_evaluation():
    log = [{"loss": 1, "rewards/margins": 0.1, "epoch": 0.5}, {"loss": 1, "rewards/margins": 0.3, "epoch": 1.0},
           {"eval_rewards/margins": 0.05, "epoch": 1.0}, {"loss": 1, "rewards/margins": 0.5, "epoch": 1.5},
           {"loss": 1, "rewards/margins": 0.7, "epoch": 2.0}, {"eval_rewards/margins": 0.02, "epoch": 2.0}]
    epochs = epoch_margins(log)
    assert [(e.epoch, round(e.train_margin, 3), e.heldout_margin) for e in epochs] == [(1.0, 0.2, 0.05), (2.0, 0.6, 0.02)]
