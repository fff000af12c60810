"""The redaction corpus: secret forms that must never be stored, and lookalikes that must.

Each secret is ``(text, secret)``: ``text`` as it could reach a span, a run's inputs, a
comment or a log line, and ``secret`` the part that must not survive anywhere. The
lookalikes are ordinary text that looks like a secret to a careless pattern; they must be
stored unchanged. Used by tests/test_redaction_corpus.py and bench/bench_redaction.py; run
your own redaction settings against it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: (text, the secret in it)
SECRETS: list[tuple[str, str]] = [
    # AWS, key=value and environment forms
    (
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "export AWS_SECRET_ACCESS_KEY=Zx9pQw8sEr7tTy6uUi5oOp4aAs3dDf2g",
        "Zx9pQw8sEr7tTy6uUi5oOp4aAs3dDf2g",
    ),
    (
        "[default]\naws_secret_access_key = Hj3kL4mN5pQ6rS7tU8vW9xY0zA1bC2dE",
        "Hj3kL4mN5pQ6rS7tU8vW9xY0zA1bC2dE",
    ),
    ("aws s3 ls --profile prod  # key AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    (
        "AWS_SESSION_TOKEN=FwoGZXIvYXdzEJr1K2JmU3VwZXJTZWNyZXQ",
        "FwoGZXIvYXdzEJr1K2JmU3VwZXJTZWNyZXQ",
    ),
    # Authorization headers
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
    (
        "curl -H 'Authorization: Basic YWRtaW46czNjcjN0IQ==' https://api.internal",
        "YWRtaW46czNjcjN0IQ==",
    ),
    ('{"headers": {"authorization": "Basic Ym9iOnBhc3N3b3JkMTIz"}}', "Ym9iOnBhc3N3b3JkMTIz"),
    ("Proxy-Authorization: Basic cHJveHk6cHJveHlwYXNz", "cHJveHk6cHJveHlwYXNz"),
    ("Authorization: Bearer 9f8e7d6c5b4a39281706abcd", "9f8e7d6c5b4a39281706abcd"),
    ("sent with bearer 0a1b2c3d4e5f6a7b8c9d0e1f", "0a1b2c3d4e5f6a7b8c9d0e1f"),
    # credentials in URLs
    ("postgresql://app:Pa55w0rd!x@db.internal:5432/prod", "Pa55w0rd!x"),
    ("mysql://root:toor1234@127.0.0.1:3306/shop", "toor1234"),
    ("redis://:r3d1sP4ss@cache:6379/0", "r3d1sP4ss"),
    ("git clone https://deploy:s3cr3tT0ken9@github.com/org/repo.git", "s3cr3tT0ken9"),
    ("amqp://guest:Gu3stP4ssw0rd@rabbit:5672/vhost", "Gu3stP4ssw0rd"),
    # English phrasing
    ("the password is Tr0ub4dor&3", "Tr0ub4dor&3"),
    ("My password was hunter2x before I changed it", "hunter2x"),
    ("The API key is 8c1f2e3d4b5a69788776", "8c1f2e3d4b5a69788776"),
    ("the wifi password is: CoffeeShop2024", "CoffeeShop2024"),
    ("the token is now 7a8b9c0d1e2f3a4b.", "7a8b9c0d1e2f3a4b"),
    ('The passphrase was "blue-elephant-42"', "blue-elephant-42"),
    # name=value, YAML, JSON text
    ("password=hunter22&user=bob", "hunter22"),
    ('{"client_secret": "cs_9d8f7g6h5j4k3l2m"}', "cs_9d8f7g6h5j4k3l2m"),
    ("DB_PASS=Sup3rS3cretDb", "Sup3rS3cretDb"),
    ("db_password: 'k8s-Passw0rd'", "k8s-Passw0rd"),
    ("x-api-key: 0a1b2c3d4e5f6a7b8c9d", "0a1b2c3d4e5f6a7b8c9d"),
    ('passphrase = "correct-horse-battery-staple"', "correct-horse-battery-staple"),
    (
        "private_key=MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oFsrUPLTbDiT",
        "MHcCAQEEIBkg4LVWM9nuwNSk",
    ),
    ("refresh_token: 1//0gLm9vbGVhbnNlY3JldHRva2Vu", "1//0gLm9vbGVhbnNlY3JldHRva2Vu"),
    # provider key shapes
    (
        "GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ),
    (
        "key sk-proj-abcdefghijklmnopqrstuvwxyz012345 in the env",
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    ),
    ("anthropic sk-ant-api03-abcdefghijklmnopqrstuvwx", "sk-ant-api03-abcdefghijklmnopqrstuvwx"),
    ("slack xoxb-123456789012-abcdefghijklmnop", "xoxb-123456789012-abcdefghijklmnop"),
    ("gitlab glpat-abcdefghij1234567890", "glpat-abcdefghij1234567890"),
    ("maps AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("hub hf_abcdefghijklmnopqrstuvwxyzABCDEF12", "hf_abcdefghijklmnopqrstuvwxyzABCDEF12"),
    ("app ghs_16C7e42F292c6912E7710c838347Ae178B4a", "ghs_16C7e42F292c6912E7710c838347Ae178B4a"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0T",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0T",
    ),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
        "-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo",
    ),
]

#: Text that must be stored exactly as it is.
LOOKALIKES: list[str] = [
    "The password policy requires 12 characters.",
    "max_tokens=512",
    "token_count: 1234",
    "input_tokens: 42, output_tokens: 7",
    "Please reset your password via the portal.",
    "the password is incorrect",
    "The password was changed yesterday.",
    "Your API key is required to continue.",
    "The token was invalid.",
    "the secret sauce is butter",
    "sort_key=created_at",
    "item_key=ticket-4821",
    "primary_key: order_id",
    "cache_key=abc123def456",
    "password_hint=first pet",
    "secrets: none",
    "password=null",
    "token: ${GITHUB_TOKEN}",
    "https://example.com:8443/path?q=1",
    "ssh://git@github.com/org/repo.git",
    "mailto:support@example.com",
    "http://localhost:4318/v1/traces",
    "https://user@example.com/profile",
    "The Basic plan costs $10 per month.",
    "basic authentication is disabled",
    "the bearer of bad news",
    "Bearer tokens expire after one hour.",
    "secretary: Jane Doe",
    "tokenizer=bpe",
    "keyboard: logitech",
    "monkey=banana",
    "api_version=2024-01-01",
    "Set PWD=/home/user first",
    "sk-learn is a typo of scikit-learn",
    "AKIA is the prefix of AWS access key ids",
    "author: bob",
    "The quick brown fox jumps over the lazy dog.",
]


@dataclass
class Config:
    """A dataclass whose field names say they hold secrets."""

    host: str
    password: str
    api_key: str


def nested(depth: int, key: str, secret: str) -> dict[str, Any]:
    """``{"level": {"level": ... {key: secret}}}``, ``depth`` levels deep."""
    value: dict[str, Any] = {key: secret, "note": "kept"}
    for _ in range(depth):
        value = {"level": value}
    return value


def structures() -> list[tuple[Any, str]]:
    """Values whose secrets are found by their keys, at any depth (``(value, secret)``)."""
    loop: dict[str, Any] = {"name": "loop", "password": "l00pP4ssw0rd"}
    loop["self"] = loop
    return [
        (nested(11, "client_secret", "cs-deep-11-levels-0123"), "cs-deep-11-levels-0123"),
        (nested(300, "api_key", "deeper-than-orjson-goes-9"), "deeper-than-orjson-goes-9"),
        (nested(3, "AWS_SECRET_ACCESS_KEY", "nestedAwsSecret12345"), "nestedAwsSecret12345"),
        ({"auth": ("bob", "tuplePassw0rd")}, "tuplePassw0rd"),
        ({"headers": {"Cookie": "session=abcdef0123456789"}}, "abcdef0123456789"),
        ([{"x-api-key": "listedApiKey0987"}], "listedApiKey0987"),
        (Config("db.internal", "dataclassPassw0rd", "dcApiKey777"), "dataclassPassw0rd"),
        (loop, "l00pP4ssw0rd"),
    ]
