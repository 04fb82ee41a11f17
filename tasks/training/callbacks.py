"""Trainer callbacks: each logged step forwarded to the caller, and a stop at the first step whose
figures are not finite (``NonFiniteLoss``)."""

from __future__ import annotations

import math
from typing import Callable


def forward_logs(on_log: Callable[[dict, int], None]):
    """A callback that hands each logged step's figures and step number to ``on_log``."""
    from transformers import TrainerCallback

    class ForwardLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                on_log(dict(logs), state.global_step)

    return ForwardLogs()


class NonFiniteLoss(ArithmeticError):
    """Training diverged: a figure of a logged step (its loss, gradient norm, log-probs) is NaN or infinite."""

    def __init__(self, step: int, names: list[str]):
        self.step, self.names = step, names
        # The Trainer logs a NaN loss as a finite average (logging_nan_inf_filter): the other figures show it.
        super().__init__(f"training stopped at step {step}: the loss diverged ({', '.join(names)} not finite); "
                         "lower train.learning_rate or check the pairs")


def finite_guard():
    """A callback that raises NonFiniteLoss at the first logged step with a NaN or infinite figure."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        """Stop training at the first logged step with a NaN or infinite figure: its weights are lost."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            bad = sorted(k for k, v in (logs or {}).items() if isinstance(v, float) and not math.isfinite(v))
            if bad:
                raise NonFiniteLoss(state.global_step, bad)

    return StopOnNonFiniteLoss()
