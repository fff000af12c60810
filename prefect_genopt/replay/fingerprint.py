"""What a per-item score depends on besides the params: the step versions and task models.

A score measured on a recorded item stands in for another measurement (a cached score, a
recorded run's score, the night's confirmation score reused by the replay gate) only when
the code that produced it is the same: the same versions of the recording
``@genopt.task`` steps and the same task models. :func:`fingerprint` names that as
``fp_`` + 16 hex chars; :func:`run_fingerprints` reads it for recorded runs and
:func:`code_fingerprint` for the code loaded now (a pipeline's flow).

Example:
    >>> fingerprint([("classify", "v1")], ["m"]) == fingerprint([("classify", "v1")], ["m"])
    True
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_genopt.warehouse import Warehouse

__all__ = ["fingerprint", "run_fingerprints", "code_fingerprint", "steps_of"]


def fingerprint(
    steps: Iterable[tuple[str, str | None]], models: Iterable[str | None]
) -> str | None:
    """What a run's per-item scores depend on besides its params: the versions of its
    recorded steps and the task models it called, as ``fp_`` + 16 hex chars (None when
    neither is known: a run's scores are then never reused for another run).

    Example:
        >>> a = fingerprint([("classify", "v1"), ("render", "v2")], ["m"])
        >>> a == fingerprint([("render", "v2"), ("classify", "v1")], ["m", "m"])
        True
        >>> a == fingerprint([("classify", "v9"), ("render", "v2")], ["m"]), fingerprint([], [])
        (False, None)
    """
    steps_part = sorted({f"{s}@{v or ''}" for s, v in steps})
    models_part = sorted({m for m in models if m})
    if not steps_part and not models_part:
        return None
    text = "steps=" + ",".join(steps_part) + ";models=" + ",".join(models_part)
    return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprints(wh: Warehouse, run_ids: Sequence[str]) -> dict[str, str | None]:
    """:func:`fingerprint` of each run: its recorded steps' versions (``step_values``) and
    the models of its LLM calls (``spans``) and of its recorded steps. A run with neither
    maps to None."""
    if not run_ids:
        return {}
    rows = wh.sql(
        """
        SELECT run_id, 'step' AS kind, step AS a, step_version AS b FROM step_values
        WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
        UNION
        SELECT run_id, 'model', model, NULL FROM step_values
        WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND model IS NOT NULL
        UNION
        SELECT run_id, 'model', llm_model, NULL FROM spans
        WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND run_type = 'llm'
          AND llm_model IS NOT NULL
        """,
        [list(run_ids)] * 3,
    )
    steps: dict[str, list[tuple[str, str | None]]] = {r: [] for r in run_ids}
    models: dict[str, list[str]] = {r: [] for r in run_ids}
    for r in rows:
        if r["kind"] == "step":
            steps[r["run_id"]].append((r["a"], r["b"]))
        else:  # a step's model column joins several models with commas
            models[r["run_id"]].extend(m for m in str(r["a"]).split(",") if m)
    return {r: fingerprint(steps[r], models[r]) for r in run_ids}


def _is_step_info(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`prefect_genopt.pipeline.StepInfo` (by its fields: the
    replay layer reads what ``pipeline`` sets without importing it, as ``pipeline``
    imports ``replay.steps``)."""
    return all(hasattr(obj, a) for a in ("name", "version", "policy", "side_effect"))


def steps_of(flow: Any) -> list[Any]:
    """The ``@genopt.task`` steps defined in the module of ``flow``'s function."""
    fn = getattr(flow, "fn", flow)
    module = sys.modules.get(getattr(inspect.unwrap(fn), "__module__", "") or "")
    found: dict[str, Any] = {}
    for obj in vars(module).values() if module is not None else ():
        info = getattr(getattr(obj, "fn", obj), "__genopt_step__", None)
        if _is_step_info(info):
            found[info.name] = info
    return list(found.values())


def code_fingerprint(flow: Any) -> str | None:
    """The step versions and task models of the code loaded now, in the format of
    :func:`fingerprint` (a run's fingerprint as :func:`run_fingerprints` reads it): the recording
    ``@genopt.task`` steps of the flow's module with their versions, and the models they
    declare (``model=``). None when it holds neither (a run's scores then never stand in
    for a replay).

    Example:
        >>> code_fingerprint(lambda: None) is None  # a module without genopt tasks
        True
    """
    steps = [s for s in steps_of(flow) if s.policy.active]
    models = []
    for s in steps:
        try:
            models.append(s.policy.declared_model())
        except Exception:  # noqa: BLE001 - a model function that fails here: unknown model
            models.append(None)
    return fingerprint([(s.name, s.version) for s in steps], models)
