"""The verifier judge's tie share on rule-made answers: how often two candidates for one prompt tie.

No model answers are generated here (too slow on a CPU): each built-in training prompt gets
k rule-made answers about its topic whose forms are drawn at random and independently of what
the prompt asks (case; a <<title>>, a heading, an opening phrase; bullets of several markers,
numbered steps, paragraphs or sections; some of the topic's keywords, in any order and number;
a parenthetical, a number or none, commas or none, bold, an exclamation; and a close: an end
phrase, a question, a sign-off, a postscript or nothing). So an answer meets a prompt's
constraints by chance, about as often whichever generator wrote the prompt, and the tie share
reflects how finely the judge's score tells answers apart. The verifier judge (its failure-mode
penalties included) compares every pair; the "all or nothing" line scores 1 only when every
constraint is met, for the share that partial credit itself removes.

Usage:  python benchmarks/tie_share.py [N_PROMPTS] [K]   (default 256 prompts, 6 answers each)
Runs against whichever ``tasks.prompts`` is on the path, so the same script measures an older
checkout with ``PYTHONPATH=<old checkout>:<this checkout's benchmarks parent>``.
"""

from __future__ import annotations

import itertools
import json
import random
import sys

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


def measure(n_prompts: int, k: int) -> dict[str, float]:
    judge = VerifierJudge(JudgeConfig())
    keywords = {t[0]: t[2] for t in TOPICS}
    prompts = select_prompts(builtin_prompts(0, 0.25), "train", n_prompts, seed=0)
    ties = strict_ties = pairs = 0
    for prompt in prompts:
        rng = random.Random(f"tie-share-{prompt.topic}-{prompt.text[:40]}")
        answers = [rule_made_answer(rng, keywords[prompt.topic]) for _ in range(k)]
        strict = [all_or_nothing(judge, prompt, a) for a in answers]
        for i, j in itertools.combinations(range(k), 2):
            pairs += 1
            ties += judge.compare(prompt, answers[i], answers[j]).verdict == "tie"
            strict_ties += abs(strict[i] - strict[j]) <= judge.config.tie_margin
    per_prompt = sum(len(p.constraints) for p in prompts) / len(prompts)
    return {"prompts": len(prompts), "answers_per_prompt": k, "pairs": pairs, "constraints_per_prompt": round(per_prompt, 2),
            "tie_share": round(ties / pairs, 3), "tie_share_all_or_nothing": round(strict_ties / pairs, 3)}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(measure(*(args + [256, 6][len(args):]))))
