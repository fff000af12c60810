"""How every ``genopt`` command prints: aligned tables, JSON, CSV.

Example:
    >>> print_rows(["a", "b"], [(1, None)], "table")
    a | b
    --+-----
    1 | NULL
    (1 row)
    >>> print_rows(["a"], [(1,)], "json")
    [
      {
        "a": 1
      }
    ]

CSV lines end in ``\n`` (not the csv module's ``\r\n``), so ``$(genopt sql ... --csv |
tail -1)`` is the value alone. JSON-typed columns are nested in ``--json`` output when the
rows were fetched parsed (:meth:`prefect_genopt.Warehouse.sql` with ``json=True``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import orjson

__all__ = [
    "cell",
    "format_table",
    "dumps_json",
    "print_json",
    "print_rows",
    "as_dicts",
    "nest_json",
]

Format = Literal["table", "json", "csv"]


def cell(value: Any, width: int) -> str:
    """One value as table text: NULL for None, 6 significant digits for floats, one line,
    cut to ``width`` characters with an ellipsis.

    Example:
        >>> cell(1 / 3, 10), cell(None, 10), cell("abcdefgh", 5)
        ('0.333333', 'NULL', 'abcd…')
    """
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ", timespec="seconds")
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(columns: list[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Rows as an aligned text table.

    Example:
        >>> print(format_table(["a", "b"], [(1, None)]))
        a | b
        --+-----
        1 | NULL
        (1 row)
    """
    cells = [[cell(v, max_width) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    ]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, dt.date | dt.datetime):
        return obj.isoformat()
    return str(obj)


def dumps_json(obj: Any) -> str:
    """``obj`` as indented JSON (dates as ISO 8601; anything else unknown as its text).

    Example:
        >>> print(dumps_json({"at": dt.date(2026, 11, 22), "n": 1}))
        {
          "at": "2026-11-22",
          "n": 1
        }
    """
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_INDENT_2).decode()


def print_json(obj: Any) -> None:
    """Write ``obj`` to stdout as indented JSON (see :func:`dumps_json`)."""
    sys.stdout.write(dumps_json(obj) + "\n")


def nest_json(row: dict[str, Any], json_columns: Iterable[str]) -> dict[str, Any]:
    """``row`` with the text of its JSON-typed columns parsed, for ``--json`` output of rows
    read as text (DuckDB returns JSON values as their text).

    Example:
        >>> nest_json({"id": "p1", "diff": '{"a": 1}', "note": None}, ["diff", "note"])
        {'id': 'p1', 'diff': {'a': 1}, 'note': None}
    """
    out = dict(row)
    for name in json_columns:
        if isinstance(out.get(name), str):
            out[name] = orjson.loads(out[name])
    return out


def as_dicts(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name."""
    return [dict(zip(columns, r, strict=True)) for r in rows]


def print_rows(
    columns: list[str], rows: Sequence[Sequence[Any]], fmt: Format, max_width: int = 60
) -> None:
    """Write a result to stdout as a table, a JSON list of objects, or CSV."""
    if fmt == "json":
        print_json(as_dicts(columns, rows))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        print(format_table(columns, rows, max_width))
