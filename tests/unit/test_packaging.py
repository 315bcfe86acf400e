"""Repository-level checks: the Dockerfile, the Makefile and CI agree with the README."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_copies_only_files_that_exist() -> None:
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert copies
    for rest in copies:
        *sources, _destination = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_runs_the_documented_command_as_non_root_with_healthcheck() -> None:
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert "HEALTHCHECK" in keywords
    healthcheck = next(r for k, r in instructions if k == "HEALTHCHECK")
    assert "/health" in healthcheck
    user = [r for k, r in instructions if k == "USER"]
    assert user
    assert user[-1] not in ("root", "0")
    entrypoint = next(r for k, r in instructions if k == "ENTRYPOINT")
    command = " ".join(__import__("json").loads(entrypoint))
    assert command == "vlm-gateway serve"
    readme = (ROOT / "README.md").read_text()
    assert "vlm-gateway serve" in readme
    assert "docker run" in readme


def test_ci_calls_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test$", readme, re.MULTILINE)
    assert re.search(r"^make run", readme, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
