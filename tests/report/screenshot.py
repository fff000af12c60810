"""Make docs/report.png: the report of the seeded warehouse in headless Chromium, with the
newest run's trace open down to its first LLM call.

Usage: ``python -m tests.report.screenshot docs/report.png``
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from prefect_genopt.report import report_data, write_report
from prefect_genopt.warehouse import Warehouse
from tests.report.browser import Browser, find_chromium
from tests.report.seed import seed

OPEN_TRACE = """
(function () {
  var row = document.querySelector("tr.run-row");
  row.click();
  var detail = row.nextElementSibling;
  var task = detail.querySelector(".span.root .span > details");
  task.open = true;
  var llm = task.querySelector(".span > details");
  if (llm) llm.open = true;
  return document.documentElement.scrollHeight;
})()
"""


def main(out: Path) -> None:
    binary = find_chromium()
    if binary is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        path = seed(Path(tmp) / "warehouse.duckdb", days=14).path
        page = write_report(report_data(Warehouse(path), "triage", traces=6), Path(tmp) / "r.html")
        b = Browser(binary, Path(tmp) / "profile", width=1280, height=900)
        try:
            b.open(page.resolve().as_uri())
            height = b.evaluate(OPEN_TRACE)
            b.screenshot(out, height)
        finally:
            b.close()
    print(f"wrote {out} ({out.stat().st_size:,} bytes, 1280x{height})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
