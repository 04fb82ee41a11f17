from datasets import Dataset

from infra.records import Candidate, Judgment, Prompt
from infra.settings import FilterConfig
from tasks.filter import cap_length_bias, filter_pairs, validate_pairs
from tasks.training.objectives import to_trl_rows

PROMPTS = [Prompt(id=f"p{i}", text=f"prompt {i}") for i in range(5)]


def cand(pid, index, text, truncated=False):
    return Candidate(prompt_id=pid, index=index, text=text, temperature=0.7, n_tokens=len(text.split()), truncated=truncated)


def judg(pid, a, b, verdict, sa, sb):
    return Judgment(prompt_id=pid, index_a=a, index_b=b, verdict=verdict, score_a=sa, score_b=sb)


def test_drops_each_kind_and_keeps_most_decisive():
    candidates = [
        cand("p0", 0, "A good clear answer about apples."), cand("p0", 1, "Bananas are yellow, unlike this."),
        cand("p0", 2, "Something wholly unrelated and odd here."),
        cand("p1", 0, "same text exactly"), cand("p1", 1, "same text exactly"),
        cand("p2", 0, "ok"), cand("p2", 1, "A longer answer that is fine."),
        cand("p3", 0, "The answer is forty two, friend."), cand("p3", 1, "The answer is forty two, friend!"),
        cand("p4", 0, "One response to consider now."), cand("p4", 1, "Another response entirely, alas."),
    ]
    judgments = [
        judg("p0", 0, 1, "A", 1.0, 0.5), judg("p0", 0, 2, "A", 1.0, 0.0), judg("p0", 1, 2, "A", 0.5, 0.0),
        judg("p1", 0, 1, "A", 1.0, 0.0),
        judg("p2", 0, 1, "B", 0.0, 1.0),
        judg("p3", 0, 1, "A", 1.0, 0.0),
        judg("p4", 0, 1, "tie", 0.5, 0.5),
    ]
    pairs, report = filter_pairs(PROMPTS, candidates, judgments, FilterConfig())
    assert [(p.prompt_id, p.chosen, p.rejected) for p in pairs] == [
        ("p0", "A good clear answer about apples.", "Something wholly unrelated and odd here.")
    ]
    assert report.dropped == {"identical": 1, "near_empty": 1, "too_similar": 1, "tie": 1, "not_most_decisive": 2}
    assert report.n_kept == 1 and report.validation["duplicate_prompts"] == 0


def test_truncated_candidates_are_never_chosen():
    """A batch with known EOS flags: a cut-off winner never becomes "chosen"; the prompt keeps its next
    best pair, and a truncated response may still be the rejected one."""
    candidates = [
        cand("p0", 0, "The best scoring answer, but it was cut off mid", truncated=True),
        cand("p0", 1, "A complete answer that ended where it meant to."),
        cand("p0", 2, "A weak answer with nothing much in it at all."),
        cand("p1", 0, "Only a cut-off answer won this prompt and it stops", truncated=True),
        cand("p1", 1, "Its rival finished but scored lower than that one."),
        cand("p2", 0, "A finished answer beats the cut-off one here."),
        cand("p2", 1, "The other answer ran out of tokens before it could", truncated=True),
    ]
    judgments = [
        judg("p0", 0, 1, "A", 1.0, 0.5), judg("p0", 0, 2, "A", 1.0, 0.0), judg("p0", 1, 2, "A", 0.5, 0.0),
        judg("p1", 0, 1, "A", 1.0, 0.0),
        judg("p2", 0, 1, "A", 1.0, 0.0),
    ]
    pairs, report = filter_pairs(PROMPTS, candidates, judgments, FilterConfig())
    truncated = {c.text for c in candidates if c.truncated}
    assert not any(p.chosen in truncated for p in pairs)
    assert [(p.prompt_id, p.chosen, p.rejected) for p in pairs] == [
        ("p0", "A complete answer that ended where it meant to.", "A weak answer with nothing much in it at all."),
        ("p2", "A finished answer beats the cut-off one here.", "The other answer ran out of tokens before it could"),
    ]
    assert report.dropped == {"truncated_chosen": 3}
    _, kept = filter_pairs(PROMPTS, candidates, judgments, FilterConfig(drop_truncated_chosen=False))
    assert "truncated_chosen" not in kept.dropped and kept.n_kept == 3


def test_validation_figures():
    from infra.records import PreferencePair

    pairs = [
        PreferencePair(prompt_id="a", prompt="x", chosen="one two three four", rejected="one two", score_chosen=1, score_rejected=0, similarity=0.5),
        PreferencePair(prompt_id="b", prompt="y", chosen="one", rejected="one two three", score_chosen=1, score_rejected=0, similarity=0.05),
    ]
    v = validate_pairs(pairs)
    assert v["chosen_mean_words"] == 2.5 and v["rejected_mean_words"] == 2.5
    assert v["length_ratio"] == 1.0 and v["chosen_longer_share"] == 0.5
    assert v["very_different_share"] == 0.5 and v["similarity_mean"] == 0.275


def test_length_cap_drops_longest_chosen_first():
    from infra.records import PreferencePair

    mk = lambda i, c, r: PreferencePair(prompt_id=str(i), prompt="p", chosen="w " * c, rejected="w " * r, score_chosen=1, score_rejected=0, similarity=0.1)  # noqa: E731
    pairs = [mk(0, 40, 10), mk(1, 10, 10), mk(2, 12, 10)]
    kept, removed = cap_length_bias(pairs, 1.2)
    assert removed == 1 and {p.prompt_id for p in kept} == {"1", "2"}


def test_trl_rows_load_with_datasets(tmp_path):
    from infra.records import PreferencePair

    pairs = [PreferencePair(prompt_id="a", prompt="Hi?", chosen="Hello.", rejected="Go away.", score_chosen=1, score_rejected=0, similarity=0.1)]
    Dataset.from_list(to_trl_rows(pairs)).save_to_disk(str(tmp_path / "ds"))
    loaded = Dataset.load_from_disk(str(tmp_path / "ds"))
    assert loaded[0] == {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
