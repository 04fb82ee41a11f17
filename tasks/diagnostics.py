"""Training diagnostics: what a falling DPO loss hides, read off TRL's per-step log.

* The first step's loss must be ln 2 (0.693): the policy equals its reference there, so
  every implicit reward is 0. Anything else means the reference is not the starting policy.
* Reward accuracy (mean over the second half of the steps) below 0.55: not learning;
  above 0.95: memorising the pairs.
* Chosen and rejected rewards moving the same way by similar amounts: the policy is shifting
  all likelihoods (e.g. lengthening or shortening everything) rather than separating pairs.
* Training margins rising while the held-out pairs' stay flat: over-optimization.

The thresholds are ``train.diagnostics`` (the numbers above are their defaults).
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from infra.settings import DiagnosticsConfig

ALARMS = ("reference_mismatch", "not_learning", "overfitting", "same_direction_drift", "over_optimization")


class Alarm(BaseModel):
    name: str
    message: str


def _steps(log_history: list[dict]) -> list[dict]:
    return [h for h in log_history if "loss" in h and "rewards/accuracies" in h]


_DEFAULTS = DiagnosticsConfig()


def diagnose_training(log_history: list[dict], config: DiagnosticsConfig) -> list[Alarm]:
    """Every alarm TRL's per-step log raises under ``config``'s thresholds."""
    return training_alarms(log_history, config.initial_loss_tolerance, config.reward_accuracy_band) + over_optimization_alarms(
        log_history, config.over_optimization_min_margin, config.over_optimization_ratio
    )


def training_alarms(
    log_history: list[dict],
    loss_tolerance: float = _DEFAULTS.initial_loss_tolerance,
    accuracy_band: tuple[float, float] = _DEFAULTS.reward_accuracy_band,
) -> list[Alarm]:
    steps = _steps(log_history)
    if not steps:
        return []
    alarms = []
    first = steps[0]["loss"]
    if abs(first - math.log(2)) > loss_tolerance:
        alarms.append(Alarm(name="reference_mismatch", message=(
            f"initial DPO loss {first:.4f} is not ln 2 = 0.6931 (+-{loss_tolerance}): the reference model is not the "
            "starting policy, so rewards are measured from the wrong place")))
    late = steps[len(steps) // 2:]
    accuracy = sum(h["rewards/accuracies"] for h in late) / len(late)
    low, high = accuracy_band
    if accuracy < low:
        alarms.append(Alarm(name="not_learning",
                            message=f"reward accuracy {accuracy:.2f} over the last {len(late)} steps is below {low}: not learning"))
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


def over_optimization_alarms(
    log_history: list[dict],
    min_train_margin: float = _DEFAULTS.over_optimization_min_margin,
    ratio: float = _DEFAULTS.over_optimization_ratio,
) -> list[Alarm]:
    """The SimPO article's over-optimization sign: margins on the training pairs keep rising
    while the held-out pairs (scored each epoch; 0 at the start, where policy = reference)
    gain less than ``ratio`` of it."""
    evals = [h for h in log_history if "eval_rewards/margins" in h]
    steps = _steps(log_history)
    if not evals or not steps:
        return []
    late = steps[len(steps) // 2:]
    train_margin = sum(h.get("rewards/margins", 0.0) for h in late) / len(late)
    heldout_margin = evals[-1]["eval_rewards/margins"]
    heldout_accuracy = evals[-1].get("eval_rewards/accuracies", float("nan"))
    # Margins, not accuracy, decide: held-out accuracy on a handful of pairs is mostly noise.
    if train_margin > min_train_margin and heldout_margin < ratio * train_margin:
        return [Alarm(name="over_optimization", message=(
            f"training margin {train_margin:.3f} but held-out margin {heldout_margin:.3f} and accuracy "
            f"{heldout_accuracy:.2f} after {len(evals)} epoch(s): the policy fits its training pairs, not the preference"))]
    return []
