"""Checks a command runs on what it was given before it reads: the warehouse is there, the
pipeline is one the warehouse knows.

A typo then fails in one line with exit status 2 instead of showing an empty result
("idle (code defaults)") or a traceback:

* :func:`require_warehouse`: a read command on a warehouse path that does not exist, with
  no spool data waiting to create it (a typo in ``--warehouse`` or ``GENOPT_WAREHOUSE``),
  raises :class:`~prefect_genopt.warehouse.WarehouseMissingError`. The Python
  :class:`~prefect_genopt.Warehouse` still creates a missing file, as it always did.
* :func:`require_pipeline`: a pipeline name the warehouse has never seen raises a
  ``CLIError`` "unknown pipeline 'triag'; known: triage".

Every command that takes a pipeline calls :func:`require_pipeline` (which calls
:func:`require_warehouse`), the read commands without one call :func:`require_warehouse`.

Example:
    >>> unknown_pipeline_message("triag", ["triage", "intake"])
    "unknown pipeline 'triag'; known: intake, triage"
    >>> unknown_pipeline_message("triage", [])
    "unknown pipeline 'triage'; the warehouse has no pipeline yet (run one first)"
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

__all__ = ["require_warehouse", "require_pipeline", "known_pipelines", "unknown_pipeline_message"]

#: The pipelines the warehouse has seen: declared (a run was ingested), with runs, or with
#: proposals.
KNOWN_PIPELINES_SQL = """
SELECT pipeline FROM pipelines
UNION
SELECT pipeline FROM runs WHERE pipeline IS NOT NULL
UNION
SELECT pipeline FROM proposals
ORDER BY 1
"""


def require_warehouse(ctx: Context) -> None:
    """Raise unless the context's warehouse file exists or its spool holds data that the
    first read loads (and so creates it).

    Raises:
        WarehouseMissingError: Neither exists: the message names the path and where it
            came from (``--warehouse`` or ``GENOPT_WAREHOUSE``, else the default).
    """
    from prefect_genopt import spool
    from prefect_genopt.warehouse.access import WarehouseMissingError

    path = ctx.warehouse_path
    if path.exists() or spool.list_files(ctx.settings.spool_dir):
        return
    raise WarehouseMissingError(
        f"no warehouse at {path} (and no spool data for it at {ctx.settings.spool_dir}); "
        "check --warehouse / GENOPT_WAREHOUSE for a typo. A pipeline run or `genopt ingest` "
        "creates it"
    )


def known_pipelines(ctx: Context) -> list[str]:
    """The names of the pipelines the context's warehouse has seen, sorted."""
    require_warehouse(ctx)
    return [r["pipeline"] for r in ctx.warehouse().sql(KNOWN_PIPELINES_SQL)]


def unknown_pipeline_message(name: str, known: Iterable[str]) -> str:
    """What a command says of a pipeline name the warehouse has never seen."""
    names = sorted(known)
    if not names:
        return f"unknown pipeline {name!r}; the warehouse has no pipeline yet (run one first)"
    return f"unknown pipeline {name!r}; known: {', '.join(names)}"


def require_pipeline(ctx: Context, name: str | None) -> None:
    """Raise unless the warehouse has seen pipeline ``name`` (None: no pipeline given, only
    the warehouse is checked).

    Raises:
        WarehouseMissingError: See :func:`require_warehouse`.
        CLIError: "unknown pipeline 'triag'; known: triage" (exit status 2).
    """
    from prefect_genopt.cli import CLIError

    if name is None:
        require_warehouse(ctx)
        return
    known = known_pipelines(ctx)
    if name not in known:
        raise CLIError(unknown_pipeline_message(name, known))
