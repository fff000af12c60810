"""The BBH comparison's harness (``bench/bbh_harness.py``) and its runner's bookkeeping
(``bench/bench_bbh_search.py``), with scripted models: the split, the parser, the
template, the caps, the reply cache and the resumable results."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from bench import bbh_harness as h
from bench import bench_bbh_search as bs


def _items(task: str, n: int) -> list[h.Example]:
    return [h.Example(f"{task}-{i:03d}", f"q{i}", "yes") for i in range(n)]


@pytest.mark.parametrize(
    ("task", "n", "n_test", "n_pool"),
    [
        ("sports_understanding", 250, 100, 150),
        ("navigate", 250, 100, 150),
        ("snarks", 178, 78, 100),
    ],
)
def test_split_sizes_and_disjointness(task: str, n: int, n_test: int, n_pool: int) -> None:
    sp = h.split(task, _items(task, n))
    assert (len(sp.test), len(sp.pool)) == (n_test, n_pool)
    test_ids, pool_ids = {e.id for e in sp.test}, {e.id for e in sp.pool}
    assert not test_ids & pool_ids
    assert len(test_ids | pool_ids) == n
    assert sp.test[0].id == f"{task}-025"
    assert sp.test[-1].id == f"{task}-{25 + n_test - 1:03d}"
    old = {f"{task}-{i:03d}" for i in range(*h.OLD_TEST_RANGE)}
    assert old <= test_ids  # the old 50-item test is inside the new one


def test_split_of_the_real_files_when_present() -> None:
    if not (h.data_dir() / "snarks.json").is_file():
        pytest.skip("no BBH data in GENOPT_BENCH_DATA")
    sizes = {t: h.split(t, h.load_task(t)) for t in h.TASKS}
    assert sum(len(s.test) for s in sizes.values()) == 278  # the pooled test of the issue
    for t, s in sizes.items():
        targets = {e.target for e in s.test + s.pool}
        assert targets == ({"(a)", "(b)"} if t == "snarks" else {"yes", "no"})


@pytest.mark.parametrize(
    ("task", "reply", "expected"),
    [
        ("sports_understanding", "Yes", "yes"),
        ("sports_understanding", "No, the sentence is not plausible.", "no"),
        ("sports_understanding", "The sentence is plausible: yes.", "yes"),
        ("sports_understanding", "Not sure.", None),
        ("sports_understanding", "", None),
        ("navigate", "No.", "no"),
        ("navigate", "YES, you return", "yes"),
        ("navigate", "Nope", None),
        ("snarks", "(A)", "(a)"),
        ("snarks", "The statement that is sarcastic is:\n\n(B) So he's", "(b)"),
        ("snarks", "B", "(b)"),
        ("snarks", "A) He's generous", "(a)"),
        ("snarks", "Answer: B.", "(b)"),
        ("snarks", "A sarcastic statement", None),
        ("snarks", "Both are sarcastic", None),
    ],
)
def test_parser_reads_each_task_answer_form(task: str, reply: str, expected: str | None) -> None:
    assert h.parse_answer(task, reply) == expected


def test_parser_reads_the_demo_answers_as_their_targets() -> None:
    for task, target in [("navigate", "yes"), ("navigate", "no"), ("snarks", "(a)")]:
        assert h.parse_answer(task, h.answer_text(task, target)) == target


def test_template_is_system_then_demo_pairs_then_question() -> None:
    msgs = h.render_messages("Be brief.", [h.Demo("Q1?", "Yes"), h.Demo("Q2?", "(B)")], "Q3?")
    assert msgs == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1?"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "Q2?"},
        {"role": "assistant", "content": "(B)"},
        {"role": "user", "content": "Q3?"},
    ]


def test_harness_doctests() -> None:
    assert doctest.testmod(h).failed == 0
    assert doctest.testmod(bs).failed == 0


def _models(tmp_path: Path) -> h.Models:
    return h.Models(tmp_path / "cache", quick=True)


def test_task_cap_raises_cap_reached_through_litellm(tmp_path: Path) -> None:
    models = _models(tmp_path)
    models.set_caps(task=2, optimizer=None)
    msgs = h.render_messages("x", [], "Is it?")
    h.complete_task(models, msgs)
    h.complete_task(models, msgs)
    with pytest.raises(h.CapReached):
        h.complete_task(models, msgs)
    assert models.cap_hit == "task"
    assert models.counts()["task_calls"] == 2


def test_optimizer_cap_raises_cap_reached(tmp_path: Path) -> None:
    from prefect_genopt._litellm import litellm

    models = _models(tmp_path)
    models.set_caps(task=None, optimizer=1)
    msgs = [{"role": "user", "content": "improve"}]
    litellm.completion(model=models.optimizer_model, messages=msgs)
    with pytest.raises(h.CapReached):
        litellm.completion(model=models.optimizer_model, messages=msgs)
    assert (models.cap_hit, models.counts()["optimizer_calls"]) == ("optimizer", 1)


def test_cached_calls_count_and_test_calls_do_not(tmp_path: Path) -> None:
    models = _models(tmp_path)
    models.set_caps(task=3, optimizer=None)
    msgs = h.render_messages("x", [], "Is it?")
    first = h.complete_task(models, msgs)
    second = h.complete_task(models, msgs)  # the same call: cached, still counted
    assert first == second
    c = models.counts()
    assert (c["task_calls"], c["task_real"], c["task_cached"]) == (2, 1, 1)
    examples = _items("navigate", 5)
    acc, scores = h.test_accuracy(models, "navigate", "x", [], examples)  # 5 > the cap left
    assert len(scores) == 5 and acc == sum(scores) / 5
    c = models.counts()
    assert (c["task_calls"], c["test_calls"]) == (2, 5)
    # another process (a new Models) reads the same reply from the disk cache
    again = _models(tmp_path)
    assert h.complete_task(again, msgs) == first
    assert again.counts()["task_cached"] == 1


def test_a_rerun_skips_a_finished_triple(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GENOPT_BENCH_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("GENOPT_BENCH_DATA", str(tmp_path / "no-data"))  # synthetic items
    path = tmp_path / "results" / "results.json"
    ran = bs.run_all(path, ["navigate"], [0], ["start"], quick=True)
    assert ran == ["navigate/0/start"]
    saved = json.loads(path.read_text())["triples"]["navigate/0/start"]
    assert saved["n_test"] == len(saved["test_scores"]) == 10
    assert saved["task_calls"] == 0 and saved["test_calls"] == 10
    again = bs.run_all(path, ["navigate"], [0, 1], ["start"], quick=True)
    assert again == ["navigate/1/start"]  # seed 0 was skipped, seed 1 ran
    data = json.loads(path.read_text())
    assert data["triples"]["navigate/0/start"]["finished_at"] == saved["finished_at"]
    assert data["runs"][-1]["skipped_done"] == ["navigate/0/start"]
    assert bs.run_all(path, ["navigate"], [0, 1], ["start"], quick=True) == []
    assert "no finished" not in bs.report(data)


def _triple(task: str, arm: str, scores: list[int]) -> dict[str, object]:
    return {
        "task": task,
        "seed": 0,
        "arm": arm,
        "test_accuracy": sum(scores) / len(scores),
        "test_scores": {f"{task}-{i:03d}": s for i, s in enumerate(scores)},
    }


def test_headroom_takes_each_tasks_best_arm_on_test_and_pools_it() -> None:
    triples = {
        "snarks/0/start": _triple("snarks", "start", [0, 0, 1, 1]),
        "snarks/0/gepa": _triple("snarks", "gepa", [1, 1, 1, 0]),
        "snarks/0/search": _triple("snarks", "search", [0, 1, 1, 1]),
        "navigate/0/start": _triple("navigate", "start", [1, 1, 0, 0]),
        "navigate/0/search": _triple("navigate", "search", [1, 0, 0, 0]),
    }
    (line,) = bs._headroom(triples, ["navigate", "snarks"], [0])
    # snarks: gepa and search tie at 0.75, the first found wins; navigate: the start stays
    assert "navigate: start 0.500" in line and "snarks: gepa 0.750" in line
    assert "0.500 → 0.625 (+0.125" in line and "on 8 items" in line
