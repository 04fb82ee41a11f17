"""One set of rows, three renderings: the round summary, the history and a comparison are built
as rows once and rendered as text, markdown and HTML; the round's record built from stage results."""

from __future__ import annotations

import html

from flows.comparison_records import Comparison
from flows.publish import comparison_markdown, round_markdown
from flows.render import as_html, as_markdown, as_records, as_text, summary_table
from flows.round_records import RoundSummary, append_history, read_history
from flows.rows import comparison_rows, comparisons_table, history_table, summary_rows
from flows.table import Table, side_by_side
from infra.local_store import LocalArtifactStore
from tasks.evaluate import PairwiseResult, UnconstrainedResult
from tasks.filter import FilterReport
from tasks.promote import Decision
from tasks.regression import RegressionResult, TaskComparison
from tasks.train import TrainResult
from tasks.training.diagnostics import Alarm


def _pairwise(**figures) -> PairwiseResult:
    return PairwiseResult(
        n=40, wins=20, ties=12, losses=8, win_rate=0.65, win_rate_low=0.55, win_rate_high=0.75, consistency_rate=1.0,
        champion_constraint_rate=0.41, challenger_constraint_rate=0.58, champion_strict_rate=0.2, challenger_strict_rate=0.35,
        **figures,
    )


def _regression() -> RegressionResult:
    return RegressionResult(passed=False, tolerance=0.02, reasons=["piqa dropped 5.0 points (allowed 2.0)"], tasks=[
        TaskComparison(task="arc_easy", before=0.50, after=0.51, delta=0.01, passed=True),
        TaskComparison(task="piqa", before=0.70, after=0.65, delta=-0.05, passed=False),
    ])


def _train() -> TrainResult:
    return TrainResult(
        n_pairs=30, n_steps=8, beta=0.1, learning_rate=5e-6, initial_loss=0.6931, final_loss=0.55, final_reward_accuracy=0.8,
        final_reward_margin=0.4, runtime_s=12.0, pairs_per_s=2.5, log_history=[], alarms=[Alarm(name="overfitting", message="0.97")],
    )


def _summary(round_index: int, promoted: bool, trained: bool = True) -> RoundSummary:
    return RoundSummary.from_results(
        "rows", round_index, flow_run_id="f", mlflow_run_id="m", champion_round=0,
        filter_report=FilterReport(n_judgments=40, n_kept=30 if trained else 1, dropped={}, validation={}),
        train=_train() if trained else None, pairwise=_pairwise(lc_win_rate=0.63) if trained else None,
        regression=_regression() if trained else None,
        decision=Decision(promote=promoted, reasons=["won" if promoted else "did not win"]), artifacts="file:///a",
    )


def test_round_summary_from_the_stage_results():
    s = _summary(2, False)
    assert (s.loop, s.round, s.flow_run_id, s.mlflow_run_id, s.champion_before, s.pairs_kept) == ("rows", 2, "f", "m", 0, 30)
    assert (s.train_initial_loss, s.train_final_loss, s.train_reward_accuracy) == (0.6931, 0.55, 0.8)
    assert (s.win_rate, s.win_rate_low, s.win_rate_high, s.lc_win_rate) == (0.65, 0.55, 0.75, 0.63)
    assert (s.constraint_rate_champion, s.constraint_rate_challenger) == (0.41, 0.58)
    assert s.regression_deltas == {"arc_easy": 0.01, "piqa": -0.05} and s.alarms == ["overfitting"]
    assert not s.promoted and s.reasons == ["did not win"] and s.artifacts == "file:///a"
    untrained = _summary(3, False, trained=False)
    assert untrained.pairs_kept == 1 and untrained.win_rate is None and untrained.regression_deltas == {} and untrained.alarms == []
    # A length-controlled win rate that could not be fitted (nan) is recorded as unknown.
    nan_lc = RoundSummary.from_results(
        "rows", 1, flow_run_id="", mlflow_run_id="", champion_round=0,
        filter_report=FilterReport(n_judgments=4, n_kept=4, dropped={}, validation={}), train=None,
        pairwise=_pairwise(), regression=None, decision=Decision(promote=False, reasons=[]), artifacts="",
    )
    assert nan_lc.lc_win_rate is None and nan_lc.win_rate == 0.65


def test_append_history_replaces_a_rerun_round_and_keeps_round_order(tmp_path):
    store = LocalArtifactStore(tmp_path)
    append_history(store, _summary(2, False))
    append_history(store, _summary(1, True))
    history = append_history(store, _summary(2, True))  # round 2 ran again
    assert [(r.round, r.promoted) for r in history] == [(1, True), (2, True)]
    assert read_history(store, "rows") == history


def test_the_history_renders_the_same_cells_three_ways():
    history = [_summary(1, True), _summary(2, False), _summary(3, False, trained=False)]
    table = history_table(history)
    assert table.header[0] == "round" and table.header[-1] == "decision"
    assert [row[0] for row in table.rows] == [1, 2, 3] and [row[-1] for row in table.rows] == ["PROMOTED", "rejected", "rejected"]
    text, markdown, page = as_text(table), as_markdown(table), as_html(table)
    for cell in {str(c) for row in table.rows for c in row} | set(table.header):
        assert cell in text and cell in markdown and html.escape(cell) in page
    assert "0.650 [0.550, 0.750]" in text and "arc_easy +1.0, piqa -5.0" in text
    assert len(text.splitlines()) == 2 + len(history) and page.count("<tr>") == 1 + len(history)
    assert as_records(table)[0]["round"] == 1 and as_records(table)[2]["win rate [95% CI]"] == "-"
    assert summary_table(history) == text and summary_table([]) == "no rounds yet"


def test_round_markdown_lists_the_summary_rows_and_the_decision():
    s = _summary(2, False)
    markdown = round_markdown(s)
    assert markdown.startswith("# rows round 2: **rejected**")
    assert all(f"| {name} | {value} |" in markdown for name, value in summary_rows(s))
    assert markdown.endswith("## Decision\n\n- did not win")


def test_a_comparison_renders_the_same_rows_as_text_markdown_and_html():
    c = Comparison(loop="rows", challenger_round=3, baseline_round=0, n_prompts=40, artifacts="x", regression=_regression(),
                   result=_pairwise(lc_win_rate=0.63, champion_mean_words=48.0, challenger_mean_words=39.0))
    rows = dict(comparison_rows(c))
    assert rows["wins/ties/losses"] == "20/12/8" and rows["mean words"] == "48 → 39"
    assert rows["piqa"] == "0.700 → 0.650 (-5.0 points, beyond the gate)" and rows["arc_easy"] == "0.500 → 0.510 (+1.0 points)"
    assert rows["answers with a failure mode"] == "-"  # not measured: no failure rates
    markdown = comparison_markdown(c)
    assert all(f"| {name} | {value} |" in markdown for name, value in rows.items())
    table = comparisons_table([c])
    assert table.header[:3] == ["policy", "against", "prompts"] and table.rows[0][:3] == ["round 3", "round 0", 40]
    assert html.escape(rows["piqa"]) in as_html(table)


def test_side_by_side_lines_up_figures_a_record_lacks():
    table = side_by_side([[("a", 1), ("b", "x")], [("a", 2), ("c", "y")]])
    assert table == Table(["a", "b", "c"], [[1, "x", "-"], [2, "-", "y"]])
    assert as_markdown(Table(["a"], [["x | y"]])).splitlines()[-1] == "| x \\| y |"
    assert as_text(table).splitlines() == ["a  b  c", "-  -  -", "1  x  -", "2  -  y"]


def _unconstrained(**figures) -> UnconstrainedResult:
    return UnconstrainedResult(
        n=4, champion_words=[30, 40, 50, 60], challenger_words=[20, 30, 40, 50], baseline_words=[40, 50, 60, 70],
        champion_mean_words=45.0, challenger_mean_words=35.0, baseline_mean_words=55.0,
        champion_quartiles=[37.5, 45.0, 52.5], challenger_quartiles=[27.5, 35.0, 42.5],
        champion_failure_rates={"any": 0.25}, challenger_failure_rates={"any": 0.5}, **figures,
    )


SEEN_UNSEEN = dict(champion_seen_rate=0.4, challenger_seen_rate=0.6, champion_unseen_rate=0.3, challenger_unseen_rate=0.35,
                   n_seen_constraints=60, n_unseen_constraints=40)


def test_the_round_shows_seen_and_unseen_types_and_the_unconstrained_prompts():
    s = RoundSummary.from_results(
        "rows", 1, flow_run_id="", mlflow_run_id="", champion_round=0,
        filter_report=FilterReport(n_judgments=4, n_kept=4, dropped={}, validation={}), train=None,
        pairwise=_pairwise(**SEEN_UNSEEN, unconstrained=_unconstrained()), regression=None,
        decision=Decision(promote=False, reasons=[]), artifacts="",
    )
    assert (s.seen_rate_champion, s.seen_rate_challenger, s.unseen_rate_champion, s.unseen_rate_challenger) == (0.4, 0.6, 0.3, 0.35)
    assert (s.unconstrained_words_round0, s.unconstrained_words_champion, s.unconstrained_words_challenger) == (55.0, 45.0, 35.0)
    assert (s.unconstrained_failure_champion, s.unconstrained_failure_challenger, s.unconstrained_win_rate) == (0.25, 0.5, None)
    rows = dict(summary_rows(s))
    assert rows["seen types champion → new"] == "0.400 → 0.600" and rows["unseen types champion → new"] == "0.300 → 0.350"
    assert rows["unconstrained: words"] == "45 → 35 (round 0: 55)"
    assert rows["unconstrained: with a failure mode"] == "0.250 → 0.500" and rows["unconstrained: win rate"] == "-"
    # Rounds from before these figures existed show '-'.
    old = dict(summary_rows(_summary(1, True)))
    assert old["unseen types champion → new"] == "-" and old["unconstrained: words"] == "-"


def test_a_comparison_shows_seen_and_unseen_types_and_the_unconstrained_prompts():
    judged = _unconstrained(judge="openai", wins=2, ties=1, losses=1, win_rate=0.625, win_rate_low=0.3, win_rate_high=0.9)
    c = Comparison(loop="rows", challenger_round=3, baseline_round=0, n_prompts=40, artifacts="x",
                   result=_pairwise(**SEEN_UNSEEN, unconstrained=judged))
    rows = dict(comparison_rows(c))
    assert rows["seen types met"] == "0.400 → 0.600" and rows["unseen types met"] == "0.300 → 0.350"
    assert rows["unconstrained: words"] == "45 → 35 (round 0: 55)"
    assert rows["unconstrained: words q1/median/q3"] == "38/45/52 → 28/35/42"
    assert rows["unconstrained: win rate (openai) [95% CI]"] == "0.625 [0.300, 0.900]"
    unjudged = dict(comparison_rows(c.model_copy(update={"result": _pairwise(unconstrained=_unconstrained())})))
    assert not any("win rate (" in name for name in unjudged) and unjudged["unseen types met"] == "-"
    assert "| unconstrained: words | 45 → 35 (round 0: 55) |" in comparison_markdown(c)


def test_the_split_shows_its_change_with_the_paired_interval():
    measured = dict(SEEN_UNSEEN, n_seen_prompts=50, n_unseen_prompts=35, seen_change_low=0.12, seen_change_high=0.28,
                    unseen_change_low=-0.04, unseen_change_high=0.14)
    c = Comparison(loop="rows", challenger_round=3, baseline_round=0, n_prompts=40, artifacts="x", result=_pairwise(**measured))
    rows = dict(comparison_rows(c))
    assert rows["seen types met"] == "0.400 → 0.600 (+20.0 points [+12.0, +28.0], 50 prompts)"
    assert rows["unseen types met"] == "0.300 → 0.350 (+5.0 points [-4.0, +14.0], 35 prompts)"
    s = RoundSummary.from_results(
        "rows", 1, flow_run_id="", mlflow_run_id="", champion_round=0,
        filter_report=FilterReport(n_judgments=4, n_kept=4, dropped={}, validation={}), train=None,
        pairwise=_pairwise(**measured), regression=None, decision=Decision(promote=False, reasons=[]), artifacts="",
    )
    assert dict(summary_rows(s))["unseen types champion → new"] == "0.300 → 0.350 (+5.0 points [-4.0, +14.0])"
