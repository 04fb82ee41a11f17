"""Training diagnostics: what a falling DPO loss hides, read off TRL's per-step log.

* Before the first update the implicit rewards (beta x log-ratio to the reference) are what the
  reference implies: 0 when it is the starting policy (and then the first loss is what the objective
  says, tasks/training/objectives.py: ln 2 = 0.693 for sigmoid DPO alone, (1/(2 tau))^2 for IPO, ...);
  with the round-0 policy as reference from round 2 on, within what the starting policy's own
  log-ratios (measured on the pairs before training, ``Start``) allow for a batch's mean. Anything
  else means the reference, or the starting policy, is not what it should be.
* Reward accuracy (mean over the second half of the steps, never the first, whose rewards are
  measured before any update) below 0.55 by more than its sampling error: not learning; above
  0.95: memorising the pairs. With a demo's three steps of 8 pairs the second half is a dozen
  pairs, whose accuracy a policy at 0.6 puts below 0.55 one time in three: a bare threshold
  would call noise "not learning".
* Chosen and rejected rewards moving the same way by similar amounts: the policy is shifting
  all likelihoods (e.g. lengthening or shortening everything) rather than separating pairs.
* Training margins rising while the held-out pairs' stay flat: over-optimization.

The thresholds are ``train.diagnostics`` (the numbers above are their defaults).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from pydantic import BaseModel, Field

from infra.settings import DiagnosticsConfig

LN2 = math.log(2)
# One-sided 95%: not_learning needs the late accuracy below the band's low end by this many standard errors.
NOT_LEARNING_Z = NormalDist().inv_cdf(0.95)
ALARMS = ("reference_mismatch", "not_learning", "overfitting", "same_direction_drift", "over_optimization")


class Alarm(BaseModel):
    name: str
    message: str


class Start(BaseModel):
    """Where training starts, measured against the reference before the first update. The
    defaults are a policy trained from its own reference with the sigmoid DPO loss alone."""

    expected_loss: float | None = Field(LN2, description="The first step's loss when known in advance; None: not known "
                                        "(an NLL term or a reference other than the starting policy makes it depend on the batch).")
    chosen: tuple[float, float] = Field((0.0, 0.0), description="Where the first batch's mean chosen reward can lie: "
                                        "between the means of the smallest and of the largest batch of the pairs' starting rewards.")
    rejected: tuple[float, float] = Field((0.0, 0.0), description="The same for the rejected reward.")
    train_margin: float = Field(0.0, description="Mean starting margin of the training pairs.")
    heldout_margin: float = Field(0.0, description="Mean starting margin of the held-out pairs.")
    check_rewards: bool = Field(True, description="Whether the first step's rewards are checked against chosen/rejected: "
                                "False for reference-free objectives (their rewards are the policy's own log-probs) and "
                                "for unpaired ones measured from a reference other than the starting policy.")


def _steps(log_history: list[dict], until_step: int | None = None) -> list[dict]:
    return [h for h in log_history if "loss" in h and "rewards/accuracies" in h
            and (until_step is None or h.get("step", 0) <= until_step)]


_DEFAULTS = DiagnosticsConfig()


def diagnose_training(log_history: list[dict], config: DiagnosticsConfig, start: Start | None = None,
                      kept_step: int | None = None, pairs_per_step: float | None = None) -> list[Alarm]:
    """Every alarm TRL's per-step log raises under ``config``'s thresholds, for training that
    started at ``start``, kept the policy of ``kept_step`` (None: the last) and took
    ``pairs_per_step`` pairs a step on average (None: unknown, no allowance for sampling error)."""
    start = start or Start()
    return training_alarms(log_history, config.initial_loss_tolerance, config.reward_accuracy_band, start,
                           config.initial_reward_tolerance, pairs_per_step) + over_optimization_alarms(
        log_history, config.over_optimization_min_margin, config.over_optimization_ratio, start, kept_step
    )


def _outside(value: float, interval: tuple[float, float], tolerance: float) -> bool:
    return not interval[0] - tolerance <= value <= interval[1] + tolerance


def _reference_mismatch(first: dict, start: Start, loss_tolerance: float, reward_tolerance: float) -> str | None:
    """Why the first step does not start where the reference says it should (None: it does)."""
    if start.expected_loss is not None and abs(first["loss"] - start.expected_loss) > loss_tolerance:
        return f"initial loss {first['loss']:.4f} is not {start.expected_loss:.4f} (+-{loss_tolerance})"
    for side in ("chosen", "rejected") if start.check_rewards else ():
        reward, expected = first.get(f"rewards/{side}"), getattr(start, side)
        if reward is not None and _outside(reward, expected, reward_tolerance):
            where = "0" if expected == (0.0, 0.0) else f"in [{expected[0]:+.3f}, {expected[1]:+.3f}]"
            return f"initial {side} reward {reward:+.4f} is not {where} (+-{reward_tolerance})"
    return None


def training_alarms(
    log_history: list[dict],
    loss_tolerance: float = _DEFAULTS.initial_loss_tolerance,
    accuracy_band: tuple[float, float] = _DEFAULTS.reward_accuracy_band,
    start: Start | None = None,
    reward_tolerance: float = _DEFAULTS.initial_reward_tolerance,
    pairs_per_step: float | None = None,
) -> list[Alarm]:
    alarms = []
    # KTO logs no reward accuracy: its first loss is still checked.
    first = next((h for h in log_history if "loss" in h and "train_loss" not in h), None)
    mismatch = _reference_mismatch(first, start or Start(), loss_tolerance, reward_tolerance) if first else None
    if mismatch:
        alarms.append(Alarm(name="reference_mismatch", message=(
            f"{mismatch}: the reference model is not the one training should be measured from, so rewards are "
            "measured from the wrong place")))
    steps = _steps(log_history)
    if not steps:
        return alarms
    late = late_steps(steps)
    if not late:  # one step: its rewards were measured before any update
        return alarms
    accuracy = sum(h["rewards/accuracies"] for h in late) / len(late)
    low, high = accuracy_band
    floor = not_learning_floor(low, len(late), pairs_per_step)
    if accuracy < floor:
        allowance = "" if floor == low else f" by more than its sampling error over ~{len(late) * pairs_per_step:.0f} pairs (floor {floor:.2f})"
        alarms.append(Alarm(name="not_learning", message=(
            f"reward accuracy {accuracy:.2f} over the last {len(late)} steps is below {low}{allowance}: not learning")))
    elif accuracy > high:
        alarms.append(Alarm(name="overfitting",
                            message=f"reward accuracy {accuracy:.2f} over the last {len(late)} steps is above {high}: memorising the pairs"))
    chosen = late[-1].get("rewards/chosen", 0.0)
    rejected = late[-1].get("rewards/rejected", 0.0)
    if chosen * rejected > 0 and min(abs(chosen), abs(rejected)) > 0.5 * max(abs(chosen), abs(rejected)):
        direction = "up" if chosen > 0 else "down"
        alarms.append(Alarm(name="same_direction_drift", message=(
            f"chosen ({chosen:+.3f}) and rejected ({rejected:+.3f}) rewards both moved {direction}: the policy shifts all "
            "likelihoods instead of separating the pairs")))
    return alarms


def late_steps(steps: list[dict]) -> list[dict]:
    """The second half of the logged steps, never the first: a step's rewards are measured in its
    forward pass, before its update, so the first step's are the starting policy's."""
    return steps[max(1, len(steps) // 2):]


def not_learning_floor(low: float, n_steps: int, pairs_per_step: float | None) -> float:
    """The accuracy below which not_learning is raised: the band's ``low`` less one-sided 95% of
    the sampling error of an accuracy over ``n_steps`` steps of ``pairs_per_step`` pairs (at
    ``low``), so a handful of pairs at chance cannot raise it alone; ``low`` itself when the count is unknown."""
    if not pairs_per_step:
        return low
    return low - NOT_LEARNING_Z * math.sqrt(low * (1 - low) / (n_steps * pairs_per_step))


def over_optimization_alarms(
    log_history: list[dict],
    min_train_margin: float = _DEFAULTS.over_optimization_min_margin,
    ratio: float = _DEFAULTS.over_optimization_ratio,
    start: Start | None = None,
    kept_step: int | None = None,
) -> list[Alarm]:
    """The SimPO article's over-optimization sign, for the policy kept (at ``kept_step``; None:
    the last): margins on the training pairs rose while the held-out pairs' (scored each epoch)
    gained less than ``ratio`` of it. Gains are over the margins before training (``start``:
    0 where the reference is the starting policy)."""
    start = start or Start()
    evals = [h for h in log_history if "eval_rewards/margins" in h and (kept_step is None or h.get("step") == kept_step)]
    steps = _steps(log_history, kept_step)
    if not evals or not steps:
        return []
    late = steps[len(steps) // 2:]
    train_gain = sum(h.get("rewards/margins", 0.0) for h in late) / len(late) - start.train_margin
    heldout_gain = evals[-1]["eval_rewards/margins"] - start.heldout_margin
    heldout_accuracy = evals[-1].get("eval_rewards/accuracies", float("nan"))
    epoch = evals[-1].get("epoch")
    at = f"at epoch {epoch:g}" if epoch is not None else f"after {len(evals)} epoch(s)"
    # Margins, not accuracy, decide: held-out accuracy on a handful of pairs is mostly noise.
    if train_gain > min_train_margin and heldout_gain < ratio * train_gain:
        return [Alarm(name="over_optimization", message=(
            f"training margin gained {train_gain:.3f} but held-out margin {heldout_gain:.3f} (accuracy "
            f"{heldout_accuracy:.2f}) {at}: the policy fits its training pairs, not the preference"))]
    return []
