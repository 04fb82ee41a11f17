"""Typed records that flow between stages.

Every stage takes and returns these; they are what the artifact store writes as
JSONL, one record a line. One vocabulary throughout: a *policy* generates
*candidates*; a *judge* compares two of them; the *filter* keeps *pairs* of
chosen and rejected responses; the *champion* is the policy every round starts
from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

R = TypeVar("R", bound=BaseModel)


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> int:
    """One record a line; returns how many."""
    n = 0
    with open(path, "w") as fh:
        for record in records:
            fh.write(record.model_dump_json() + "\n")
            n += 1
    return n


def read_jsonl(path: Path, model: type[R]) -> list[R]:
    with open(path) as fh:
        return [model.model_validate_json(line) for line in fh if line.strip()]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constraint(Record):
    """One machine-checkable instruction, named by its IFEval instruction id."""

    id: str = Field(description="IFEval instruction id, e.g. 'length_constraints:number_words'.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Arguments of the IFEval checker.")


class Prompt(Record):
    id: str
    text: str = Field(description="The user turn, constraints already written into it.")
    constraints: list[Constraint] = Field(default_factory=list)
    topic: str = Field(default="", description="What the prompt is about; train and eval share none.")
    split: Literal["train", "eval"] = "train"


class Candidate(Record):
    prompt_id: str
    index: int = Field(description="Which of the k samples for this prompt.")
    text: str
    temperature: float
    n_tokens: int
    truncated: bool = Field(False, description="Hit max_new_tokens without EOS: cut off mid-answer.")


Verdict = Literal["A", "B", "tie"]


class Judgment(Record):
    """A judge's comparison of two candidates for one prompt."""

    prompt_id: str
    index_a: int
    index_b: int
    verdict: Verdict
    score_a: float
    score_b: float
    reason: str = ""
    judge: str = ""
    consistent: bool | None = None  # both presentation orders agreed (judges that ask twice)


class PreferencePair(Record):
    """A kept pair, in TRL's conversational prompt/chosen/rejected shape when exported."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    score_chosen: float
    score_rejected: float
    similarity: float


class Completion(Record):
    """One evaluation response of one policy to one held-out prompt."""

    prompt_id: str
    policy: Literal["champion", "challenger"]
    text: str
    constraint_score: float = Field(description="Share of the prompt's constraints satisfied, 0..1.")
    truncated: bool = Field(False, description="Hit max_new_tokens without EOS: cut off mid-answer.")


class Champion(BaseModel):
    """Where a loop's policy lives: the champion, or any round's trained policy."""

    checkpoint: str  # the base policy's path or hub id, or the URI of a trained policy's merged checkpoint
    round: int  # 0 is the base policy
    train_key: str | None = None  # the train stage whose merged/ folder holds a trained policy
    model_version: str | None = None  # its version in the MLflow registry, once promoted
    promoted_at: str = ""
