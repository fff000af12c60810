"""A pipeline whose per-item KPI follows its ``quality`` param (deterministic per item)."""

from __future__ import annotations

import random
from typing import Any

from prefect import flow

import prefect_genopt as genopt


class KnobParams(genopt.Tunables):
    """One numeric knob: the chance that an item comes out right."""

    quality: float = genopt.numeric(0.8, ge=0.0, le=1.0, description="chance an item is right")


@genopt.task
def work(key: str, salt: str) -> float:
    """Process one item: right (1.0) with probability ``quality``."""
    p = genopt.current_params(item_key=key)
    return float(random.Random(f"{key}|{salt}").random() < p.quality)


def make_pipeline(name: str) -> Any:
    """A flow named ``name`` that processes ``n`` items and scores each (KPI ``ok``)."""

    @flow(name=name)
    @genopt.pipeline(name=name, params=KnobParams)
    def knob(n: int = 40, batch: int = 0) -> float:
        keys = [f"item-{batch}-{i}" for i in range(n)]
        values = [work(k, name) for k in keys]
        for k, v in zip(keys, values, strict=True):
            genopt.feedback("ok", v, item_key=k)
        genopt.feedback("ok_rate", sum(values) / n)
        return sum(values) / n

    return knob
