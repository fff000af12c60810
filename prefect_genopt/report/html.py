"""Render the report's data as one self-contained HTML page, and write it.

The page is ``assets/report.html`` with its placeholders filled: the stylesheet
(``assets/report.css``), the chart library (``vendor/echarts-<version>.min.js``, Apache
ECharts, pinned, with its licence beside it), the page's script (``assets/report.js``) and
the data as a JSON ``<script>`` block. Nothing is fetched: no ``src=``, no ``href=`` to
another file, no web font. Text from the warehouse reaches the page only as JSON and
is put into the DOM as text, never as HTML.

Example:
    >>> page = render({"pipeline": "triage", "kpis": [], "marks": [], "rollouts": [],
    ...                "proposals": [], "nights": [], "traces": [], "usage": [],
    ...                "generated_at": "2026-12-06T00:00:00", "since": None, "days": 30})
    >>> page.startswith("<!DOCTYPE html>") and "echarts" in page
    True
    >>> "</script><script>alert(1)" in render({"pipeline": "</script><script>alert(1)"})
    False
"""

from __future__ import annotations

import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

__all__ = ["render", "write_report", "ECHARTS_VERSION", "ECHARTS_FILE"]

#: The vendored chart library's version (``vendor/echarts-<version>.min.js``).
ECHARTS_VERSION = "6.1.0"
ECHARTS_FILE = f"echarts-{ECHARTS_VERSION}.min.js"
_PLACEHOLDER = re.compile(r"\{\{(TITLE|STYLE|LIBRARY|DATA|SCRIPT)\}\}")


def _asset(*parts: str) -> str:
    return resources.files(__package__).joinpath(*parts).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` and the line
    separators escaped, so no value can close the element or open a comment."""
    text = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text


def render(data: dict[str, Any]) -> str:
    """The report page of :func:`~prefect_genopt.report.data.report_data`'s ``data``."""
    page = _asset("assets", "report.html")
    library = _asset("vendor", ECHARTS_FILE)
    if "</script" in library.lower():  # the inlined file must not end its element early
        raise ValueError(f"{ECHARTS_FILE} contains '</script' and cannot be inlined")
    parts = {
        "TITLE": _html_text(f"genopt report: {data.get('pipeline', '')}"),
        "STYLE": _asset("assets", "report.css"),
        "LIBRARY": library,
        "DATA": _script_json(data),
        "SCRIPT": _asset("assets", "report.js"),
    }
    # one pass over the template: an inserted text is never searched for placeholders
    pieces = _PLACEHOLDER.split(page)
    return "".join(parts[p] if i % 2 else p for i, p in enumerate(pieces))


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(data: dict[str, Any], out: str | Path) -> Path:
    """Render ``data`` and write it to ``out`` atomically (a temporary file, then a
    rename); returns the path written."""
    path = Path(out).expanduser()
    page = render(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
