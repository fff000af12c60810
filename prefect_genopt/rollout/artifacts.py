"""What the optimizer and canary flows show in the Prefect UI, besides their Markdown.

The report's charts cannot live in an artifact's Markdown: Prefect 3.8.8's default UI
(v2) drops an inline ``<svg>`` (only its text labels show), and the v1 UI removes scripts,
styles and ``style`` attributes (checked in headless Chromium, see the README). The series
behind them can: a **table artifact** keeps one row per point, and every run of the flow
adds a version under the same key, so the UI's artifact page shows the history.

* the canary flow: each check of the rollout, both arms side by side (n, mean, 95%
  interval), the weight, the verdict and the decision (:func:`arms_rows`);
* the optimizer flow: the pipeline's daily KPI per param set and arm, with a 95%
  interval (:func:`kpi_rows`);
* both: a **link artifact** to the pipeline's ``genopt report`` page where you publish
  it (``GENOPT_REPORT_URL``, ``{pipeline}`` replaced by the name; http(s) only: a local
  file cannot be opened from the UI). Unset, there is no link.

Example:
    >>> report_url("triage", "https://reports.example.com/genopt/{pipeline}.html")
    'https://reports.example.com/genopt/triage.html'
    >>> report_url("a b", "https://r.example.com/?p={pipeline}")
    'https://r.example.com/?p=a%20b'
    >>> report_url("triage", "reports/report.html") is None  # a local file: no link
    True
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import quote

import orjson

from prefect_genopt.locks import slug
from prefect_genopt.settings import get_settings
from prefect_genopt.warehouse import Warehouse

__all__ = [
    "arms_rows",
    "kpi_rows",
    "report_url",
    "publish_arms",
    "publish_kpi",
    "publish_report_link",
]

logger = logging.getLogger("prefect_genopt.rollout")

#: most rows a table artifact gets (the newest)
MAX_ROWS = 200


def _num(x: Any, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _ci(value: Any) -> str:
    ci = orjson.loads(value) if isinstance(value, str | bytes) else value
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    lo, hi = float(ci[0]), float(ci[1])
    return f"{lo:.4g} .. {hi:.4g}" if math.isfinite(lo) and math.isfinite(hi) else ""


def arms_rows(wh: Warehouse, rollout_id: str, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
    """One row per check of the rollout, oldest first: both arms' n, mean and interval."""
    rows = wh.sql(
        "SELECT * FROM (SELECT * FROM rollout_analyses WHERE rollout_id = ? "
        "ORDER BY created_at DESC LIMIT ?) ORDER BY created_at",
        [rollout_id, limit],
    )
    return [
        {
            "checked_utc": f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            "step": r["step"],
            "weight": _num(r["weight"], 3),
            "stable_n": r["n_stable"],
            "stable_mean": _num(r["mean_stable"]),
            "stable_ci95": _ci(r["ci_stable"]),
            "canary_n": r["n_canary"],
            "canary_mean": _num(r["mean_canary"]),
            "canary_ci95": _ci(r["ci_canary"]),
            "effect": _num(r["effect"]),
            "verdict": r["verdict"],
            "decision": r["decision"],
        }
        for r in rows
    ]


def kpi_rows(
    wh: Warehouse, pipeline: str, days: float = 14, limit: int = MAX_ROWS
) -> list[dict[str, Any]]:
    """The pipeline's daily KPI per param set and arm over the last ``days``, oldest first,
    with a normal 95% interval of the mean."""
    rows = wh.sql(
        "SELECT * FROM (SELECT day, kpi, param_set_id, arm, n, mean, stddev "
        "FROM kpi_by_param_set_day WHERE pipeline = ? "
        "AND day >= CAST(current_date - CAST(? AS INTEGER) AS DATE) "
        "ORDER BY day DESC, kpi, param_set_id, arm LIMIT ?) ORDER BY day, kpi, param_set_id, arm",
        [pipeline, math.ceil(days), limit],
    )
    out = []
    for r in rows:
        half = (
            1.96 * r["stddev"] / math.sqrt(r["n"])
            if r["stddev"] is not None and r["n"] > 1
            else None
        )
        out.append(
            {
                "day": f"{r['day']:%Y-%m-%d}",
                "kpi": r["kpi"],
                "param_set": r["param_set_id"],
                "arm": r["arm"],
                "n": r["n"],
                "mean": _num(r["mean"]),
                "ci95_low": _num(r["mean"] - half) if half is not None else None,
                "ci95_high": _num(r["mean"] + half) if half is not None else None,
            }
        )
    return out


def report_url(pipeline: str, template: str | None = None) -> str | None:
    """The URL of ``pipeline``'s published report (``GENOPT_REPORT_URL`` by default), or
    None when unset or not an http(s) URL."""
    template = template if template is not None else get_settings().report_url
    if not template:
        return None
    if not template.startswith(("http://", "https://")):
        logger.warning(
            "GENOPT_REPORT_URL %r is not an http(s) URL: no report link (a local file "
            "cannot be opened from the Prefect UI; publish the report on a web server)",
            template,
        )
        return None
    return template.replace("{pipeline}", quote(pipeline, safe=""))


def _table(rows: list[dict[str, Any]], key: str, description: str) -> bool:
    if not rows:
        return False
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=rows, key=key, description=description)
    return True


def publish_arms(wh: Warehouse, pipeline: str, rollout_id: str | None) -> bool:
    """The canary flow's table artifact ``genopt-canary-<pipeline>-arms`` (False: no checks)."""
    if not rollout_id:
        return False
    return _table(
        arms_rows(wh, rollout_id),
        f"genopt-canary-{slug(pipeline)}-arms",
        f"genopt rollout {rollout_id} of {pipeline}: both arms per check (KPI mean, 95% CI)",
    )


def publish_kpi(wh: Warehouse, pipeline: str, days: float = 14) -> bool:
    """The optimizer flow's table artifact ``genopt-optimize-<pipeline>-kpi`` (False: no
    KPI values in the window)."""
    return _table(
        kpi_rows(wh, pipeline, days),
        f"genopt-optimize-{slug(pipeline)}-kpi",
        f"{pipeline}: daily KPI per param set and arm, last {days:g} days (mean, 95% CI)",
    )


def publish_report_link(pipeline: str) -> str | None:
    """A link artifact ``genopt-report-<pipeline>`` to the published report, if configured."""
    url = report_url(pipeline)
    if url is None:
        return None
    from prefect.artifacts import create_link_artifact

    create_link_artifact(
        link=url,
        link_text=f"genopt report of {pipeline}",
        key=f"genopt-report-{slug(pipeline)}",
        description=f"genopt report of {pipeline}: KPI over time, rollouts, proposals, traces",
    )
    return url
