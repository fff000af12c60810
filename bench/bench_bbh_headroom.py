"""Is there headroom in the BBH harness of issue 14? The 16-token answer against a
step-by-step answer, on the same task model and pool items.

Issue 14's harness fixes the task model (the embedded Qwen2.5-Coder-1.5B, temperature 0)
and gives every task call :data:`~bench.bbh_harness.TASK_MAX_TOKENS` (16) tokens: room for
an answer, not for reasoning. Under it, no arm of ``bench_bbh_search`` (the search,
GEPA, MIPROv2, the ablations) gains significantly, and the best arm per task picked on the
test items reaches +0.036 pooled (``report.md``, "Headroom"). This probe measures the one
lever the harness leaves closed, the answer budget, on the same model:

* ``answer@16``: :data:`~bench.bbh_harness.START_INSTRUCTION`, 16 tokens, the harness's
  parser (the first answer word) -- exactly the ``start`` arm;
* ``steps@256``: :data:`STEPS_INSTRUCTION` (reason briefly, then "So the answer is ..."),
  256 tokens, the answer after the last "answer is", else the first answer
  (:func:`final_answer`); the table says how many replies ended as instructed.

Items: the first ``--items`` pool items of each task (never the test items). Paired per
item: wins, losses and the exact one-sided sign test p per task and pooled, and the median
seconds per call of each condition with their ratio (what the longer answer costs on this
CPU). Replies are cached in ``bench/results/bbh_headroom/cache/`` (by messages and max
tokens, with the seconds each call took), and each task's result is saved as soon as it is
done, so an interrupted run resumes where it stopped.

    GENOPT_LOCAL_THREADS=1 nice -n 5 python -m bench.bench_bbh_headroom
    python -m bench.bench_bbh_headroom --quick      # scripted model, synthetic items
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from typing import Any

from bench import bbh_harness as h
from bench import common
from bench.common import log

RESULTS_NAME = "bbh_headroom"
#: the step-by-step instruction (``{words}``: the task's answer words)
STEPS_INSTRUCTION = (
    "Think step by step in a few short sentences, then end with the line: So the answer is {words}."
)
STEPS_MAX_TOKENS = 256
DEFAULT_ITEMS = 30
QUICK_ITEMS = 6
_FINAL = re.compile(r"answer\s+is", re.IGNORECASE)


def answer_words(task: str) -> str:
    """The answer words a task's step-by-step instruction names.

    Example:
        >>> answer_words("snarks"), answer_words("navigate")
        ('(A) or (B)', 'Yes or No')
    """
    return "(A) or (B)" if task == "snarks" else "Yes or No"


def final_answer(task: str, text: str | None) -> str | None:
    """The answer after the last "answer is" in a step-by-step reply, parsed like the
    harness's answers; a reply without one (the model answered first and explained after,
    or was cut at the token limit) is read like the harness reads it, by its first answer.

    Example:
        >>> final_answer("navigate", "No wait. Left, then back. So the answer is Yes.")
        'yes'
        >>> final_answer("snarks", "(A) is literal; so the answer is (B).")
        '(b)'
        >>> final_answer("sports_understanding", "No, it is not plausible. Yes, he plays.")
        'no'
        >>> final_answer("navigate", "Take 3 steps, then") is None
        True
    """
    tail = _FINAL.split(text or "")
    return h.parse_answer(task, tail[-1] if len(tail) > 1 else tail[0])


def concluded(text: str | None) -> bool:
    """Whether a step-by-step reply ends with its "answer is" line, as instructed.

    Example:
        >>> concluded("Two steps. So the answer is No."), concluded("Yes, it is.")
        (True, False)
    """
    return bool(_FINAL.search(text or ""))


def _quick_steps_answer(messages: Any) -> str:
    """``--quick``: a scripted step-by-step reply ending in the harness's scripted answer."""
    return f"One step, then another. So the answer is {h.quick_task_answer(messages)}."


def _call(models: h.Models, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, float]:
    """One uncounted task call; its reply and the seconds the model took (from the cache
    record, so a resumed run still reports the first run's time)."""
    import litellm

    with models.uncounted():
        resp = litellm.completion(
            model=models.task_model, messages=messages, temperature=0, max_tokens=max_tokens
        )
    key = models.cache_key(messages, max_tokens)
    record = json.loads(models._cache_path(key).read_text())
    return resp.choices[0].message.content or "", float(record.get("seconds", 0.0))


def run_task(models: h.Models, task: str, items: list[h.Example]) -> dict[str, Any]:
    """Both conditions on ``items``: per-item scores, replies, seconds; progress on stderr."""
    steps = STEPS_INSTRUCTION.format(words=answer_words(task))
    rows = []
    for i, e in enumerate(items, 1):
        short, s_short = _call(models, h.render_messages(h.START_INSTRUCTION, [], e.input), 16)
        long_, s_long = _call(models, h.render_messages(steps, [], e.input), STEPS_MAX_TOKENS)
        rows.append(
            {
                "id": e.id,
                "target": e.target,
                "answer@16": int(h.parse_answer(task, short) == e.target),
                "steps@256": int(final_answer(task, long_) == e.target),
                "concluded": concluded(long_),
                "seconds@16": s_short,
                "seconds@256": s_long,
                "reply@256": long_,
            }
        )
        log(f"{task}: {i}/{len(items)} items")
    return {"task": task, "instruction@256": steps, "items": rows}


def summary(tasks: dict[str, Any]) -> dict[str, Any]:
    """Per task and pooled: accuracies, the paired sign test of ``steps@256`` against
    ``answer@16``, how many long replies reached an answer, median seconds and their ratio."""
    from prefect_genopt.optimize.search.stats import sign_test

    def one(rows: list[dict[str, Any]]) -> dict[str, Any]:
        a = {r["id"]: float(r["answer@16"]) for r in rows}
        b = {r["id"]: float(r["steps@256"]) for r in rows}
        t = sign_test(a, b)
        s16 = statistics.median(r["seconds@16"] for r in rows)
        s256 = statistics.median(r["seconds@256"] for r in rows)
        return {
            "n": len(rows),
            "answer@16": sum(a.values()) / len(a),
            "steps@256": sum(b.values()) / len(b),
            "diff": t.diff_mean,
            "ci": [t.ci_low, t.ci_high],
            "wins": t.wins,
            "losses": t.losses,
            "p_one_sided": t.p_value,
            "concluded@256": sum(r["concluded"] for r in rows) / len(rows),
            "median_s@16": s16,
            "median_s@256": s256,
            "ratio_s": s256 / s16 if s16 else float("nan"),
        }

    out = {t: one(v["items"]) for t, v in tasks.items()}
    rows = [r for v in tasks.values() for r in v["items"]]
    if rows:
        out["pooled"] = one(rows)
    return out


def report(result: dict[str, Any]) -> None:
    """The table of :func:`summary` on stdout."""
    rows = [
        (
            name,
            s["n"],
            f"{s['answer@16']:.3f}",
            f"{s['steps@256']:.3f}",
            f"{s['diff']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]",
            f"+{s['wins']}/-{s['losses']}",
            f"{s['p_one_sided']:.3g}",
            f"{s['concluded@256']:.0%}",
            f"{s['median_s@16']:.2f}",
            f"{s['median_s@256']:.2f}",
            f"{s['ratio_s']:.1f}x",
        )
        for name, s in result["summary"].items()
    ]
    common.print_table(
        [
            "task",
            "items",
            "answer@16",
            "steps@256",
            "diff [95% CI]",
            "+/-",
            "one-sided p",
            "'answer is'@256",
            "s/call @16",
            "s/call @256",
            "ratio",
        ],
        rows,
        title="BBH headroom: the 16-token answer vs a step-by-step answer (pool items)",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(h.TASKS), help="comma-separated BBH tasks")
    ap.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="pool items per task")
    ap.add_argument("--quick", action="store_true", help="scripted model, synthetic items")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if any(t not in h.TASKS for t in tasks) or args.items < 1:
        print(f"unknown tasks {tasks} (known: {h.TASKS}) or --items below 1", file=sys.stderr)
        return 2
    common.prefect_env()
    path = common.results_path(RESULTS_NAME, args.quick)
    cache = path.parent / RESULTS_NAME / "cache"
    if args.quick:
        shutil.rmtree(cache, ignore_errors=True)
        models = h.Models(cache, quick=True, task_answer=_quick_steps_answer)
        n_items = QUICK_ITEMS
    else:
        models = h.Models(cache)
        n_items = args.items
    saved = json.loads(path.read_text()) if path.is_file() and not args.quick else {}
    done: dict[str, Any] = {
        t: v for t, v in saved.get("tasks", {}).items() if len(v["items"]) >= n_items
    }
    started = time.perf_counter()
    for task in tasks:
        if task in done:
            log(f"{task}: done already ({len(done[task]['items'])} items); skipped")
            continue
        if args.quick:
            items = h.split(task, h.synthetic_task(task, 50), (0, 10)).pool[:n_items]
        else:
            items = h.split(task, h.load_task(task)).pool[:n_items]
        done[task] = run_task(models, task, items)
        result = {
            "command": common.command_line("bench.bench_bbh_headroom", argv),
            "machine": common.machine_info(),
            "tasks": done,
            "summary": summary(done),
        }
        common.save_json(path, result)
        log(f"{task}: saved ({time.perf_counter() - started:.0f} s so far)")
    result = {"tasks": done, "summary": summary(done)}
    report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
