"""`prompts`: where the self-play and held-out prompts come from."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from infra.settings.base import Section


class PromptsConfig(Section):
    source: str = Field(
        "builtin",
        description="'builtin' (templated IFEval-style prompts) or 'jsonl' (read from `path`).",
    )
    path: Path | None = Field(
        None,
        description="JSONL prompt file for source 'jsonl': one object per line with 'text' and optional "
        "'id', 'topic', 'split' ('train'/'eval') and 'constraints' ([{id, kwargs}]).",
    )
    n_train: int = Field(
        128, ge=1, description="Training prompts per round, none of them trained on by an earlier round (the pool, "
        "shuffled by prompts.seed, is dealt out a round at a time; the built-in one holds ~1850, 14 rounds of 128, "
        "after which the deal starts over and says so in the log). Each gives "
        "generate.n_candidates candidates and at most one pair, so a round trains on at most this many pairs (plus "
        "train.replay_share of earlier ones). The pool must hold this many: checked when the config loads.",
    )
    n_eval: int = Field(
        128, ge=1,
        description="Held-out prompts for the pairwise eval (fixed across rounds; the built-in pool holds ~620). "
        "Sized for promotion.win_rate_bound 'lower': a per-prompt score (win 1, tie 0.5, loss 0) has a standard "
        "deviation of at most 0.5, so the 95% interval reaches at most 1.96 x 0.5 / sqrt(n) below the win rate: "
        "0.087 at 128 prompts (0.071 at 192, 0.141 at 48), less with ties. A challenger winning ~59% without "
        "ties, or ~56% with half the pairs tied, clears a 0.5 bar at 128.",
    )
    eval_topic_share: float = Field(
        0.25, gt=0, lt=1, description="Share of built-in topics reserved for the held-out set."
    )
    unseen_types: list[str] | None = Field(
        None,
        description="Constraint ids (IFEval's or `flywheel:`) held out of training to measure generalisation: no training prompt "
        "carries one, and the eval reports satisfaction on them apart from the others. None: for the built-in "
        "source, a quarter of its 15 IFEval types drawn by `seed` (tasks/prompts.py::default_unseen_types; Flywheel's own "
        "`flywheel:` types are always trained on, though a list here may name them; about half "
        "the held-out prompts then carry one); for a prompt file, none. For a prompt file, training prompts "
        "carrying a listed type are left out of the training pool (the count is logged); its eval prompts keep them. "
        "[] turns the split off.",
    )
    unseen_led_per_topic: int = Field(
        0, ge=0,
        description="Built-in source: this many more held-out prompts per held-out topic (26 topics by default), each made "
        "of unseen types only (one to four, the first taken from them in turn), to narrow the unseen-type interval: the "
        "mixed held-out prompts carry ~0.6 unseen constraints each, half of them one type. Add them to the eval with "
        "`n_eval` (all of them: n_eval >= the held-out pool). Training prompts are the same with or without them. "
        "configs/proof.yaml uses 8: 829 held-out prompts for seed 0, 844 unseen constraints in them (377 without).",
    )
    seed: int = Field(0, description="Seed of the built-in prompt generator, of the split and of the default unseen types.")

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> "PromptsConfig":
        if self.source == "jsonl" and self.path is None:
            raise ValueError("prompts.path is required when prompts.source is 'jsonl'")
        return self
