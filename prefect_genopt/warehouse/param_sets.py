"""Param sets in the warehouse: the values of one, and the latest one a pipeline ran on.

Which param set is *stable* also takes the routing pointer into account: see
:func:`prefect_genopt.rollout.stable.stable_param_set`, which reads the runs through
:func:`latest_run_param_set`.

Example:
    >>> import tempfile, pathlib
    >>> from prefect_genopt.warehouse import Warehouse
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
    >>> latest_run_param_set(wh, "triage") is None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from prefect_genopt.warehouse.warehouse import Warehouse

__all__ = ["latest_run_param_set", "param_set_values"]

_LATEST_RUN = """
SELECT param_set_id FROM runs
WHERE pipeline = ? AND param_set_id IS NOT NULL {only_stable}
ORDER BY (arm = 'stable') DESC, start_time DESC
LIMIT 1
"""


def latest_run_param_set(wh: Warehouse, pipeline: str, *, any_arm: bool = False) -> str | None:
    """The param set of the pipeline's latest run on the ``stable`` arm, or None.

    With ``any_arm``, a pipeline with no stable-arm run gives its latest run's on any
    arm (stable runs still come first).
    """
    query = _LATEST_RUN.format(only_stable="" if any_arm else "AND arm = 'stable'")
    rows = wh.sql(query, [pipeline])
    return str(rows[0]["param_set_id"]) if rows else None


def param_set_values(wh: Warehouse, pipeline: str, param_set_id: str) -> dict[str, Any] | None:
    """The values of one of the pipeline's param sets, or None if the warehouse has none.

    Example:
        >>> import tempfile, pathlib
        >>> from prefect_genopt.warehouse import Warehouse
        >>> param_set_values(Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb"), "t", "ps")
    """
    rows = wh.sql(
        'SELECT "values" FROM param_sets WHERE pipeline = ? AND param_set_id = ?',
        [pipeline, param_set_id],
    )
    return dict(orjson.loads(rows[0]["values"])) if rows else None
