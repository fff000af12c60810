"""The trace warehouse: schema, spool ingester, readers and the OTLP receiver.

Two layers live here: :mod:`~prefect_genopt.warehouse.access` (opening the file,
waiting on its lock) and :mod:`~prefect_genopt.warehouse.schema` are storage primitives
that code inside a pipeline run reads through (a feedback's run check, step replay);
the :class:`Warehouse`, the ingester and the receiver sit above the run. The names below
are imported on first use (PEP 562), so importing a primitive loads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_genopt._lazy import attach

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these
    from prefect_genopt.warehouse.access import WarehouseBusyError, WarehouseMissingError
    from prefect_genopt.warehouse.ingest import Ingester, IngestResult, ingest
    from prefect_genopt.warehouse.warehouse import Warehouse, as_warehouse

__all__ = [
    "Warehouse",
    "as_warehouse",
    "Ingester",
    "IngestResult",
    "ingest",
    "WarehouseBusyError",
    "WarehouseMissingError",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        **dict.fromkeys(("WarehouseBusyError", "WarehouseMissingError"), "access"),
        **dict.fromkeys(("Ingester", "IngestResult", "ingest"), "ingest"),
        **dict.fromkeys(("Warehouse", "as_warehouse"), "warehouse"),
    },
)
