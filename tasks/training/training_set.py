"""What a round trains on: its pairs split into training and held-out, earlier rounds' pairs
replayed into the training side, the objective's rows, and the rows as datasets.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from infra.records import PreferencePair
from infra.settings import TrainConfig
from tasks.training.objectives import Objective, load_feedback


def split_heldout(pairs: list[PreferencePair], share: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded held-out split (none when it would leave fewer than 2 pairs on either side)."""
    n_heldout = int(round(len(pairs) * share))
    if n_heldout < 2 or len(pairs) - n_heldout < 2:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(f"flywheel-heldout-{seed}").shuffle(order)
    held = set(order[:n_heldout])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _identity(pair: PreferencePair) -> tuple[str, str, str]:
    return pair.prompt, pair.chosen, pair.rejected


def mix_replay(pairs: Sequence[PreferencePair], earlier: Sequence[PreferencePair], share: float,
               seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The training set (``pairs`` then the replayed ones) and the replayed pairs: drawn, seeded,
    from ``earlier`` so that they make up ``share`` of the set, fewer when there are not as many;
    never a pair twice, nor one ``pairs`` already holds."""
    if share <= 0 or not earlier:
        return list(pairs), []
    seen = {_identity(p) for p in pairs}
    pool = []
    for pair in earlier:
        if _identity(pair) not in seen:
            seen.add(_identity(pair))
            pool.append(pair)
    wanted = int(round(len(pairs) * share / (1 - share)))
    replayed = random.Random(f"flywheel-replay-{seed}").sample(pool, min(wanted, len(pool)))
    return [*pairs, *replayed], replayed


@dataclass(frozen=True)
class TrainingSet:
    train_pairs: list[PreferencePair]  # the round's own training pairs, then the replayed ones
    heldout_pairs: list[PreferencePair]  # the round's own, scored each epoch
    replayed: list[PreferencePair]
    train_rows: list[dict]  # the objective's rows of train_pairs (and, unpaired, the feedback files' rows)
    heldout_rows: list[dict]

    @property
    def n_feedback(self) -> int:
        """Unpaired feedback rows added to the pairs' own two rows each."""
        return len(self.train_rows) - 2 * len(self.train_pairs)


def training_set(pairs: list[PreferencePair], earlier: Sequence[PreferencePair], config: TrainConfig, round_index: int,
                 objective: Objective) -> TrainingSet:
    """The round's training and held-out pairs and the objective's rows of them."""
    own, heldout = split_heldout(pairs, config.heldout_share, config.seed + round_index)
    train_pairs, replayed = mix_replay(own, earlier, config.replay_share, config.seed + round_index)
    feedback = [] if objective.paired else [row for path in config.kto.feedback_files for row in load_feedback(path)]
    return TrainingSet(train_pairs, heldout, replayed, objective.rows(train_pairs, feedback),
                       objective.rows(heldout) if heldout else [])


def as_dataset(rows: list[dict], args, folder: Path | None):
    """The rows as a dataset; with ``folder``, one saved there by the main process and read by all,
    so that the files TRL caches beside it (tokenized rows, reference log-probs) are shared."""
    from datasets import Dataset

    if folder is None:
        return Dataset.from_list(rows)
    # The first process of all (not of each machine): with train.launch_dir every machine's processes share the folder.
    with args.main_process_first(local=False, desc=f"dataset {folder.name}"):
        if not folder.exists():
            # Written aside and renamed: a reader never meets a half-written dataset.
            partial = folder.with_name(f".{folder.name}.{socket.gethostname()}.{os.getpid()}")
            Dataset.from_list(rows).save_to_disk(str(partial))
            try:
                partial.rename(folder)
            except OSError:  # saved meanwhile by another process: the same rows
                shutil.rmtree(partial, ignore_errors=True)
        return Dataset.load_from_disk(str(folder))
