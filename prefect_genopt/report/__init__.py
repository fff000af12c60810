"""``genopt report``: one self-contained HTML file of a pipeline's loop.

KPI over time per param set (with proposals, rollouts and pins marked), each rollout's
arms per step, the proposals with their evidence and lineage, the optimizer's nights, a
trace view of the last runs and LLM usage per day and model. The page needs no network:
its data, styles, script and the chart library (Apache ECharts, vendored as one file with
its licence in ``vendor/``) are inline.

:mod:`~prefect_genopt.report.data` and :mod:`~prefect_genopt.report.traces` read the
warehouse; :mod:`~prefect_genopt.report.html` renders the page. The names below are
imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_genopt._lazy import attach

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these
    from prefect_genopt.report.data import report_data
    from prefect_genopt.report.html import render, write_report

__all__ = ["report_data", "render", "write_report"]

__getattr__, __dir__ = attach(
    __name__,
    {
        "report_data": "data",
        **dict.fromkeys(("render", "write_report"), "html"),
    },
)
