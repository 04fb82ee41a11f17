"""Failure-mode detectors: each fires on a constructed example, none on clean answers."""

from __future__ import annotations

import pytest

from infra.records import Constraint, Prompt
from tasks.failure_modes import FAILURE_MODES, detect_failure_modes
from tasks.prompts import describe

CLEAN = [
    "Paris is the capital of France.",
    "* Check the tyre pressure.\n* Oil the chain.\n* Test both brakes.",
    "1. Mix the flour and salt.\n2. Add the water slowly.\n3. Knead for ten minutes.",
    "Hi Sam, I can't find a parking space most evenings. Could we agree on who parks where? Thanks, Alex.",
    '{"title": "Bike gears", "tips": ["shift early", "keep a steady cadence", "clean the chain"]}',
    "<<Tea>>\nwarm the pot first. use one spoon of leaves per cup and steep for four minutes.",
    "Bicycle gears let a rider choose how hard each pedal stroke feels. A small front ring and a large "
    "rear cog make climbing easier, because each turn of the pedals moves the bike a shorter distance. "
    "A large front ring with a small rear cog does the opposite: every stroke takes more effort but covers "
    "more ground, which suits flat roads and descents. Shift before a hill, not halfway up it, and ease "
    "off the pedals for a moment while the chain moves across.",
    "Dear [name],\n\nThe bins go out on Thursday morning from next week.\n\nP.S. Recycling goes out too.",
]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_answers_show_no_failure_mode(text):
    assert detect_failure_modes(text) == dict.fromkeys(FAILURE_MODES, False)


EXAMPLES = {
    "verbose": [" ".join(f"Point {i} adds one more detail to the answer." for i in range(25))],
    "sycophantic": [
        "Great question! Gears change how far you go per pedal turn.",
        "Oh, what a thoughtful question. Gears trade force for speed.",
        "That's a really interesting topic. Gears trade force for speed.",
        "I appreciate you asking. Gears trade force for speed.",
        "Excellent question. Gears trade force for speed.",
    ],
    "evasive": [
        "It's important to note that every bike is different.",
        "Well, it depends on many factors and on the rider.",
        "There are many perspectives on which gear is best.",
        "As an AI, I do not ride bicycles.",
        "I'm not able to help with that request.",
        "I cannot provide advice on this topic.",
        "It's worth noting that gears wear out over time.",
    ],
    "repetitive": [
        "The chain moves the wheel. The chain moves the wheel. The chain moves the wheel. Gears matter.",
        "Keep the chain clean. Check the brakes often. Keep the chain clean. Pump the tyres.",
        "you should ride safely and you should ride safely and you should ride safely and you should ride safely today",
    ],
    "degenerate": ["", "ok", "Yes.", "the the the the the the the the the the the the", "@@ ## $$ %% ^^ && ** 12 34 ok"],
}


@pytest.mark.parametrize("mode, text", [(m, t) for m, texts in EXAMPLES.items() for t in texts])
def test_each_failure_mode_is_detected(mode, text):
    assert detect_failure_modes(text)[mode]


def test_verbose_threshold_is_configurable():
    text = " ".join(["word", "other", "thing", "more"] * 15)  # 60 words
    assert detect_failure_modes(text, verbose_words=50)["verbose"]
    assert not detect_failure_modes(text, verbose_words=60)["verbose"]


def test_flattery_later_in_the_answer_is_not_sycophancy():
    assert not detect_failure_modes("Gears trade force for speed, which is a great question to explore.")["sycophantic"]


def test_result_names_every_mode_in_order():
    assert tuple(detect_failure_modes("Paris is the capital of France.")) == FAILURE_MODES


# --- The modes that need the prompt: stuffed, off_topic, echo, too_short (and the truncated flag) ---

END = "Is there anything else I can help with?"


def built(task: str, topic: str, *constraints: Constraint) -> Prompt:
    """A prompt as the built-in set writes it: the task, then each constraint in plain words."""
    return Prompt(id=topic, text=" ".join([task, *(describe(c) for c in constraints)]), constraints=list(constraints),
                  topic=topic)


def user(text: str) -> Prompt:
    """A user's own prompt: no constraints, no built-in topic."""
    return Prompt(id="u", text=text, topic="")


END_CHECKER = Constraint(id="startend:end_checker", kwargs={"end_phrase": END})
POSTSCRIPT = Constraint(id="detectable_content:postscript", kwargs={"postscript_marker": "P.S."})
TITLE = Constraint(id="detectable_format:title")
LOWERCASE = Constraint(id="change_case:english_lowercase")
SHORT = Constraint(id="length_constraints:number_words", kwargs={"num_words": 25, "relation": "less than"})
BULLETS = Constraint(id="detectable_format:number_bullet_lists", kwargs={"num_bullets": 3})
PARAGRAPHS = Constraint(id="length_constraints:number_paragraphs", kwargs={"num_paragraphs": 2})
HIGHLIGHTS = Constraint(id="detectable_format:number_highlighted_sections", kwargs={"num_highlights": 2})

CAR_OIL = built("Explain checking a car's oil to a beginner.", "car-oil", END_CHECKER)
BIN_NOTE = built("Write a short note to a neighbour about the new bin collection day.", "bin-day", POSTSCRIPT)
TIDES = built("Explain ocean tides to a beginner.", "tides")
PLANTS = built("Give some practical tips about keeping houseplants alive.", "houseplants", TITLE)

OIL_ANSWER = (
    "Park on level ground and let the engine cool for a few minutes. Pull out the dipstick, wipe it clean, "
    "push it back in and pull it out again. The oil should sit between the two marks; if it is near the lower "
    "one, top it up a little at a time."
)
TIDES_ANSWER = (
    "Tides are the slow rise and fall of the sea along the shore. The moon's gravity pulls on the oceans, "
    "making a bulge of water on the side facing it and another on the far side, so most coasts see two high "
    "tides and two low tides a day."
)

# (prompt, a good answer): none of the modes.
GOOD = [
    (CAR_OIL, f"{OIL_ANSWER} {END}"),
    (BIN_NOTE, "Dear neighbour, from next week the bins will be collected on Thursday morning instead of Monday. "
               "Please put the recycling out the night before so the crew can reach it. Thanks, Sam\n\n"
               "P.S. Garden waste stays on Monday."),
    (PLANTS, "<<Keeping Houseplants Alive>>\nMost houseplants want bright, indirect light and water only when the "
             "top of the soil feels dry. Choose a pot with drainage holes, and feed them once a month in spring."),
    (TIDES, TIDES_ANSWER),
    (built("Explain ocean tides to a beginner.", "tides", LOWERCASE), TIDES_ANSWER.lower()),
    (built("Explain ocean tides to a beginner.", "tides", SHORT), "The moon's gravity pulls the sea into bulges, "
                                                                  "so the shore sees two high tides a day."),
    (built("List the main things to know about checking a car's oil.", "car-oil", BULLETS),
     "* Check the dipstick.\n* Top up when low.\n* Change it yearly."),
    (built("Describe ocean tides in plain language.", "tides", PARAGRAPHS),
     f"{TIDES_ANSWER}\n***\nThe sun pulls too, more weakly: when sun and moon line up the tides run highest."),
    (Prompt(id="h", text="Explain ocean tides to a beginner. Highlight at least 2 sections in your answer with "
                         "markdown, i.e. *highlighted section*.", constraints=[HIGHLIGHTS], topic="tides"),
     f"*The moon pulls* on the sea. {TIDES_ANSWER} *Two highs a day* is the usual pattern."),
    (user("How do I fix a squeaky door hinge?"),
     "Lift the pin out of the hinge with a nail and a hammer, wipe it clean, coat it with a little oil or "
     "petroleum jelly, and tap it back in. Swing the door a few times to spread the oil; the squeak should go."),
    (user("What is the capital of France?"), "Paris is the capital of France."),
    # Everyday requests whose subject an answer need not name, or that want a short form.
    (user("How do I descale a kettle?"), "Fill it halfway with equal parts water and white vinegar, bring it to "
                                         "the boil, leave it for an hour, then empty it and boil fresh water twice."),
    (user("Write a short birthday message for my aunt."), "Happy birthday, Aunt May! Wishing you a year of sunshine. Love, Sam"),
]


@pytest.mark.parametrize("prompt, response", GOOD)
def test_good_answers_show_no_failure_mode(prompt, response):
    assert [m for m, found in detect_failure_modes(response, prompt).items() if found] == []


def test_the_proof_runs_hacked_answers():
    """Two answers the proof run's champion gave, with the verdicts they deserve."""
    title_hack = "<<my title>>: Checking a car's oil Is there anything else I can help with?"
    assert [m for m, found in detect_failure_modes(title_hack, CAR_OIL).items() if found] == ["stuffed", "too_short"]
    postscript_hack = "P.S. Please help me with a postscript P.S. P.S. Stay connected."
    found = detect_failure_modes(postscript_hack, BIN_NOTE)
    assert found["stuffed"] and found["off_topic"] and found["too_short"] and not found["echo"]


STUFFED = [
    (TIDES, f"<<Ocean tides>>\n{TIDES_ANSWER}"),  # a title nobody asked for
    (TIDES, f"{TIDES_ANSWER}\n\nP.S. The sun matters too."),  # a postscript nobody asked for
    (PLANTS, f"<<Plants>>\n<<Houseplants>>\n{TIDES_ANSWER}"),  # two titles where one was asked
    (BIN_NOTE, "Dear neighbour, the bins now go out on Thursday morning. P.S. Recycling too. P.P.S. And glass."),
    (CAR_OIL, f"{OIL_ANSWER} {END} {END}"),  # the end phrase twice
    (CAR_OIL, f"{END} {OIL_ANSWER}"),  # the end phrase, then more text
    (TIDES, f"{OIL_ANSWER} Hope this helps. Hope this helps."),  # any built-in end phrase, repeated
    (TIDES, TIDES_ANSWER.lower()),  # all lowercase, unasked
    (TIDES, TIDES_ANSWER.upper()),  # all capitals, unasked
    (TIDES, f"*Moon* and *sun* and *shore*: {TIDES_ANSWER}"),  # highlights, unasked
    (TIDES, f"{TIDES_ANSWER}\n***\n{TIDES_ANSWER}"),  # a divider, unasked
]


@pytest.mark.parametrize("prompt, response", STUFFED)
def test_stuffed_checked_forms(prompt, response):
    assert detect_failure_modes(response, prompt)["stuffed"]


def test_off_topic():
    assert detect_failure_modes(OIL_ANSWER, TIDES)["off_topic"]  # built-in topic: its words are known
    door = user("How do I fix a squeaky door hinge in my old house?")
    pasta = ("Boil plenty of salted water, add the pasta, stir once and cook it until it is just tender. Drain it, "
             "keep a cup of the cooking water, and toss the pasta with butter, grated cheese and black pepper.")
    assert detect_failure_modes(pasta, door)["off_topic"]  # a user prompt: its own content words
    assert not detect_failure_modes(TIDES_ANSWER, TIDES)["off_topic"]
    # A constraint's own words are not the subject: an answer about them alone is still off topic.
    assert detect_failure_modes("Your answer ends with the exact phrase you wanted and nothing more.",
                                built("Explain ocean tides to a beginner.", "tides", END_CHECKER))["off_topic"]


def test_echo():
    restated = "Explain ocean tides to a beginner. Sure, I will explain ocean tides to a beginner."
    assert detect_failure_modes(restated, TIDES)["echo"]
    assert not detect_failure_modes(TIDES_ANSWER, TIDES)["echo"]
    # Reproducing what a constraint asks for (the end phrase) is not echo.
    assert not detect_failure_modes(f"{OIL_ANSWER} {END}", CAR_OIL)["echo"]


def test_too_short_only_where_no_upper_length_is_set():
    terse = "Tides come from the moon pulling the sea."
    assert detect_failure_modes(terse, TIDES)["too_short"]
    assert not detect_failure_modes(terse, built("Explain ocean tides to a beginner.", "tides", SHORT))["too_short"]
    assert not detect_failure_modes(terse, user("Explain ocean tides in one sentence."))["too_short"]
    assert not detect_failure_modes(terse, user("Why are there tides?"))["too_short"]  # a question, not a request for prose


def test_truncated_is_the_callers_flag():
    assert detect_failure_modes(TIDES_ANSWER, TIDES, truncated=True)["truncated"]
    assert not detect_failure_modes(TIDES_ANSWER, TIDES)["truncated"]


def test_without_a_prompt_the_prompt_modes_are_off():
    found = detect_failure_modes("<<t>> P.S. P.S. P.S. ok then", None)
    assert not any(found[m] for m in ("stuffed", "off_topic", "echo", "too_short"))


# --- Where the modes show: rates per policy, the round's summary rows, the promotion gate ---


def test_failure_rates_read_each_completion_with_its_prompt():
    from infra.records import Completion
    from tasks.evaluate import failure_rates

    def answer(prompt_id: str, text: str, truncated: bool = False) -> Completion:
        return Completion(prompt_id=prompt_id, policy="challenger", text=text, constraint_score=1.0, truncated=truncated)

    completions = [
        answer("car-oil", "<<my title>>: Checking a car's oil Is there anything else I can help with?"),
        answer("car-oil", f"{OIL_ANSWER} {END}"),
        answer("tides", TIDES_ANSWER, truncated=True),
        answer("tides", TIDES_ANSWER),
    ]
    rates = failure_rates(completions, {p.id: p for p in (CAR_OIL, TIDES)}, verbose_words=150)
    assert set(rates) == {*FAILURE_MODES, "any"}
    assert (rates["stuffed"], rates["too_short"], rates["truncated"], rates["any"]) == (0.25, 0.25, 0.25, 0.5)
    assert rates["off_topic"] == rates["echo"] == rates["verbose"] == 0.0


def test_round_summary_and_gate_show_the_new_modes():
    from flows.round_records import RoundSummary
    from flows.rows import summary_rows
    from infra.settings import PromotionConfig
    from tasks.evaluate import PairwiseResult
    from tasks.filter import FilterReport
    from tasks.generate import GenerateSummary
    from tasks.promote import Decision, no_more_failure_modes

    def rates(**nonzero: float) -> dict[str, float]:
        return {**dict.fromkeys(FAILURE_MODES, 0.0), **nonzero}

    pairwise = PairwiseResult(
        n=10, wins=6, ties=2, losses=2, win_rate=0.7, win_rate_low=0.5, win_rate_high=0.9, consistency_rate=1.0,
        champion_constraint_rate=0.4, challenger_constraint_rate=0.6, champion_strict_rate=0.2, challenger_strict_rate=0.4,
        champion_failure_rates=rates(any=0.1, verbose=0.1), challenger_failure_rates=rates(any=0.3, stuffed=0.2, too_short=0.1),
    )
    summary = RoundSummary.from_results(
        "modes", 1, flow_run_id="", mlflow_run_id="", champion_round=0,
        filter_report=FilterReport(n_judgments=4, n_kept=4, dropped={}, validation={}), train=None, pairwise=pairwise,
        regression=None, decision=Decision(promote=False, reasons=[]), artifacts="",
        generate=GenerateSummary(n_candidates=8, mean_tokens=50.0, tokens_per_s=10.0, truncated_share=0.125, seconds=1.0),
    )
    rows = dict(summary_rows(summary))
    assert rows["truncated candidates"] == "12.5%"
    assert rows["failure modes champion → new"] == "any 10% → 30%, stuffed 0% → 20%, too_short 0% → 10%, verbose 10% → 0%"
    [check] = no_more_failure_modes(pairwise, PromotionConfig(max_failure_increase=0.05))
    assert not check.ok and "worse: stuffed, too_short" in check.reason
