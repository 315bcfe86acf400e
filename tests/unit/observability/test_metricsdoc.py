"""README's metrics table is generated from the code and kept current."""

from __future__ import annotations

import runpy
import warnings
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.observability.exposition import HTTP_METRICS
from gateway.observability.metricsdoc import BEGIN, END, render_table

README = Path(__file__).resolve().parents[3] / "README.md"


def test_table_documents_every_registered_gateway_metric() -> None:
    table = render_table()
    registered = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in REGISTRY.collect()
        if family.name.startswith("vlm_gateway_")
    }
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `vlm_")}
    assert registered <= documented
    assert {name for name, *_ in HTTP_METRICS} <= documented
    for line in table.splitlines():
        if line.startswith("| `vlm_"):
            name, kind, _labels, meaning = (cell.strip() for cell in line.strip("|").split("|"))
            assert kind in ("counter", "gauge", "histogram"), line
            assert meaning.endswith("."), f"{name}: help text should be a sentence"
            if name.endswith("_seconds`"):
                assert "second" in meaning.lower(), f"{name}: help text must state the unit"


def test_module_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
        runpy.run_module("gateway.observability.metricsdoc", run_name="__main__")
    assert capsys.readouterr().out == render_table()


def test_readme_contains_the_current_table() -> None:
    """Regenerate with: python -m gateway.observability.metricsdoc --update README.md"""
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    assert BEGIN in text, f"README.md needs the markers {BEGIN} / {END}"
    assert END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == render_table().strip(), (
        "README metrics table is stale: run python -m gateway.observability.metricsdoc"
    )
