"""The report renders in a real browser: headless Chromium over the DevTools protocol.

The charts drew (SVG elements, one data point per value), the page logged no error, a
trace row expands into its span tree, and the page made no network request (seen as
requests, ``Network.requestWillBeSent``, not by reading the page's text: the vendored
library and user text may hold URL strings). Skipped, with the reason, where Chromium
is missing; with ``CI=true`` a missing Chromium fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_genopt.report import report_data, write_report
from prefect_genopt.warehouse import Warehouse
from tests.report.browser import Browser, find_chromium
from tests.report.seed import Seeded

pytestmark = pytest.mark.e2e

CHROMIUM = find_chromium()


def chromium_or_skip(binary: str | None) -> str:
    """The Chromium binary; without one, skip with the reason, or fail under ``CI=true``."""
    if binary is None:
        reason = "Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}; .ci/run installs it")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless Chromium for the module's tests."""
    b = Browser(chromium_or_skip(CHROMIUM), tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


CHARTS_JS = """
JSON.stringify(window.genoptReport.charts.map(function (c) {
  var dom = c.getDom();
  return {
    section: dom.closest("section").id,
    svg: dom.querySelectorAll("svg").length,
    paths: dom.querySelectorAll("svg path").length,
    series: c.getOption().series.map(function (s) {
      return {name: s.name, points: (s.data || []).filter(function (d) {
        var v = Array.isArray(d) ? d[1] : (d && d.value !== undefined ? d.value : d);
        return Array.isArray(v) ? v[1] !== null : v !== null && v !== undefined;
      }).length};
    })
  };
}))
"""


def test_report_renders_in_chromium(browser: Browser, seeded: Seeded, tmp_path: Path) -> None:
    import json

    data = report_data(Warehouse(seeded.path), "triage", traces=10)
    page = write_report(data, tmp_path / "report.html")
    url = page.resolve().as_uri()
    browser.open(url)
    assert browser.evaluate("window.genoptReport && window.genoptReport.ready") is True

    charts = json.loads(browser.evaluate(CHARTS_JS))
    by_section: dict[str, list[dict]] = {}
    for c in charts:
        by_section.setdefault(c["section"], []).append(c)
        assert c["svg"] == 1 and c["paths"] > 10, c  # drawn, as SVG
    assert {"kpi", "rollouts", "nights", "usage"} <= set(by_section)
    # one point per daily mean of each param set, per rollout check, per candidate
    kpi_points = {
        s["name"]: s["points"] for s in by_section["kpi"][0]["series"] if "95%" not in s["name"]
    }
    for ps in data["kpis"][0]["param_sets"]:
        assert kpi_points[ps["param_set_id"][:11]] == len(ps["days"])  # "ps_" + 8 hex
    ro = {s["name"]: s["points"] for s in by_section["rollouts"][0]["series"]}
    assert ro["canary"] == ro["stable"] == ro["decision"] == len(data["rollouts"][0]["checks"])
    night = {s["name"]: s["points"] for s in by_section["nights"][0]["series"]}
    cands = data["nights"][0]["candidates"]
    assert night["selection"] == len(cands)
    assert night["confirmation"] == sum(1 for c in cands if c["confirmation"])
    # the event marks are drawn on the KPI chart
    assert browser.evaluate(
        "genoptReport.charts[0].getOption().series.slice(-1)[0].markLine.data.length"
    ) == len(data["marks"])

    # a trace row expands into its span tree, with the LLM call's messages
    expand = """
    (function () {
      var row = document.querySelector("tr.run-row");
      var detail = row.nextElementSibling;
      var before = detail.hidden;
      row.click();
      return JSON.stringify({before: before, after: detail.hidden, run: row.dataset.runId,
        spans: detail.querySelectorAll(".span").length,
        llm: detail.querySelectorAll(".badge.llm").length,
        inputs: Array.from(detail.querySelectorAll("pre.inputs")).map(function (p) {
          return p.textContent; })});
    })()
    """
    got = json.loads(browser.evaluate(expand))
    run = data["traces"][0]
    assert got["before"] is True and got["after"] is False and got["run"] == run["run_id"]
    assert got["spans"] == len(run["spans"])
    assert got["llm"] == sum(1 for s in run["spans"] if s["type"] == "llm") > 0
    assert any("Classify the ticket" in text for text in got["inputs"])

    assert browser.errors() == []
    assert browser.requests() == [url]  # the page itself, nothing else


def test_the_request_check_sees_a_request(browser: Browser, tmp_path: Path) -> None:
    """The check above can fail: a page that loads an image is seen requesting it."""
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/pixel.png">', encoding="utf-8")
    browser.open(page.resolve().as_uri())
    assert "http://127.0.0.1:9/pixel.png" in browser.requests()


def test_missing_chromium_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium is not installed"):
        chromium_or_skip(None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        chromium_or_skip(None)
    assert chromium_or_skip("chromium") == "chromium"


def test_an_empty_report_says_so_without_errors(
    browser: Browser, warehouse_path: Path, tmp_path: Path
) -> None:
    data = report_data(Warehouse(warehouse_path), "triage")
    page = write_report(data, tmp_path / "empty.html")
    browser.open(page.resolve().as_uri())
    assert browser.evaluate("window.genoptReport.ready") is True
    assert browser.evaluate("window.genoptReport.charts.length") == 0
    assert browser.evaluate("document.querySelectorAll('section p.empty').length") == 6
    assert browser.errors() == []
