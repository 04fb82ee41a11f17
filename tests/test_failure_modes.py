"""Failure-mode detectors: each fires on a constructed example, none on clean answers."""

from __future__ import annotations

import pytest

from tasks.failure_modes import FAILURE_MODES, detect_failure_modes

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
