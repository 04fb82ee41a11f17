"""The verifier judge's tie share on rule-made answers: how often two candidates for one prompt tie.

No model answers are generated here (too slow on a CPU). Each of N built-in training prompts
(seed 0) gets k rule-made answers, written two ways:

* ``attempts``: tests/answer_builder.py's answer told to meet each of the prompt's constraints
  with probability q (independently, per answer; its filler varies), as a model that tries
  each instruction and lands some; q = 0.4 is about the base model's satisfaction in the proof.
* ``form-blind``: an answer about the topic whose forms are drawn without reading the prompt
  (case; a <<title>>, a heading, an opening phrase; bullets of several markers, numbered steps,
  paragraphs or sections; some of the topic's keywords in any order; a parenthetical, a number,
  commas, bold, an exclamation; an end phrase, a question, a sign-off, a postscript or nothing):
  it meets constraints only by chance.

The verifier judge (failure-mode penalties included) compares every pair of a prompt's answers;
``all_or_nothing`` scores 1 only when every constraint is met, for the share that partial credit
itself removes. Rule-made answers are not a model's: the figures compare prompt sets and scorings
under one answerer, not the tie share a round will see.

Usage:  python benchmarks/tie_share.py [N_PROMPTS] [K] [--save LABEL]   (default 256 prompts, 6 answers each;
--save writes benchmarks/results/tie-share-<machine kind>-none-<date>-<LABEL>.json, benchmarks/result_meta.py)
Runs against whichever ``tasks`` is on the path, so ``PYTHONPATH=<older checkout> python
<this checkout>/benchmarks/tie_share.py`` measures an older prompt generator with the same answerers.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys
from pathlib import Path

from infra.records import Prompt
from infra.settings import JudgeConfig
from tasks.constraints import check_constraints
from tasks.judge import VerifierJudge
from tasks.prompts import END_PHRASES, TOPICS, builtin_prompts, select_prompts

FILLER = ("Start with the basics and go one step at a time.", "It helps to plan a little ahead.",
          "Most people get the hang of it quickly.", "Check again after a day or two.",
          "Ask someone who has done it before.", "Small changes add up over a few weeks.")
OPENINGS = ("Here is the short version:", "Good question.", "Let me explain.", "Quick answer:")
SIGN_OFFS = ("Warm regards from Sam", "Take care from Alex", "Best wishes from Tom")


def _sentences(rng: random.Random, keywords: tuple[str, ...]) -> list[str]:
    """A few sentences, some carrying the topic's keywords in a random order."""
    used = rng.sample(keywords, rng.randint(0, len(keywords)))
    sentences = [f"Think about the {w} first." if rng.random() < 0.5 else f"The {w} matters more than you think."
                 for w in used]
    sentences += rng.sample(FILLER, rng.randint(1, 5))
    rng.shuffle(sentences)
    if rng.random() < 0.4:
        sentences.insert(rng.randrange(len(sentences) + 1), f"Give it {rng.randint(1, 40)} minutes.")
    if rng.random() < 0.3:
        sentences.append("Keep it simple (and do not rush it).")
    if rng.random() < 0.3:
        sentences[0] = sentences[0].replace(" first", ", first")
    if rng.random() < 0.2:
        sentences.append("You can do it!")
    if used and rng.random() < 0.3:
        sentences.append(f"Remember the **{used[0]}**.")
    return sentences


def _layout(rng: random.Random, sentences: list[str]) -> str:
    form = rng.choice(("plain", "plain", "bullets", "dashes", "numbered", "paragraphs", "sections"))
    if form == "bullets":
        return "\n".join(f"* {s}" for s in sentences)
    if form == "dashes":
        return "\n".join(f"- {s}" for s in sentences)
    if form == "numbered":
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    if form in ("paragraphs", "sections"):
        half = max(1, len(sentences) // 2)
        divider = "\n\n***\n\n" if form == "paragraphs" else "\n~~~\n"
        return divider.join([" ".join(sentences[:half]), " ".join(sentences[half:]) or "That is it."])
    return " ".join(sentences)


def rule_made_answer(rng: random.Random, keywords: tuple[str, ...]) -> str:
    body = _layout(rng, _sentences(rng, keywords))
    if rng.random() < 0.25:
        body = f"{rng.choice(OPENINGS)} {body}"
    if rng.random() < 0.2:
        body = rng.choice(("<<Some Notes>>\n", "Some Useful Notes\n")) + body
    close = rng.choice(("", "", "end", "question", "sign-off", "postscript"))
    body += {"": "", "end": " " + rng.choice(END_PHRASES), "question": " Want to give it a try?",
             "sign-off": "\n" + rng.choice(SIGN_OFFS), "postscript": "\n\nP.S. Good luck."}[close]
    case = rng.choices(("as is", "lower", "upper", "quoted"), weights=(6, 2, 1, 1))[0]
    return {"as is": body, "lower": body.lower(), "upper": body.upper(), "quoted": f'"{body}"'}[case]


def all_or_nothing(judge: VerifierJudge, prompt: Prompt, answer: str) -> float:
    from tasks.failure_modes import detect_failure_modes

    modes = [m for m, found in detect_failure_modes(answer, prompt, judge.verbose_words).items() if found]
    return float(all(check_constraints(answer, prompt.constraints))) - sum(judge.penalty(m) for m in modes)


def _answer_builder():
    """tests/answer_builder.py of this checkout, loaded by path (an older checkout on the path has none)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "answer_builder.py"
    spec = importlib.util.spec_from_file_location("flywheel_answer_builder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_answer


def attempts(q: float):
    build = _answer_builder()

    def answer(rng: random.Random, prompt: Prompt) -> str:
        return build(prompt, meet={c.id for c in prompt.constraints if rng.random() < q}, rng=rng)

    return answer


def form_blind(rng: random.Random, prompt: Prompt) -> str:
    return rule_made_answer(rng, {t[0]: t[2] for t in TOPICS}[prompt.topic])


def tie_shares(prompts: list[Prompt], answerer, k: int, judge: VerifierJudge) -> dict[str, float]:
    ties = strict_ties = pairs = met = checked = 0
    for prompt in prompts:
        rng = random.Random(f"tie-share-{prompt.id}")
        answers = [answerer(rng, prompt) for _ in range(k)]
        strict = [all_or_nothing(judge, prompt, a) for a in answers]
        for answer in answers:
            verdicts = check_constraints(answer, prompt.constraints)
            met, checked = met + sum(verdicts), checked + len(verdicts)
        for i, j in itertools.combinations(range(k), 2):
            pairs += 1
            ties += judge.compare(prompt, answers[i], answers[j]).verdict == "tie"
            strict_ties += abs(strict[i] - strict[j]) <= judge.config.tie_margin
    return {"constraints_met": round(met / checked, 3), "tie_share": round(ties / pairs, 3),
            "tie_share_all_or_nothing": round(strict_ties / pairs, 3)}


def measure(n_prompts: int, k: int) -> dict[str, object]:
    judge = VerifierJudge(JudgeConfig())
    prompts = select_prompts(builtin_prompts(0, 0.25), "train", n_prompts, seed=0)
    answerers = {"attempts q=0.4": attempts(0.4), "attempts q=0.6": attempts(0.6), "form-blind": form_blind}
    return {"prompts": len(prompts), "answers_per_prompt": k, "pairs": len(prompts) * k * (k - 1) // 2,
            "constraints_per_prompt": round(sum(len(p.constraints) for p in prompts) / len(prompts), 2),
            **{name: tie_shares(prompts, answerer, k, judge) for name, answerer in answerers.items()}}


if __name__ == "__main__":
    label = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else None
    args = [int(a) for a in sys.argv[1:] if a.isdigit()][:2]
    results = measure(*(args + [256, 6][len(args):]))
    print(json.dumps(results, indent=1))
    if label:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.result_meta import build_meta, write_result

        print(write_result(build_meta(__file__, "none", label=label, args=sys.argv[1:]), results))
