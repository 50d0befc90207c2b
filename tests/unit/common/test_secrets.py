"""PII redaction catches secrets in the shapes secret scanners (gitleaks, detect-secrets) know:
cloud secret keys, not only their access-key ids; and leaves ordinary text alone."""

from __future__ import annotations

import time

import pytest

from tuneforge.common.text.pii import redact

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
GCP_PEM = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\\n-----END PRIVATE KEY-----\\n"

SECRETS = [
    ("aws secret env var", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET),
    ("aws credentials file", f"[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {AWS_SECRET}",
     AWS_SECRET),
    ("aws secret in prose", f"our AWS key is {AWS_SECRET}, keep it safe", AWS_SECRET),
    ("aws json (CLI output)", f'{{"AccessKeyId": "ASIAIOSFODNN7EXAMPLE", "SecretAccessKey": "{AWS_SECRET}"}}',
     AWS_SECRET),
    ("gcp service account key", f'{{"type": "service_account", "private_key": "{GCP_PEM}"}}', "MIIEvQIBADANBgkq"),
    ("gcp api key", "key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("google oauth client secret", "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", "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"),
    ("azure storage connection string",
     f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={AZURE_KEY};EndpointSuffix=core.windows.net",
     AZURE_KEY),
    ("azure ad client secret", "AZURE_CLIENT_SECRET 8Xy8Q~abcdefghijklmnopqrstuvwxyz0123456",
     "8Xy8Q~abcdefghijklmnopqrstuvwxyz0123456"),
    ("azure sas url", "https://a.blob.core.windows.net/c/b?sv=2020-08-04&sig=K3sdfIUHsdfKJHsdf8734sdfKJHsdf9874sdfKJH%2Bsdf%3D",
     "K3sdfIUHsdfKJHsdf8734"),
    ("github classic token", "token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
    ("github fine-grained", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11ABCDEFG"),
    ("gitlab", "glpat-xYz12345678901234567", "glpat-xYz12345678901234567"),
    ("slack bot token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012"),
    ("slack webhook", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "T00000000/B00000000"),
    ("stripe live key", "stripe: sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("stripe webhook secret", "whsec_abcdefghijklmnopqrstuvwxyz012345", "whsec_abcdefghijklmnopqrstuvwxyz012345"),
    ("openai key", "sk-proj-abc123def456ghi789jkl012mno345", "sk-proj-abc123def456ghi789jkl012mno345"),
    ("hugging face token", "HF_TOKEN hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"),
    ("npm token", "npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("sendgrid", "SG.abcdefghijklmnopqrstuv.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "SG.abcdefghijklmnop"),
    ("pgp private key", "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0abc\n-----END PGP PRIVATE KEY BLOCK-----",
     "lQOYBF0abc"),
    ("openssh key cut off", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "b3BlbnNzaC1rZXkt"),
    ("database url password", "postgres://admin:hunter2secret@db.internal:5432/app", "hunter2secret"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9"),
]


@pytest.mark.parametrize("text, secret", [(t, s) for _, t, s in SECRETS], ids=[n for n, _, _ in SECRETS])
def test_secrets_are_redacted(text: str, secret: str) -> None:
    redacted, counts = redact(text)
    assert secret not in redacted and counts["secret"] >= 1


@pytest.mark.parametrize("text", [
    "The Amazon rainforest covers 5,500,000 square kilometres of the basin.",
    "See https://example.com/docs/a/b?page=2&sort=asc for the details.",
    "Our AWS bill rose by 12 percent this quarter, mostly compute.",
    "The sha256 of the file is listed in the manifest next to its size.",
    "Use the key on the left side of the keyboard to continue.",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == (text, {})


@pytest.mark.parametrize("text", ["a" * (1 << 20), "aws " * (1 << 18), "-----BEGIN PRIVATE KEY-----" * 40000,
                                  "x://a:" * (1 << 17), "A" * 39 + " " + "sk_live_" * 100000,
                                  "a@b.co " * 150000],
                         ids=["letters", "aws words", "key headers", "url starts", "token prefixes", "many matches"])
def test_redaction_stays_linear_on_adversarial_rows(text: str) -> None:
    start = time.perf_counter()
    redact(text)
    # About a second on a quiet machine, several under load; the quadratic cases (a lazy scan per
    # key header, an overlap check against every earlier match) took many minutes.
    assert time.perf_counter() - start < 90.0
