"""``rerankd demo``, the README's first command: it shows the sidecar working, then says what to
run next."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from rerankd_server.demo import next_step

RERANKD = Path(sys.executable).with_name("rerankd")


def test_the_demo_ends_with_the_command_that_serves_the_model(
    tiny_models: dict[str, Path],
) -> None:
    model = tiny_models["bert"]
    done = subprocess.run(
        [str(RERANKD), "demo", "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "1. " in done.stdout and "rerankd stopped (exit code 0)" in lines
    command = shlex.split(lines[-1])
    assert command[1:] == ["serve", "--model", str(model), "--port", "50051"], lines[-1]
    assert Path(command[0]).resolve() == RERANKD.resolve()  # the program the user has


def test_after_the_tiny_fallback_the_next_step_is_a_model_folder() -> None:
    step = next_step(None)
    assert "copy a real cross-encoder's folder" in step
    assert step.splitlines()[-1].endswith("serve --model /path/to/model-folder --port 50051")
    assert next_step("/models/my reranker").endswith("--model '/models/my reranker' --port 50051")
