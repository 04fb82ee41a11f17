"""The small round the flow, resume, fault and stack tests run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra.settings import FlywheelConfig


def word_band_prompt_file(path: Path, text: str = "Write a note about topic {i}.", topic: str = "t{i}") -> Path:
    """Ten prompts (six train, four eval) whose constraints grade the tiny model's random text
    finely: its 16 tokens make 8-14 words, and each word-count threshold met adds a quarter
    point, so candidates rarely tie and the filter keeps pairs to train on."""
    thresholds = [{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": n}} for n in (10, 11, 12, 13)]
    lines = [
        {"id": f"p{i}", "text": text.format(i=i), "topic": topic.format(i=i), "split": "eval" if i >= 6 else "train", "constraints": thresholds}
        for i in range(10)
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def tiny_round_config(tiny_model: str, loop: str, prompt_file: Path, data_dir: Path, **sections: dict[str, Any]) -> FlywheelConfig:
    """A round of seconds on the tiny model; ``sections`` add to or replace fields per section."""
    data: dict[str, dict[str, Any]] = {
        "model": {"base": tiny_model, "dtype": "fp32"},
        "prompts": {"source": "jsonl", "path": str(prompt_file), "n_train": 6, "n_eval": 4},
        "generate": {"n_candidates": 4, "max_new_tokens": 16, "batch_size": 8},
        "judge": {"tie_margin": 0.0},
        # The random tiny model never says EOS: every candidate is truncated, and kept so a round still trains.
        "filter": {"min_chars": 1, "similarity_threshold": 0.99, "drop_truncated_chosen": False},
        "train": {"epochs": 1, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "max_length": 64},
        "evaluate": {"max_new_tokens": 16, "batch_size": 8, "bootstrap_samples": 200, "n_unconstrained": 4},
        # 4 held-out prompts cannot clear a bar with their interval's lower end: gate on the point estimate
        # (and no stricter bar after not_learning); a handful of pairs is no measure of over-optimization, so
        # only a wrong reference blocks.
        "promotion": {"win_rate_bound": "point", "blocking_alarms": ["reference_mismatch"], "not_learning_min_win_rate": None},
        "regression": {"tasks": ["arc_easy"], "limit": 4, "batch_size": 8},
        "storage": {"data_dir": str(data_dir)},
    }
    for name, fields in sections.items():
        data.setdefault(name, {}).update(fields)
    return FlywheelConfig.model_validate({"loop": loop, **data})
