"""The API contract: buf lint, buf breaking against the previous commit, generated code fresh."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).with_name("buf")
SERVICES = {"datasets": "DatasetService", "training": "TrainingService", "evaluation": "EvaluationService",
            "checkpoints": "CheckpointService"}


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_buf_lint_is_clean():
    out = subprocess.run([str(BUF), "lint", "protos"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def _baseline_ref() -> str | None:
    """The last API release tag (api/v*), else the previous commit that has protos/."""
    tag = _git("describe", "--tags", "--abbrev=0", "--match", "api/v*", "HEAD").stdout.strip()
    if tag:
        return tag
    ref = "HEAD~1" if not _git("status", "--porcelain", "protos").stdout.strip() else "HEAD"
    has = _git("cat-file", "-e", f"{ref}:protos/buf.yaml").returncode == 0
    return ref if has else None


def test_buf_breaking_against_previous_api():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to compare the API against")
    ref = _baseline_ref()
    if ref is None:
        pytest.skip("no previous commit with protos/ in this clone (first API commit or a shallow clone)")
    out = subprocess.run([str(BUF), "breaking", "protos", "--against", f".git#ref={ref},subdir=protos"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"breaking API change against {ref}:\n{out.stdout}{out.stderr}"


def test_generated_code_matches_protos(tmp_path: Path):
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").glob("tuneforge/*/v1/*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", *[f"protos/{p}" for p in protos]], cwd=ROOT, check=True)
    for gen in tmp_path.rglob("*.py"):
        rel = gen.relative_to(tmp_path)
        assert filecmp.cmp(gen, ROOT / "services" / rel, shallow=False), f"{rel} is stale: run `make proto`"


def test_every_service_and_rpc_is_documented():
    from google.protobuf import descriptor_pb2  # noqa: F401 - ensures protobuf runtime is importable

    for svc, name in SERVICES.items():
        text = (ROOT / "protos" / "tuneforge" / svc / "v1" / f"{svc}.proto").read_text()
        assert f"service {name}" in text
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("rpc "):
                assert lines[i - 1].strip().startswith("//"), f"{svc}: undocumented {line.strip()}"


def test_protobuf_runtime_major_matches_the_generator_stamp():
    import re

    import google.protobuf

    text = (ROOT / "services/tuneforge/training/v1/training_pb2.py").read_text()
    stamp = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version.Domain.PUBLIC,\s*(\d+),", text)
    assert stamp, "generated code carries no runtime version stamp"
    assert google.protobuf.__version__.split(".")[0] == stamp.group(1), "pin protobuf to the generator's major"
