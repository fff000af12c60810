"""The trace warehouse: schema, spool ingester, readers and the OTLP receiver."""

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
