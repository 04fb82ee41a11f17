"""Unrequested forms on hand-written answers: counted where the prompt did not ask, not where it did."""

from infra.records import Completion, Constraint, Prompt
from tasks.unrequested_forms import asked_forms, count_unrequested_forms, unrequested_forms

PLAIN = Prompt(id="plain", text="Explain why the sky is blue.", split="eval")
TITLED = Prompt(id="titled", text="Explain tides. Give your answer a title in double angular brackets.", split="eval",
                constraints=[Constraint(id="detectable_format:title")])
PS = Prompt(id="ps", text="Write a note to a neighbour. At the end add a postscript starting with P.S.", split="eval",
            constraints=[Constraint(id="detectable_content:postscript", kwargs={"postscript_marker": "P.S."})])
HIGHLIGHTS = Prompt(id="hl", text="Describe a forest. Highlight at least 2 sections with markdown.", split="eval",
                    constraints=[Constraint(id="detectable_format:number_highlighted_sections", kwargs={"num_highlights": 2})])

DRESSED = "<<Blue Sky>>\n## Why\nLight *scatters* off the air.\nP.S. Sunsets are red."
BARE = "Light scatters off the air, and blue light scatters most."


def test_what_a_prompt_asks_for():
    assert asked_forms(PLAIN) == set()
    assert asked_forms(TITLED) == {"title", "heading"}
    assert asked_forms(PS) == {"postscript"} and asked_forms(HIGHLIGHTS) == {"highlight"}


def test_forms_count_only_where_unasked():
    assert unrequested_forms(DRESSED, PLAIN) == {"title", "heading", "postscript", "highlight"}
    assert unrequested_forms(BARE, PLAIN) == set()
    assert unrequested_forms(DRESSED, TITLED) == {"postscript", "highlight"}
    assert unrequested_forms(DRESSED, PS) == {"title", "heading", "highlight"}
    assert unrequested_forms(DRESSED, HIGHLIGHTS) == {"title", "heading", "postscript"}
    # **bold** and "* " bullets are not highlights; "p.s." inside a word is no postscript.
    assert unrequested_forms("* one\n* two\n**Bold** text. Maps.Settings apply.", PLAIN) == set()


def test_counts_over_a_set_of_answers():
    prompts = {p.id: p for p in (PLAIN, TITLED, PS, HIGHLIGHTS)}
    answers = [Completion(prompt_id=k, policy="champion", text=t, constraint_score=0.0)
               for k, t in (("plain", DRESSED), ("titled", DRESSED), ("ps", BARE), ("hl", "A *green* and *quiet* wood."),
                            ("missing", DRESSED))]
    assert count_unrequested_forms(answers, prompts) == {"title": 1, "heading": 1, "postscript": 2, "highlight": 2,
                                                         "any": 2, "answers": 4}
