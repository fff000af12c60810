"""The benchmarks' timing probes patch library attributes by name: a rename in the library
must fail here, in the suite, and not only in ``make bench-quick`` after it."""

from __future__ import annotations

from bench.bench_optimizer import Probe


def test_optimizer_probe_installs_and_restores_every_patch() -> None:
    from prefect_genopt.optimize import evidence, runner
    from prefect_genopt.optimize.llm import LLMClient

    before = (evidence.setup_tracing, runner.collect, LLMClient.__dict__["complete"])
    with Probe().installed():
        assert evidence.setup_tracing is not before[0]
        assert runner.collect is not before[1]
    assert (evidence.setup_tracing, runner.collect, LLMClient.__dict__["complete"]) == before


def test_optimizer_probe_passes_query_options_through(tmp_path) -> None:
    from prefect_genopt.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    with Probe().installed():
        rows = wh.sql("SELECT '{\"a\": 1}'::JSON AS j", json=True)
    assert rows == [{"j": {"a": 1}}]
