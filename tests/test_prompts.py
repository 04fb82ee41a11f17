"""The self-play prompt set: built-in generator, JSONL files, selection, sources."""

from __future__ import annotations

import collections
import itertools
import json
import re
from pathlib import Path

import pytest

from infra.records import Constraint, Prompt
from infra.settings import PromptsConfig
from tasks.constraints import check_constraints, constraint_score, ensure_punkt, known_constraints
from tasks.prompts import (
    CONSTRAINT_COUNTS,
    FORMS,
    IFEVAL_WEIGHTS,
    PROMPT_SOURCES,
    TOPICS,
    UNCONSTRAINED_FILE,
    WEIGHTS,
    PromptFileError,
    builtin_prompts,
    compatible,
    default_unseen_types,
    describe,
    fresh_rounds,
    load_prompt_file,
    load_prompts,
    round_prompts,
    select_prompts,
    unconstrained_prompts,
    unseen_types,
)
from tests.answer_builder import build_answer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    ensure_punkt(path)
    return path


@pytest.fixture(scope="module")
def builtin(data_dir):
    return builtin_prompts(seed=0, eval_topic_share=0.25)




def test_builtin_is_big_enough(builtin):
    assert len({t[0] for t in TOPICS}) == len(TOPICS) >= 60
    assert sum(p.split == "train" for p in builtin) >= 600
    assert sum(p.split == "eval" for p in builtin) >= 150


def test_builtin_is_deterministic():
    assert builtin_prompts(0, 0.25) == builtin_prompts(0, 0.25)
    assert builtin_prompts(0, 0.25) != builtin_prompts(1, 0.25)


def test_builtin_ids_and_texts_are_unique(builtin):
    assert len({p.id for p in builtin}) == len(builtin)
    assert len({p.text for p in builtin}) == len(builtin)


def test_train_and_eval_share_no_prompt_and_no_topic(builtin):
    train = [p for p in builtin if p.split == "train"]
    held_out = [p for p in builtin if p.split == "eval"]
    assert not {p.topic for p in train} & {p.topic for p in held_out}
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert not {p.id for p in train} & {p.id for p in held_out}


def eval_topic_count(prompts: list[Prompt]) -> int:
    return len({p.topic for p in prompts if p.split == "eval"})


def test_eval_topic_share_sets_the_split():
    assert eval_topic_count(builtin_prompts(0, 0.25)) == round(0.25 * len(TOPICS))
    assert eval_topic_count(builtin_prompts(0, 0.1)) == round(0.1 * len(TOPICS))




def test_every_constraint_is_known_and_builds(builtin):
    known = set(known_constraints())
    for prompt in builtin:
        assert 1 <= len(prompt.constraints) <= 4
        assert {c.id for c in prompt.constraints} <= known
        assert check_constraints("Some answer.", prompt.constraints)  # builds every checker


def test_constraint_pairs_are_compatible_and_respect_ifeval_conflicts(builtin):
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    conflicts = conflict_make({k: set(v) for k, v in INSTRUCTION_CONFLICTS.items()})
    for prompt in builtin:
        for a, b in itertools.combinations([c.id for c in prompt.constraints], 2):
            assert compatible(a, b), prompt.text
            assert b not in conflicts.get(a, ()), prompt.text


def test_prompt_text_states_every_constraint_with_its_values(builtin):
    for prompt in builtin:
        for c in prompt.constraints:
            assert describe(c) in prompt.text
            for value in c.kwargs.values():
                for item in value if isinstance(value, list) else [value]:
                    if item not in ("less than", "at least"):
                        assert str(item) in prompt.text, (c, prompt.text)
            if c.kwargs.get("relation") == "less than":
                assert "fewer than" in prompt.text


def test_forbidden_words_never_appear_in_the_task(builtin):
    for prompt in builtin:
        task_words = set(re.findall(r"\w+", prompt.text.split(".")[0].lower()))
        for c in prompt.constraints:
            for word in c.kwargs.get("forbidden_words", []):
                assert word not in task_words, prompt.text
    for slug, subject, keywords, tempting in TOPICS:
        assert not set(tempting) & set(re.findall(r"\w+", subject.lower())), slug
        assert not set(tempting) & set(keywords), slug


def test_every_builtin_prompt_is_satisfiable(builtin):
    """A hand-built answer meets every constraint of every built-in prompt (one to four, of both families)."""
    failures = [(p.text, build_answer(p)) for p in builtin if not all(check_constraints(build_answer(p), p.constraints))]
    assert not failures, failures[:3]


def first_prompt_with(prompts: list[Prompt], ids: set[str]) -> tuple[Prompt, dict[str, dict]]:
    """The first prompt carrying exactly these constraint ids, with kwargs by id."""
    prompt = next(p for p in prompts if {c.id for c in p.constraints} == ids)
    return prompt, {c.id: c.kwargs for c in prompt.constraints}


def test_hand_written_answers_score_as_expected(builtin):
    prompt, kw = first_prompt_with(builtin, {"change_case:english_lowercase", "detectable_format:title"})
    assert constraint_score("<<bin day>>\nthe bins now go out on thursday morning before seven.", prompt.constraints) == 1
    assert constraint_score("<<Bin day>>\nThe bins now go out on Thursday morning.", prompt.constraints) == 0.5

    prompt, kw = first_prompt_with(builtin, {"punctuation:no_comma", "startend:end_checker"})
    phrase = kw["startend:end_checker"]["end_phrase"]
    assert constraint_score(f"Shift early and keep pedalling. {phrase}", prompt.constraints) == 1.0
    assert constraint_score(f"Shift early, and keep pedalling. {phrase}", prompt.constraints) == 0.5
    assert constraint_score(f"{phrase} Shift early, then pedal.", prompt.constraints) == 0.0

    prompt, kw = first_prompt_with(builtin, {"keywords:forbidden_words", "detectable_format:number_bullet_lists"})
    (word,) = kw["keywords:forbidden_words"]["forbidden_words"]
    n_bullets = kw["detectable_format:number_bullet_lists"]["num_bullets"]
    bullets = "\n".join(f"* Point number {i}." for i in range(n_bullets))
    assert constraint_score(bullets, prompt.constraints) == 1.0
    assert constraint_score(f"{bullets}\n* One more about {word}.", prompt.constraints) == 0.0


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_reads_fields_skips_blank_lines_and_defaults_ids(tmp_path, data_dir):
    path = write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"id": "a", "text": "Say hi.", "topic": "greetings", "split": "eval"}),
            "",
            json.dumps(
                {
                    "text": "Describe tea in lowercase.",
                    "topic": "tea",
                    "constraints": [{"id": "change_case:english_lowercase"}],
                }
            ),
            json.dumps({"text": "Say bye.", "topic": "greetings"}),
        ],
    )
    prompts = load_prompt_file(path)
    assert [p.text for p in prompts] == ["Say hi.", "Describe tea in lowercase.", "Say bye."]
    assert prompts[0].id == "a"
    assert prompts[1].constraints == [Constraint(id="change_case:english_lowercase")]
    assert prompts[1].id.startswith("p-") and prompts[1].id == load_prompt_file(path)[1].id
    assert prompts[2].split == "eval"  # follows its topic's explicit split


def test_jsonl_split_by_topic_hash_keeps_topics_whole(tmp_path, data_dir):
    lines = [json.dumps({"text": f"Prompt {i} about topic {i % 20}.", "topic": f"t{i % 20}"}) for i in range(200)]
    prompts = load_prompt_file(write_lines(tmp_path / "p.jsonl", lines), eval_share=0.3)
    splits = {}
    for p in prompts:
        splits.setdefault(p.topic, set()).add(p.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {"train", "eval"} == {p.split for p in prompts}
    assert prompts == load_prompt_file(tmp_path / "p.jsonl", eval_share=0.3)


BAD_LINES = [
    ("{not json", "not valid JSON"),
    (json.dumps({"topic": "x"}), '"text" is required'),
    (json.dumps({"text": "   "}), '"text" is required'),
    (json.dumps({"text": "Hi.", "constraints": [{"id": "no_such:constraint"}]}), "no_such:constraint"),
    (json.dumps({"text": "Hi.", "split": "test"}), '"split" must be'),
    (json.dumps({"text": "Hi.", "topic": 3}), '"topic" must be a string'),
    (json.dumps({"text": "Hi.", "constraints": {"id": "punctuation:no_comma"}}), "must be a list"),
    (json.dumps({"text": "Hi.", "constraints": [{"id": "length_constraints:number_words"}]}), "num_words"),
    (json.dumps({"text": "Hi.", "colour": "red"}), "unknown keys"),
    (json.dumps(["Hi."]), "expected a JSON object"),
    (json.dumps({"id": "a", "text": "Again."}), "duplicate id 'a'"),
]


@pytest.mark.parametrize("line, problem", BAD_LINES)
def test_malformed_line_names_file_line_and_problem(tmp_path, data_dir, line, problem):
    path = write_lines(
        tmp_path / "broken.jsonl",
        [json.dumps({"id": "a", "text": "Fine."}), json.dumps({"text": "Also fine."}), line],
    )
    with pytest.raises(PromptFileError) as err:
        load_prompt_file(path)
    message = str(err.value)
    assert "broken.jsonl" in message and "line 3" in message and problem in message
    assert isinstance(err.value, ValueError)


def test_topic_in_both_splits_is_an_error(tmp_path, data_dir):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"text": "A.", "topic": "t", "split": "train"}),
            json.dumps({"text": "B.", "topic": "t", "split": "eval"}),
        ],
    )
    with pytest.raises(PromptFileError, match="line 2.*topic 't'"):
        load_prompt_file(path)


def test_missing_or_empty_file_is_an_error(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read"):
        load_prompt_file(tmp_path / "absent.jsonl")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompt_file(write_lines(tmp_path / "empty.jsonl", ["", "  "]))




def test_select_prompts_is_deterministic_and_stays_in_split(builtin):
    first = select_prompts(builtin, "train", 96, seed=3)
    assert first == select_prompts(list(reversed(builtin)), "train", 96, seed=3)
    assert len(first) == 96 and len({p.id for p in first}) == 96
    assert all(p.split == "train" for p in first)
    assert first != select_prompts(builtin, "train", 96, seed=4)
    n_eval = sum(p.split == "eval" for p in builtin)
    assert len(select_prompts(builtin, "eval", 10_000, seed=0)) == n_eval


def test_select_from_empty_split_raises():
    with pytest.raises(ValueError, match="eval"):
        select_prompts([Prompt(id="a", text="t")], "eval", 5, seed=0)


def test_load_prompts_through_the_registry(tmp_path, data_dir):
    assert {"builtin", "jsonl"} <= set(PROMPT_SOURCES.names())
    assert load_prompts(PromptsConfig(seed=0), data_dir) == builtin_prompts(0, 0.25)
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": "Say hi.", "split": "eval"})])
    config = PromptsConfig(source="jsonl", path=path)
    assert [p.text for p in load_prompts(config, data_dir)] == ["Say hi."]
    with pytest.raises(KeyError, match="builtin"):
        load_prompts(PromptsConfig(source="nope"), data_dir)


# --- unseen constraint types ------------------------------------------------------------------


def carries(prompt: Prompt, kinds) -> bool:
    return any(c.id in kinds for c in prompt.constraints)


def test_default_unseen_types_are_a_seeded_quarter_of_the_builtin_ifeval_types():
    unseen = default_unseen_types(0)
    assert len(unseen) == round(len(IFEVAL_WEIGHTS) / 4) == 4 and set(unseen) <= set(IFEVAL_WEIGHTS)
    # Flywheel's own types are training types under every seed.
    assert not any(k.startswith("flywheel:") for seed in range(20) for k in default_unseen_types(seed))
    assert default_unseen_types(0) == unseen and default_unseen_types(1) != unseen
    assert unseen_types(PromptsConfig()) == frozenset(unseen)
    assert unseen_types(PromptsConfig(unseen_types=[])) == frozenset()
    # A prompt file holds out nothing unless asked.
    assert unseen_types(PromptsConfig(source="jsonl", path=Path("p.jsonl"))) == frozenset()


def test_no_training_prompt_of_any_round_carries_an_unseen_type(data_dir):
    config = PromptsConfig()
    unseen = unseen_types(config)
    pool = load_prompts(config, data_dir)
    assert not [p.text for p in pool if p.split == "train" and carries(p, unseen)]
    for round_index in range(1, 6):
        train, held_out = round_prompts(config, data_dir, round_index)
        assert not [p.text for p in train if carries(p, unseen)], round_index
        # About half the held-out set carries one, so its satisfaction rate is measurable.
        share = sum(carries(p, unseen) for p in held_out) / len(held_out)
        assert 0.35 <= share <= 0.7, share
        assert {c.id for p in held_out for c in p.constraints} >= unseen - {"detectable_content:number_placeholders"}
    # Every type the generator draws still appears somewhere, seen ones in training.
    assert {c.id for p in pool if p.split == "train" for c in p.constraints} == set(WEIGHTS) - unseen


def test_flywheel_types_are_trained_on_and_a_configured_one_stays_out_of_training(data_dir):
    config = PromptsConfig()
    train_types = {c.id for p in load_prompts(config, data_dir) if p.split == "train" for c in p.constraints}
    assert {k for k in WEIGHTS if k.startswith("flywheel:")} <= train_types
    assert len([k for k in WEIGHTS if k.startswith("flywheel:")]) >= 15
    chosen = ["flywheel:last_word", "punctuation:no_comma"]
    config = PromptsConfig(unseen_types=chosen)
    for round_index in range(1, 6):
        train, held_out = round_prompts(config, data_dir, round_index)
        assert not [p.text for p in train if carries(p, chosen)], round_index
        assert any(carries(p, ["flywheel:last_word"]) for p in held_out)


def test_each_round_trains_on_fresh_prompts_and_evaluates_on_the_same_ones(data_dir):
    config = PromptsConfig()
    rounds = [round_prompts(config, data_dir, r) for r in range(1, 6)]
    texts = [p.text for train, _ in rounds for p in train]
    assert len(texts) == len(set(texts)) == 5 * config.n_train
    assert all(held_out == rounds[0][1] for _, held_out in rounds)
    assert rounds[0] == round_prompts(config, data_dir, 1)  # the same seed deals the same prompts
    assert rounds[0][0] != round_prompts(PromptsConfig(seed=1), data_dir, 1)[0]


def test_the_builtin_pool_holds_the_defaults_fresh_for_many_rounds(builtin, data_dir):
    """The proof (configs/proof.yaml) runs the defaults: n_train prompts a round, n_eval held out."""
    defaults = PromptsConfig()
    n_train_pool = sum(p.split == "train" for p in load_prompts(defaults, data_dir))
    assert fresh_rounds(n_train_pool, defaults.n_train) >= 10  # 5 rounds need 640 of ~1850
    assert sum(p.split == "eval" for p in builtin) >= 4 * defaults.n_eval


def test_a_spent_pool_is_dealt_again_with_a_warning(caplog):
    prompts = [Prompt(id=f"p{i}", text=f"Prompt {i}.") for i in range(10)]
    from tasks.prompts import training_slice

    first, second = training_slice(prompts, 4, 0, 1), training_slice(prompts, 4, 0, 2)
    assert not {p.id for p in first} & {p.id for p in second}
    with caplog.at_level("WARNING", logger="flywheel"):
        third = training_slice(prompts, 4, 0, 3)  # 10 prompts hold two rounds of 4
    assert len(third) == 4 and "reusing them" in caplog.text


def test_prompts_carry_one_to_four_constraints_in_the_drawn_shares(builtin):
    counts = collections.Counter(len(p.constraints) for p in builtin)
    assert set(counts) == set(CONSTRAINT_COUNTS) == {1, 2, 3, 4}
    total = sum(CONSTRAINT_COUNTS.values())
    for n, weight in CONSTRAINT_COUNTS.items():
        # Drawn shares; a few fall short when no compatible type is left for the last slot.
        assert abs(counts[n] / len(builtin) - weight / total) < 0.08, (n, counts)


def test_unseen_led_prompts_are_held_out_unseen_only_and_leave_the_rest_of_the_pool_alone(builtin, data_dir):
    unseen = set(default_unseen_types(0))
    extended = builtin_prompts(0, 0.25, None, unseen_led_per_topic=8)
    added = [p for p in extended if p not in builtin]
    assert [p for p in extended if p in builtin] == builtin  # same prompts, same order, same ids
    n_topics = len({p.topic for p in builtin if p.split == "eval"})
    assert 0.9 * 8 * n_topics <= len(added) <= 8 * n_topics  # a few duplicate texts are dropped
    assert all(p.split == "eval" and {c.id for c in p.constraints} <= unseen for p in added)
    # The lead type is taken in turn, so every unseen type is in a good share of them, and none
    # dominates the way no_comma (the largest draw weight) does among the mixed held-out prompts.
    carried = collections.Counter(c.id for p in added for c in p.constraints)
    assert set(carried) == unseen and min(carried.values()) >= 0.2 * len(added), carried
    mixed = collections.Counter(c.id for p in builtin if p.split == "eval" for c in p.constraints if c.id in unseen)
    assert max(carried.values()) / sum(carried.values()) < max(mixed.values()) / sum(mixed.values()) - 0.15, (carried, mixed)
    assert sum(len(p.constraints) for p in added) / len(added) > 1.8  # each adds about two unseen constraints
    assert not [p for p in added if p.split == "train"]
    # Placeholders are only asked of letter forms, which have [name]-style gaps to fill.
    letters = tuple(form.split("{")[0] for form, letter in FORMS if letter)
    assert all(p.text.startswith(letters) for p in added if carries(p, ["detectable_content:number_placeholders"]))
    # Through the config: training prompts are dealt exactly as without them.
    config = PromptsConfig(unseen_led_per_topic=8, n_eval=len([p for p in extended if p.split == "eval"]))
    for round_index in (1, 2):
        assert round_prompts(config, data_dir, round_index)[0] == round_prompts(PromptsConfig(), data_dir, round_index)[0]


def test_the_proof_config_holds_enough_unseen_constraints_for_a_4_point_interval(data_dir):
    """configs/proof.yaml's claim: the held-out set is every held-out prompt of the pool, and its
    unseen constraints are enough for +-4 points at the flip share measured in round 1 (~0.27)."""
    from infra.settings import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "proof.yaml").prompts
    _, held_out = round_prompts(config, data_dir, 1)
    unseen = unseen_types(config)
    assert len(held_out) == config.n_eval == sum(p.split == "eval" for p in load_prompts(config, data_dir))
    n_unseen = sum(c.id in unseen for p in held_out for c in p.constraints)
    assert n_unseen >= 650 and 1.96 * (0.27 / n_unseen) ** 0.5 <= 0.04, n_unseen


def test_unseen_types_are_configurable(data_dir):
    chosen = ["detectable_format:title", "startend:end_checker"]
    prompts = builtin_prompts(0, 0.25, chosen)
    assert not [p for p in prompts if p.split == "train" and carries(p, chosen)]
    assert sum(carries(p, chosen) for p in prompts if p.split == "eval") > 100
    # [] turns the split off: training prompts draw every type.
    everything = builtin_prompts(0, 0.25, [])
    assert {c.id for p in everything if p.split == "train" for c in p.constraints} == set(WEIGHTS)
    with pytest.raises(ValueError, match="not drawn by the built-in generator"):
        builtin_prompts(0, 0.25, ["change_case:capital_word_frequency"])
    with pytest.raises(ValueError, match="nothing left to train on"):
        builtin_prompts(0, 0.25, list(WEIGHTS))
    with pytest.raises(ValueError, match="unknown constraint ids"):
        load_prompts(PromptsConfig(unseen_types=["no_such:type"]), data_dir)


def test_a_prompt_file_keeps_unseen_types_out_of_training(tmp_path, data_dir, caplog):
    lowercase = [{"id": "change_case:english_lowercase"}]
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"id": "t1", "text": "Describe tea in lowercase.", "topic": "tea", "split": "train", "constraints": lowercase}),
        json.dumps({"id": "t2", "text": "Describe tea.", "topic": "tea", "split": "train"}),
        json.dumps({"id": "e1", "text": "Describe coffee in lowercase.", "topic": "coffee", "split": "eval", "constraints": lowercase}),
    ])
    config = PromptsConfig(source="jsonl", path=path, unseen_types=["change_case:english_lowercase"])
    with caplog.at_level("WARNING", logger="flywheel"):
        assert [p.id for p in load_prompts(config, data_dir)] == ["t2", "e1"]
    assert "1 training prompts left out" in caplog.text
    # Without the setting, a prompt file's own split stands.
    assert len(load_prompts(PromptsConfig(source="jsonl", path=path), data_dir)) == 3


# --- unconstrained prompts --------------------------------------------------------------------


def test_the_unconstrained_prompts_load_and_share_nothing_with_the_builtin_set(builtin):
    everyday = load_prompt_file(UNCONSTRAINED_FILE)
    assert len(everyday) >= 60
    assert all(not p.constraints and p.split == "eval" for p in everyday)
    assert len({p.id for p in everyday}) == len({p.text for p in everyday}) == len(everyday)
    assert not {p.id for p in everyday} & {p.id for p in builtin}
    assert not {p.text for p in everyday} & {p.text for p in builtin}
    assert not {p.topic for p in everyday} & {p.topic for p in builtin}
    # Written apart from the templates: no templated task, no constraint's wording.
    templated = {form.format(subject=t[1]) for form, _ in FORMS for t in TOPICS}
    descriptions = {describe(c) for p in builtin for c in p.constraints}
    for p in everyday:
        assert p.text not in templated and not any(d in p.text for d in descriptions), p.text


def test_unconstrained_prompts_are_a_fixed_sample():
    assert unconstrained_prompts(0, seed=0) == []
    sample = unconstrained_prompts(16, seed=0)
    assert len(sample) == 16 and sample == unconstrained_prompts(16, seed=0)
    assert len(unconstrained_prompts(10_000, seed=0)) == len(load_prompt_file(UNCONSTRAINED_FILE))


EXAMPLE_PROMPTS = Path(__file__).parent.parent / "configs" / "example-prompts.jsonl"


def test_the_example_prompt_file_parses_and_states_every_constraint(data_dir):
    """configs/example-prompts.jsonl, which configs/example-custom.yaml reads: 16 train and 8 eval
    prompts sharing no topic, every one with constraints that build and that its text states."""
    prompts = load_prompts(PromptsConfig(source="jsonl", path=EXAMPLE_PROMPTS, unseen_types=[]), data_dir)
    assert len(prompts) == 24
    assert sum(p.split == "train" for p in prompts) == 16 and sum(p.split == "eval" for p in prompts) == 8
    assert not {p.topic for p in prompts if p.split == "train"} & {p.topic for p in prompts if p.split == "eval"}
    assert all(p.constraints and all(describe(c) in p.text for c in p.constraints) for p in prompts)


def test_numbered_prompts_carry_their_file_lines(tmp_path):
    from tasks.prompts import load_numbered_prompts

    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "One."}\n\n{"text": "Two."}\n')
    assert [(n, p.text) for n, p in load_numbered_prompts(path)] == [(1, "One."), (3, "Two.")]
    assert load_prompt_file(path) == [p for _, p in load_numbered_prompts(path)]
