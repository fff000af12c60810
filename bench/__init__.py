"""The benchmarks behind ``docs/benchmarks.md``, one module each, run from the repository root.

    python -m bench.bench_tracing            # a full run: bench/results/bench_tracing.json
    python -m bench.bench_tracing --quick    # a smoke run with scripted models (make bench-quick)

:mod:`bench.common` holds what they share: settings (``GENOPT_BENCH_DATA``,
``GENOPT_BENCH_WORK``, ``GENOPT_BENCH_RESULTS``), progress lines, machine facts,
statistics, tables, JSON results and realistic spool records.
"""
