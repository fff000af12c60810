"""Fixtures of the report's tests: a seeded warehouse (real records, real ingest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.seed import Seeded, seed


@pytest.fixture
def seeded(warehouse_path: Path) -> Seeded:
    """Ten days of ``triage`` runs with feedback, a night, a rollout, proposals and a pin."""
    return seed(warehouse_path)
