import io
import json
import logging

import pytest

from tuneforge.common.logging import JsonFormatter, RedactingFilter, redact, register_secret


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("text, secret", [
    ("authorization: Bearer abcdEFGH12345678xyz", "abcdEFGH12345678xyz"),
    ("connecting to postgresql+psycopg://app:hunter2pass@db:5432/x", "hunter2pass"),
    ("s3_secret_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG"),
    ('{"api_key": "sk-live-123456789"}', "sk-live-123456789"),
    ("key id AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    # every keyword of every pattern, in other cases too (redact() skips the substitutions when a
    # quick search finds none of the patterns' words: that search must never miss one)
    ("AUTHORIZATION: BEARER abcdEFGH12345678xyz", "abcdEFGH12345678xyz"),
    ("s3://user:Hunter2Pass@minio:9000/bucket", "Hunter2Pass"),
    ("DB_PASSWD: letmein-123", "letmein-123"),
    ("Password=letmein-456", "letmein-456"),
    ("x_client_SECRET='abc-def-ghi'", "abc-def-ghi"),
    ("refresh_Token: tok-998877", "tok-998877"),
    ("API-KEY=k-112233", "k-112233"),
    ("apikey: k-445566", "k-445566"),
    ("Access_Key=AK-778899", "AK-778899"),
    ("temporary key ASIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE"),
])
def test_patterns_are_redacted(text, secret):
    assert secret not in redact(text)


def test_registered_secrets_never_reach_the_log(captured):
    logger, stream = captured
    register_secret("tenant-token-0123456789")
    logger.info("token %s used", "tenant-token-0123456789", extra={"ctx_header": "tenant-token-0123456789"})
    try:
        raise RuntimeError("failed with tenant-token-0123456789")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert "tenant-token-0123456789" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["message"] == "token [REDACTED] used"
    assert lines[0]["header"] == "[REDACTED]"
    assert "RuntimeError" in lines[1]["exception"]


def test_every_secret_setting_is_registered_for_redaction():
    from tuneforge.common.grpc.server import register_settings_secrets
    from tuneforge.common.settings import ServiceSettings, load_settings

    settings = load_settings(ServiceSettings, environ={
        "TUNEFORGE_AUTH_TOKENS": "acme:tok-aaaaaaaaaaaaaaaaaaaa\nbeta:tok-bbbbbbbbbbbbbbbbbbbb",
        "TUNEFORGE_S3_SECRET_KEY": "svc-cccccccccccccccccccc",
        "TUNEFORGE_S3_ACCESS_KEY": "ACCESSKEYDDDDDDDD",
        "TUNEFORGE_DATABASE_URL": "postgresql+psycopg://app:pw-eeeeeeeeee@db/x"})
    register_settings_secrets(settings)
    text = "tok-aaaaaaaaaaaaaaaaaaaa tok-bbbbbbbbbbbbbbbbbbbb svc-cccccccccccccccccccc ACCESSKEYDDDDDDDD pw-eeeeeeeeee"
    assert redact(text) == " ".join(["[REDACTED]"] * 5)


# Long runs of the characters each pattern consumes: a quadratic pattern takes minutes on 1 MiB.
ADVERSARIAL = ["a" * (1 << 20), "a:" * (1 << 19), "ab://" * (1 << 18), "x://a:" * (1 << 17), "a://" + "b" * (1 << 20),
               "password" * (1 << 17), "bearer " * (1 << 17), "a:b" * (1 << 18), ("token=" + "a" * 60) * (1 << 14),
               "@:/" * (1 << 18), "_" * (1 << 20) + "password="]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:8]))
def test_redaction_is_linear_and_bounded_on_adversarial_input(text, monkeypatch):
    import time

    import tuneforge.common.logging as tf_logging

    monkeypatch.setattr(tf_logging, "MAX_LOGGED_CHARS", 1 << 30)  # measure the patterns, not the cut
    start = time.perf_counter()
    redact(text)
    # Linear work on 1 MiB is milliseconds; the quadratic pattern took minutes. 30 s is generous
    # for a loaded machine yet far below what a super-linear pattern needs.
    assert time.perf_counter() - start < 30.0


def test_log_lines_are_bounded_keeping_head_and_tail():
    text = "start " + "x" * (1 << 20) + " end token=abc"
    out = redact(text)
    assert len(out) < 20_000
    assert out.startswith("start ") and out.endswith("token=[REDACTED]") and "chars cut" in out
