"""`flywheel report`: the history table and a self-contained HTML page with figures."""

from __future__ import annotations

import base64

from flows.report import loop_figure, render_html, write_report
from flows.round_records import RoundSummary
from infra.local_store import LocalArtifactStore


def _round(n, promoted, trained=True):
    figures = dict(
        train_initial_loss=0.6931, train_final_loss=0.55, train_reward_accuracy=0.8, win_rate=0.6, win_rate_low=0.5,
        win_rate_high=0.7, lc_win_rate=0.58, constraint_rate_champion=0.4, constraint_rate_challenger=0.5,
        regression_deltas={"arc_easy": -0.01, "piqa": 0.02},
    ) if trained else {}
    return RoundSummary(loop="rep", round=n, champion_before=0, pairs_kept=30 if trained else 1, promoted=promoted,
                        reasons=["won" if promoted else "did not win"], alarms=["overfitting"] if n == 2 else [], **figures)


def test_loop_figure_is_a_png():
    png = loop_figure([_round(1, True), _round(2, False)])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_renders_with_and_without_rejected_rounds(tmp_path):
    only_promoted = render_html("rep", [_round(1, True)], {})
    assert "PROMOTED" in only_promoted and "rejected" not in only_promoted.split("<h2>Rounds</h2>")[0]
    mixed = render_html("rep", [_round(1, True), _round(2, False), _round(3, False, trained=False)], {})
    assert mixed.count("<tr>") == 4 and "rejected" in mixed and "overfitting" in mixed
    assert "data:image/png;base64," in mixed
    empty = render_html("rep", [], {})
    assert "No rounds yet" in empty


def test_write_report_embeds_each_rounds_training_figure(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    png = loop_figure([_round(1, True)])
    with store.stage("rep/round-001/train") as out:
        (out / "training.png").write_bytes(png)
    table = write_report(store, "rep", [_round(1, True), _round(2, False)], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert base64.b64encode(png).decode() in page
    assert table.splitlines()[0].startswith("round") and len(table.splitlines()) == 4


def test_report_shows_comparisons_against_earlier_rounds():
    from flows.comparison_records import Comparison
    from tasks.evaluate import PairwiseResult

    result = PairwiseResult(
        n=40, wins=20, ties=12, losses=8, win_rate=0.65, win_rate_low=0.55, win_rate_high=0.75, consistency_rate=1.0,
        champion_constraint_rate=0.41, challenger_constraint_rate=0.58, champion_strict_rate=0.2, challenger_strict_rate=0.35,
        lc_win_rate=0.63, champion_mean_words=48.0, challenger_mean_words=39.0,
        champion_failure_rates={"any": 0.1}, challenger_failure_rates={"any": 0.12},
    )
    comparison = Comparison(loop="rep", challenger_round=3, baseline_round=0, n_prompts=40, result=result, artifacts="x")
    page = render_html("rep", [_round(1, True)], {}, [comparison])
    section = page.split("Against earlier policies")[1].split("<h2>")[0]
    assert "round 3" in section and "0.650 [0.550, 0.750]" in section and "20/12/8" in section and "0.410 → 0.580" in section
    assert "Against earlier policies" not in render_html("rep", [_round(1, True)], {})
