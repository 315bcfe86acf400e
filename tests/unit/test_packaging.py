"""Repository-level checks: the Dockerfile, the Makefile and CI agree with the README."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]

# https://docs.docker.com/reference/dockerfile/ (MAINTAINER is deprecated; COMMENT is the
# parser's name for a comment line).
INSTRUCTIONS = frozenset(
    {
        *("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK"),
        *("LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"),
        "COMMENT",
    }
)
SOURCE_DIRS = ("gateway", "adapters", "config")


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, value) for every instruction of the Dockerfile, comments left out."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"), env_replace=False)
    return [(item["instruction"], item["value"]) for item in parser.structure]


def instructions() -> list[tuple[str, str]]:
    return [(name, value) for name, value in dockerfile() if name != "COMMENT"]


def values(name: str) -> list[str]:
    return [value for instruction, value in instructions() if instruction == name]


def test_dockerfile_has_only_valid_instructions() -> None:
    # A continuation line that lost its predecessor (`&& pip install ...`) parses as an
    # instruction named `&&`.
    bad = [name for name, _ in dockerfile() if name not in INSTRUCTIONS]
    assert not bad, f"not Dockerfile instructions: {bad}"


def test_dockerfile_copies_only_files_that_exist() -> None:
    copies = values("COPY")
    assert copies
    for value in copies:
        *sources, _destination = shlex.split(value)
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_pins_torch_as_the_makefile_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^TORCH_PINS \?= (.+)$", makefile, re.MULTILINE)
    assert match
    pins = set(match.group(1).split())
    installed = {
        word
        for value in values("RUN")
        for word in value.split()
        if re.match(r"torch(vision)?[=<>~!]", word) or word in ("torch", "torchvision")
    }
    assert installed == pins
    # From the wheel index the build argument names (CPU by default), not PyPI's CUDA wheels.
    assert any(
        value.startswith("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
        for value in values("ARG")
    )
    assert any("--index-url ${TORCH_INDEX}" in value for value in values("RUN"))


def test_dockerfile_installs_dependencies_before_copying_the_sources() -> None:
    steps = instructions()
    copies = [
        i
        for i, (name, value) in enumerate(steps)
        if name == "COPY" and set(shlex.split(value)[:-1]) & set(SOURCE_DIRS)
    ]
    torch = [i for i, (name, value) in enumerate(steps) if name == "RUN" and "torch==" in value]
    package = [i for i, (name, value) in enumerate(steps) if name == "RUN" and " -e ." in value]
    assert copies
    assert torch
    assert package
    assert max(torch) < min(copies) < max(copies) < min(package)
    assert all("--no-deps" in steps[i][1] for i in package)


def test_dockerfile_runs_the_documented_command_as_non_root_with_healthcheck() -> None:
    users = values("USER")
    assert users
    assert users[-1] not in ("root", "0")
    assert "--uid 1000" not in " ".join(values("RUN"))
    (healthcheck,) = values("HEALTHCHECK")
    assert "/ready" in healthcheck
    assert "VLM_GATEWAY_PORT" in healthcheck
    env = " ".join(values("ENV"))
    assert "VLM_GATEWAY_HOST=0.0.0.0" in env
    assert "VLM_GATEWAY_PORT=8000" in env
    (entrypoint,) = values("ENTRYPOINT")
    assert json.loads(entrypoint) == ["vlm-gateway", "serve"]
    readme = (ROOT / "README.md").read_text()
    assert "vlm-gateway serve" in readme
    assert "docker run" in readme


def test_ci_calls_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test$", readme, re.MULTILINE)
    assert re.search(r"^make run", readme, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# -- `make run` and `make test`: how torch is installed (`make -n`: printed, never run) ----------

PIP = ".venv/bin/python -m pip install --quiet --disable-pip-version-check"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_pins() -> str:
    match = re.search(r"^TORCH_PINS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def pip_lines(
    tmp_path: Path, target: str, *args: str, gpu: bool = False, env: dict[str, str] | None = None
) -> list[str]:
    """The pip commands ``make -n -B TARGET`` prints on a machine with or without nvidia-smi
    (PATH holds only a stub of it, or nothing: make and its shell are found by absolute path)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    path = tmp_path / ("gpu" if gpu else "cpu")
    path.mkdir(exist_ok=True)
    if gpu:
        (path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (path / "nvidia-smi").chmod(0o755)
    # A parent make (`make test` running pytest) passes its flags and overrides down.
    scrubbed = ("TORCH_INDEX", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    environ = {k: v for k, v in os.environ.items() if k not in scrubbed}
    environ.update(env or {}, PATH=str(path))
    result = subprocess.run(
        [make, "-n", "-B", target, *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line.startswith(PIP)]


def test_make_test_installs_as_it_always_has(tmp_path: Path) -> None:
    pins = torch_pins()
    expected = [f"{PIP} {pins}", f"{PIP} -e . {pins}", f"{PIP} -e '.[test]' {pins}"]
    assert pip_lines(tmp_path, "test") == expected
    assert pip_lines(tmp_path, "test", gpu=True) == expected


def test_make_run_without_a_gpu_takes_cpu_wheels(tmp_path: Path) -> None:
    pins = torch_pins()
    assert pip_lines(tmp_path, "run") == [
        f"{PIP} --index-url {CPU_INDEX} {pins}",
        f"{PIP} -e . {pins}",
    ]
    assert pip_lines(tmp_path, "run", gpu=True) == [f"{PIP} {pins}", f"{PIP} -e . {pins}"]


@pytest.mark.parametrize("gpu", [False, True])
def test_torch_index_overrides_the_choice(tmp_path: Path, gpu: bool) -> None:
    pins = torch_pins()
    cuda = "https://download.pytorch.org/whl/cu128"
    torch_line = f"{PIP} --index-url {cuda} {pins}"
    assert pip_lines(tmp_path, "run", f"TORCH_INDEX={cuda}", gpu=gpu)[0] == torch_line
    assert pip_lines(tmp_path, "run", gpu=gpu, env={"TORCH_INDEX": cuda})[0] == torch_line
    assert pip_lines(tmp_path, "test", f"TORCH_INDEX={cuda}", gpu=gpu)[0] == torch_line
    # Set but empty: pip's own indexes, even without a GPU.
    assert pip_lines(tmp_path, "run", "TORCH_INDEX=", gpu=gpu)[0] == f"{PIP} {pins}"


def test_readme_documents_torch_index() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "TORCH_INDEX" in readme
    assert CPU_INDEX in readme
