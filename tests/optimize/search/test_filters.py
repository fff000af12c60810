"""Cheap filters (issue 14, "Tests" item 2): every filter drops its case, and the count of
each reason is recorded."""

from __future__ import annotations

from prefect_genopt.optimize.search.core import Candidate, Dropped, HistoryEntry
from prefect_genopt.optimize.search.filters import (
    filter_drafts,
    is_copy,
    quoted_runs,
    reasons,
)

PARENT = {
    "prompt": "Decide whether the sentence about sports is plausible. Answer yes or no.",
    "threshold": 0.5,
}
EVIDENCE = [
    "Is the following sentence plausible? Joao Moutinho caught the screen pass in the "
    "NFC championship.",
    "Is the following sentence plausible? Jonas Valanciunas beat the buzzer.",
    "Is the following sentence plausible? Sam Darnold passed the puck.",
]
GOOD = (
    "Check that the athlete and the action belong to the same sport; if they do, answer "
    "yes, otherwise answer no."
)


def _draft(i: int, text: str, generator: str = "drafts") -> Candidate:
    return Candidate(f"c{i}", {**PARENT, "prompt": text}, generator, "ps_parent", ("prompt",))


def _run(drafts: list[Candidate], **kw: object) -> tuple[list[Candidate], list[Dropped]]:
    args: dict = {
        "parent": PARENT,
        "history": [],
        "evidence_inputs": EVIDENCE,
        "answer_words": ["yes", "no"],
        "field": "prompt",
        **kw,
    }
    return filter_drafts(drafts, **args)


def test_every_filter_drops_its_case_and_the_reasons_are_counted() -> None:
    earlier = "Say yes when the sentence could really happen in a game, and no otherwise."
    drafts = [
        _draft(0, GOOD),
        _draft(1, "  decide whether the sentence about sports is  plausible. Answer yes or no"),
        _draft(2, "Say YES when the sentence could really happen in a game, and no otherwise!"),
        _draft(3, "Answer yes or no. " + "Think about every sport carefully. " * 8),
        _draft(
            4,
            "Answer yes or no. Example: Joao Moutinho caught the screen pass in the NFC "
            "championship is no.",
        ),
        _draft(5, "Decide if the athlete could do this in their sport. Reply with one word."),
        _draft(6, GOOD.replace("otherwise", "else")),
    ]
    kept, dropped = _run(drafts, history=[HistoryEntry(earlier, 0.55, 48)])
    assert [c.candidate_id for c in kept] == ["c0"]
    assert [(d.reason, d.value) for d in dropped] == [
        ("copy", drafts[1].values["prompt"]),  # of the current value
        ("copy", drafts[2].values["prompt"]),  # of an earlier value
        ("too_long", drafts[3].values["prompt"]),
        ("quotes_evidence", drafts[4].values["prompt"]),
        ("drops_answer_words", drafts[5].values["prompt"]),
        ("copy", drafts[6].values["prompt"]),  # of draft c0, kept before it
    ]
    assert "current value" in dropped[0].detail and "earlier" in dropped[1].detail
    assert "draft 1" in dropped[5].detail and "evidence input 1" in dropped[3].detail
    assert reasons(dropped) == {
        "copy": 3,
        "too_long": 1,
        "quotes_evidence": 1,
        "drops_answer_words": 1,
    }
    assert all(d.generator == "drafts" for d in dropped)


def test_history_takes_entries_value_dicts_and_plain_values() -> None:
    old = "Only answer yes if a professional in that sport would do it, else no."
    for history in ([old], [{"prompt": old}], [HistoryEntry(old, 0.4)]):
        kept, dropped = _run([_draft(0, old + " ")], history=history)
        assert not kept and dropped[0].reason == "copy"
    # an entry of another field is not this field's history
    kept, _ = _run([_draft(0, old)], history=[HistoryEntry(old, 0.4, field="other")])
    assert kept


def test_boilerplate_of_every_input_is_not_a_quote() -> None:
    # "is the following sentence plausible" opens every input: the task, not an example
    text = "Is the following sentence plausible? Answer yes or no after naming the sport."
    assert quoted_runs(text, EVIDENCE)[0] == 0
    kept, _ = _run([_draft(0, text)])
    assert kept


def test_answer_words_are_whole_words_and_optional() -> None:
    text = "Reply with the word that fits, nothing else, knowing the sport."  # "no" in "knowing"
    kept, dropped = _run([_draft(0, text)])
    assert not kept and dropped[0].reason == "drops_answer_words"
    kept, _ = _run([_draft(0, text)], answer_words=None)
    assert kept
    kept, _ = _run([_draft(0, "Label it billing, bug or other.")], answer_words=["Billing"])
    assert kept


def test_a_parent_without_the_answer_words_lets_drafts_omit_them() -> None:
    # "Answer the question." names no label: a draft cannot drop what it never had
    text = "Decide if the athlete could do this in their sport. Reply with one word."
    bare = {**PARENT, "prompt": "Answer the question."}
    kept, dropped = _run([_draft(0, text)], parent=bare)
    assert [c.candidate_id for c in kept] == ["c0"] and not dropped
    kept, dropped = _run([_draft(0, text)])  # PARENT names yes / no: the same draft drops them
    assert not kept and dropped[0].reason == "drops_answer_words"


def test_candidates_that_do_not_change_the_field_pass() -> None:
    demos = Candidate("d", {**PARENT, "threshold": 0.7}, "demos", "ps_parent", ("threshold",))
    kept, dropped = _run([demos])
    assert kept == [demos] and not dropped


def test_a_short_parent_may_still_grow() -> None:
    parent = {"prompt": "Label it."}
    text = "Label the ticket billing, bug or other, by the words it uses."
    kept, _ = filter_drafts(
        [Candidate("c", {"prompt": text}, "drafts", "p", ("prompt",))],
        parent=parent,
        history=[],
        evidence_inputs=[],
        answer_words=None,
        field="prompt",
    )
    assert kept  # over 3x "Label it." but under the 200-character floor


def test_copy_is_a_normalised_edit_distance_below_a_tenth() -> None:
    base = "a" * 100
    assert is_copy(base, "b" * 9 + base[9:])  # 9 edits in 100
    assert not is_copy(base, "b" * 10 + base[10:])  # 10 edits: 0.1 is not below 0.1
    assert is_copy("", "  ") and not is_copy("yes", "no")
