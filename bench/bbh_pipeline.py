"""The BBH pipeline of the search arm (``bench/bench_bbh_search.py``), importable at module
level: the search's replays re-run the recorded flow entrypoint (module and function), so
each task's flow is a module attribute (``bbh_sports_understanding``, ``bbh_navigate``,
``bbh_snarks``).

One step per item, ``answer(example_id, question)``: one task-model call through the
harness's template (:func:`bench.bbh_harness.render_messages`: the ``instruction`` param as
system message, the ``demos`` param as user/assistant turns, then the question), parsed by
:func:`bench.bbh_harness.parse_answer`; it returns the answer as a demo would show it
(``Yes``, ``(A)``), or the raw reply when nothing parses. The step records its values
(``record=True``), so ``genopt.harvest`` makes its right answers verified experiences: the
``demos`` param (``genopt.demos(step="answer")``) is what the search's demo sets draw from.
The flow gives per-item feedback ``correct`` (with the expected answer) and ``accuracy``.

The task model is a module setting (:func:`configure`): the harness's counting provider.

Importing this module imports Prefect: call ``bench.common.prefect_env()`` first.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

import prefect_genopt as genopt
from bench import bbh_harness as h
from prefect_genopt._litellm import litellm

__all__ = ["BBHParams", "answer", "configure", "flow_for", "pipeline_name", "demos_of", "FLOWS"]

_STATE: dict[str, str] = {"model": "bbh-task/unset"}


def configure(task_model: str) -> None:
    """Set the litellm task model the pipeline calls (``Models.task_model``)."""
    _STATE["model"] = task_model


def task_model() -> str:
    """The task model the pipeline calls now."""
    return _STATE["model"]


class BBHParams(genopt.Tunables):
    """What the search may change in the BBH pipeline."""

    instruction: str = genopt.prompt(
        h.START_INSTRUCTION,
        description="system message of the answering model (a small LLM that sees this "
        f"instruction, then the demos, then the question, and answers in at most "
        f"{h.TASK_MAX_TOKENS} tokens); the first 'yes'/'no' (or option '(A)'/'(B)') in its "
        "reply is taken as its answer",
        max_length=1000,
    )
    demos: list[dict] = genopt.demos(
        description="worked examples shown to the answering model before the question (a "
        "question and its right answer each), drawn from its verified answers",
        max_items=4,
        step="answer",
    )


def demos_of(values: dict[str, Any]) -> list[h.Demo]:
    """The ``demos`` param's values (``{"input": {...}, "output": ...}``) as harness demos.

    Example:
        >>> demos_of({"demos": [{"input": {"example_id": "x", "question": "Q?"},
        ...                      "output": "Yes", "experience_id": "e1"}]})
        [Demo(input='Q?', answer='Yes')]
    """
    out = []
    for d in values.get("demos") or []:
        given = d.get("input")
        question = given.get("question", "") if isinstance(given, dict) else given
        out.append(h.Demo(str(question), str(d.get("output", ""))))
    return out


def _task_of(example_id: str) -> str:
    return example_id.rsplit("-", 1)[0]


@genopt.task(record=True, model=task_model, item_key="example_id")
def answer(example_id: str, question: str) -> str:
    """Ask the task model the question (instruction, demos, question); the parsed answer."""
    p = genopt.current_params(item_key=example_id)
    demos = demos_of({"demos": p.demos})
    resp = litellm.completion(
        model=task_model(),
        messages=h.render_messages(p.instruction, demos, question),
        temperature=0,
        max_tokens=h.TASK_MAX_TOKENS,
    )
    reply = resp.choices[0].message.content or ""
    got = h.parse_answer(_task_of(example_id), reply)
    return h.answer_text(_task_of(example_id), got) if got else reply


def pipeline_name(task: str) -> str:
    """The pipeline (and flow) name of a task: ``bbh-<task>``."""
    return f"bbh-{task}"


def _make_flow(task: str) -> Any:
    name = pipeline_name(task)

    def run(examples: list[dict[str, str]]) -> float:
        """Answer BBH items with one task-model call each; per-item and run feedback."""
        correct = 0
        for e in examples:
            got_text = answer(e["id"], e["input"])
            got = h.parse_answer(task, got_text)
            ok = got == e["target"]
            correct += ok
            genopt.feedback(
                "correct",
                float(ok),
                item_key=e["id"],
                expected=h.answer_text(task, e["target"]),
                comment=None
                if ok
                else f"expected {h.answer_text(task, e['target'])}, got {got_text!r}",
            )
        accuracy = correct / len(examples) if examples else 0.0
        genopt.feedback("accuracy", accuracy)
        return accuracy

    fn_name = name.replace("-", "_")
    run.__name__ = run.__qualname__ = fn_name
    return flow(name=name, log_prints=False)(genopt.pipeline(name=name, params=BBHParams)(run))


bbh_sports_understanding = _make_flow("sports_understanding")
bbh_navigate = _make_flow("navigate")
bbh_snarks = _make_flow("snarks")
#: task -> its flow
FLOWS = {
    "sports_understanding": bbh_sports_understanding,
    "navigate": bbh_navigate,
    "snarks": bbh_snarks,
}


def flow_for(task: str) -> Any:
    """The flow of a task (one of :data:`bench.bbh_harness.TASKS`)."""
    return FLOWS[task]
