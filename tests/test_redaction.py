"""Secrets never reach storage; long values are cut with a visible marker."""

from __future__ import annotations

import pytest

from prefect_genopt.redaction import REDACTED, clean, redact, to_text, truncate


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-api03-abcdefghijklmnopqrstuvwx",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAABCDEFGHIJKLMNOP",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_known_key_shapes_are_redacted(secret: str) -> None:
    out = redact(f"config uses {secret} today")
    assert secret not in out and REDACTED in out and out.startswith("config uses")


def test_bearer_and_assignments_keep_their_label() -> None:
    assert redact("Authorization: Bearer abc.def-123") == "Authorization: Bearer [REDACTED]"
    assert redact("password=hunter22&user=bob") == "password=[REDACTED]&user=bob"
    assert redact('{"api_key": "xyz12345"}') == '{"api_key": "[REDACTED]"}'


def test_secret_keys_in_structures() -> None:
    text = to_text({"headers": {"Authorization": "Basic Zm9vOmJhcg=="}, "q": "hi"})
    assert "Zm9vOmJhcg" not in text and '"q":"hi"' in text


def test_extra_patterns_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENOPT_REDACT_PATTERNS", '["ACME-[0-9]{6}"]')
    assert redact("customer ACME-123456 called") == f"customer {REDACTED} called"


def test_ordinary_text_is_untouched() -> None:
    text = "The token count was 42 and the password policy changed."
    assert redact(text) == text


def test_truncate_marks_the_cut_and_respects_the_limit() -> None:
    out = truncate("a" * 10_000, 100)
    assert len(out) <= 100 and out.endswith("of 10000 chars]") and "truncated" in out
    assert truncate("short", 100) == "short"


def test_clean_redacts_before_truncating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENOPT_MAX_VALUE_CHARS", "64")
    out = clean({"text": "x" * 10 + " sk-proj-abcdefghijklmnopqrstuvwxyz " + "y" * 200})
    assert "sk-proj" not in out and len(out) <= 64


def test_unserializable_values_fall_back_to_repr() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<Odd>"

    assert to_text({"o": Odd(), "s": {1}}) == '{"o":"<Odd>","s":["1"]}'
