"""A round's figures in one record, built from the stage results, and the loop's history of them
in ``<loop>/history.json``. How they are shown is ``flows/rows.py``'s and ``flows/render.py``'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from infra import layout

if TYPE_CHECKING:
    from tasks.evaluate import PairwiseResult, UnconstrainedResult
    from tasks.filter import FilterReport
    from tasks.generate import GenerateSummary
    from tasks.promote import Decision
    from tasks.regression import RegressionResult
    from tasks.train import TrainResult


class RoundSummary(BaseModel):
    loop: str
    round: int
    flow_run_id: str = ""
    mlflow_run_id: str = ""
    mlflow_experiment_id: str = ""  # with the run id, the round's page in MLflow's UI (infra/mlflow_links.py)
    ray: dict[str, str] | None = None  # the Ray cluster's address (no credentials) and job id, when a stage ran on Ray
    champion_before: int  # round that produced the champion this round started from (0 = base)
    pairs_kept: int
    truncated_share: float | None = None  # of the round's candidates, cut off at generate.max_new_tokens
    train_initial_loss: float | None = None
    train_final_loss: float | None = None
    train_reward_accuracy: float | None = None
    win_rate: float | None = None
    win_rate_low: float | None = None
    win_rate_high: float | None = None
    lc_win_rate: float | None = None
    constraint_rate_champion: float | None = None
    constraint_rate_challenger: float | None = None
    # Held-out constraints of the types trained on ("seen") and of those held out of training.
    seen_rate_champion: float | None = None
    seen_rate_challenger: float | None = None
    unseen_rate_champion: float | None = None
    unseen_rate_challenger: float | None = None
    # The paired 95% interval of each kind's change (challenger - champion); None: not measured.
    seen_change_low: float | None = None
    seen_change_high: float | None = None
    unseen_change_low: float | None = None
    unseen_change_high: float | None = None
    # The unconstrained prompts: mean words (round 0, champion, challenger), share of answers with
    # any failure mode, and a model judge's win rate when one is configured.
    unconstrained_words_round0: float | None = None
    unconstrained_words_champion: float | None = None
    unconstrained_words_challenger: float | None = None
    unconstrained_failure_champion: float | None = None
    unconstrained_failure_challenger: float | None = None
    unconstrained_win_rate: float | None = None
    failure_rates_champion: dict[str, float] = {}  # share of held-out answers per failure mode, and "any"
    failure_rates_challenger: dict[str, float] = {}
    regression_deltas: dict[str, float] = {}
    alarms: list[str] = []
    promoted: bool
    reasons: list[str]
    artifacts: str = ""

    @classmethod
    def from_results(
        cls,
        loop: str,
        round_index: int,
        *,
        flow_run_id: str,
        mlflow_run_id: str,
        champion_round: int,
        mlflow_experiment_id: str = "",
        filter_report: FilterReport,
        train: TrainResult | None,
        pairwise: PairwiseResult | None,
        regression: RegressionResult | None,
        decision: Decision,
        artifacts: str,
        generate: GenerateSummary | None = None,
        ray: dict[str, str] | None = None,
    ) -> RoundSummary:
        """The round's record from what its stages returned; ``train``, ``pairwise`` and
        ``regression`` are None when the round kept too few pairs to train."""
        return cls(
            loop=loop,
            round=round_index,
            flow_run_id=flow_run_id,
            mlflow_run_id=mlflow_run_id,
            mlflow_experiment_id=mlflow_experiment_id,
            ray=ray,
            champion_before=champion_round,
            pairs_kept=filter_report.n_kept,
            truncated_share=generate.truncated_share if generate else None,
            train_initial_loss=train.initial_loss if train else None,
            train_final_loss=train.final_loss if train else None,
            train_reward_accuracy=train.final_reward_accuracy if train else None,
            win_rate=pairwise.win_rate if pairwise else None,
            win_rate_low=pairwise.win_rate_low if pairwise else None,
            win_rate_high=pairwise.win_rate_high if pairwise else None,
            # nan (could not be fitted) is recorded as unknown.
            lc_win_rate=pairwise.lc_win_rate if pairwise and pairwise.lc_win_rate == pairwise.lc_win_rate else None,
            constraint_rate_champion=pairwise.champion_constraint_rate if pairwise else None,
            constraint_rate_challenger=pairwise.challenger_constraint_rate if pairwise else None,
            seen_rate_champion=pairwise.champion_seen_rate if pairwise else None,
            seen_rate_challenger=pairwise.challenger_seen_rate if pairwise else None,
            unseen_rate_champion=pairwise.champion_unseen_rate if pairwise else None,
            unseen_rate_challenger=pairwise.challenger_unseen_rate if pairwise else None,
            **_split_changes(pairwise),
            **_unconstrained_figures(pairwise.unconstrained if pairwise else None),
            failure_rates_champion=pairwise.champion_failure_rates if pairwise else {},
            failure_rates_challenger=pairwise.challenger_failure_rates if pairwise else {},
            regression_deltas={t.task: t.delta for t in regression.tasks} if regression else {},
            alarms=[a.name for a in train.alarms] if train else [],
            promoted=decision.promote,
            reasons=decision.reasons,
            artifacts=artifacts,
        )


def _split_changes(pairwise: PairwiseResult | None) -> dict[str, float | None]:
    names = ("seen_change_low", "seen_change_high", "unseen_change_low", "unseen_change_high")
    return {name: getattr(pairwise, name) for name in names} if pairwise else {}


def _unconstrained_figures(u: UnconstrainedResult | None) -> dict[str, float | None]:
    if u is None:
        return {}
    return {
        "unconstrained_words_round0": u.baseline_mean_words,
        "unconstrained_words_champion": u.champion_mean_words,
        "unconstrained_words_challenger": u.challenger_mean_words,
        "unconstrained_failure_champion": u.champion_failure_rates.get("any"),
        "unconstrained_failure_challenger": u.challenger_failure_rates.get("any"),
        "unconstrained_win_rate": u.win_rate,
    }


def read_history(store, loop: str) -> list[RoundSummary]:
    return [RoundSummary.model_validate(r) for r in store.read_json(layout.history_key(loop)) or []]


def with_round(history: list[RoundSummary], summary: RoundSummary) -> list[RoundSummary]:
    """``history`` with ``summary``'s row (replacing an earlier run of the same round), in round order."""
    return sorted([*(r for r in history if r.round != summary.round), summary], key=lambda r: r.round)


def append_history(store, summary: RoundSummary) -> list[RoundSummary]:
    """Record ``summary`` in its loop's history (replacing an earlier run of the same round) and
    return the history, in round order."""
    history = with_round(read_history(store, summary.loop), summary)
    store.write_json(layout.history_key(summary.loop), [r.model_dump() for r in history])
    return history

