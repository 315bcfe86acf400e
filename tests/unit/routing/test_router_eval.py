"""Accuracy of the task classifier on the labelled evaluation set ``router_eval.jsonl``.

Labels follow the task definitions, not the rules: ``ocr`` reading/transcribing/translating text
shown (formulas to LaTeX included); ``document`` tables, forms, invoices, receipts, IDs, key-value
extraction and questions about them; ``chart`` charts, plots, diagrams, flowcharts; ``math``
solving/deriving/proving; ``grounding`` locating objects, boxes, coordinates; ``describe`` what
the image shows (captions, identification, counts, colours); ``general`` any other question about
an image (advice, opinion, creative writing, where a photo was taken); ``text`` no image at all.

Rows with ``id % 3 == 0`` are held out: the rules were tuned only on failures of the other rows.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from gateway.routing import CONFIG_DIR, TASKS, CapabilityRouter, TurnView

EVAL = Path(__file__).with_name("router_eval.jsonl")


def _rows() -> list[dict]:
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line]


def _turns(row: dict) -> list[TurnView]:
    history = [TurnView(role, text, images) for role, text, images in row.get("history", [])]
    return [*history, TurnView("user", row["prompt"], row["images"])]


@pytest.fixture(scope="module")
def router() -> CapabilityRouter:
    return CapabilityRouter.from_files(CONFIG_DIR / "routing.toml", CONFIG_DIR / "models")


def test_eval_set_is_large_balanced_and_bilingual() -> None:
    rows = _rows()
    assert len(rows) >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    per_task = Counter(r["task"] for r in rows)
    assert set(per_task) == set(TASKS)
    assert min(per_task.values()) >= len(rows) / len(TASKS) * 0.8
    langs = Counter(r["lang"] for r in rows)
    assert (langs["zh"] + langs["mixed"]) / len(rows) >= 0.35
    assert langs["mixed"] >= 30
    hard = [r for r in rows if {"adversarial", "ambiguous"} & set(r.get("tags", ()))]
    assert len(hard) >= 40
    assert sum(1 for r in rows if "history" in r) >= 15
    for row in rows:  # text rows carry no image anywhere; the others have one somewhere
        images = row["images"] + sum(h[2] for h in row.get("history", []))
        assert (images == 0) == (row["task"] == "text"), row["id"]


def test_classifier_accuracy(router: CapabilityRouter, capsys: pytest.CaptureFixture[str]) -> None:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses = []
    for row in _rows():
        got = router.classifier.classify(_turns(row)).task
        ok = int(got == row["task"])
        split = "held-out" if row["id"] % 3 == 0 else "tuning"
        for key in ("all", split, f"lang={row['lang']}", f"task={row['task']}"):
            totals[key][0] += ok
            totals[key][1] += 1
        if {"adversarial", "ambiguous"} & set(row.get("tags", ())):
            totals["adversarial+ambiguous"][0] += ok
            totals["adversarial+ambiguous"][1] += 1
        if not ok:
            misses.append(f"  #{row['id']} [{split}] {row['task']} -> {got}: {row['prompt']!r}")
    accuracy = {key: hit / n for key, (hit, n) in totals.items()}
    with capsys.disabled():
        print("\nclassifier accuracy on", EVAL.name)
        for key in sorted(totals, key=lambda k: (k != "all", k.split("=")[0], k)):
            hit, n = totals[key]
            print(f"  {key:28s} {hit:4d}/{n:<4d} {accuracy[key]:.1%}")
        print("misses:", *misses, sep="\n")
    assert accuracy["all"] >= 0.95
    assert accuracy["tuning"] >= 0.97
    assert accuracy["held-out"] >= 0.92
    assert accuracy["lang=zh"] >= 0.9
    assert accuracy["lang=mixed"] >= 0.9


def test_classification_is_fast(router: CapabilityRouter) -> None:
    import time

    rows = _rows()
    start = time.perf_counter()
    for row in rows:
        router.classifier.classify(_turns(row))
    per_prompt = (time.perf_counter() - start) / len(rows)
    assert per_prompt < 0.005  # milliseconds per request, pure Python regexes
