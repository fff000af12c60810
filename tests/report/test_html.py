"""The page is one self-contained file: nothing to fetch, user text only as data."""

from __future__ import annotations

import re
from pathlib import Path

from prefect_genopt.report import render, report_data, write_report
from prefect_genopt.report.html import ECHARTS_FILE, ECHARTS_VERSION
from prefect_genopt.warehouse import Warehouse
from tests.report.seed import Seeded

VENDOR = Path(__file__).resolve().parents[2] / "prefect_genopt" / "report" / "vendor"


def _markup(page: str) -> str:
    """The page without the inline scripts' and styles' bodies (the HTML itself)."""
    return re.sub(r"(<(script|style)[^>]*>).*?(</\2>)", r"\1\3", page, flags=re.S)


def test_page_inlines_everything_and_references_no_file(seeded: Seeded) -> None:
    page = render(report_data(Warehouse(seeded.path), "triage"))
    html = _markup(page)
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html)
    assert not re.search(r"\bsrc\s*=", html)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    assert "default-src 'none'" in html  # and the browser is told to fetch nothing
    library = (VENDOR / ECHARTS_FILE).read_text(encoding="utf-8")
    assert library in page and f'version:"{ECHARTS_VERSION}"' in library.replace(" ", "")


def test_vendored_library_is_pinned_with_its_licence() -> None:
    assert (VENDOR / ECHARTS_FILE).is_file()
    assert "Apache License" in (VENDOR / "echarts-LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache ECharts" in (VENDOR / "echarts-NOTICE.txt").read_text(encoding="utf-8")
    assert [p.name for p in VENDOR.glob("*.js")] == [ECHARTS_FILE]  # one file, one version


def test_user_text_cannot_close_the_data_script(seeded: Seeded) -> None:
    data = report_data(Warehouse(seeded.path), "triage")
    evil = "</script><script>alert('x')</script><!--"
    data["proposals"][0]["reasoning"] = evil
    page = render(data)
    assert evil not in page
    assert page.count("</script>") == 3  # the library, the data, the page's script


def test_write_report_replaces_the_file_whole(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.html"
    data = report_data(Warehouse(seeded.path), "triage")
    assert write_report(data, out) == out
    first = out.read_text(encoding="utf-8")
    write_report({**data, "pipeline": "again"}, out)
    assert out.read_text(encoding="utf-8") != first
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary file left
