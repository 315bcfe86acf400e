"""Model capability profiles: what a served model can and cannot do, as data from ``config/models``.

A profile is a TOML file named after the model (``qwen3-vl-2b-instruct.toml``). The router reads
it to decide whether a task is within the model (``weak_tasks``, ``ocr_languages``,
``modalities``) and to bound the pixel budget it hands the guard (``max_pixels``). The limits
and ``tools`` become the ``Capabilities`` of an upstream backend serving the model
(``to_capabilities``); the local engine states its own from the checkpoint. Nothing here
branches on a model type: a new model is a new file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapters.base import Capabilities

__all__ = (
    "ModelProfile",
    "ProfileError",
    "Quality",
    "WeakTask",
    "load_profile",
)

Quality = Literal["strong", "fair", "weak", "none"]
_QUALITIES: tuple[str, ...] = ("strong", "fair", "weak", "none")
_MODALITIES = frozenset({"text", "image", "video"})


class ProfileError(ValueError):
    """A profile or routing file is unreadable or names an unknown key; the message says which."""


@dataclass(frozen=True)
class WeakTask:
    """A task the model should not be trusted with, and what to say about it."""

    cannot: str
    """What the model cannot do, completing "<model> cannot ..." (shown to clients)."""
    instead: str = ""
    """What to use instead, completing "Use ... instead" (shown to clients)."""


@dataclass(frozen=True)
class ModelProfile:
    """What one model can do. Field names are the keys of the ``[model]`` table."""

    name: str
    """Profile name: the file stem, e.g. ``qwen3-vl-2b-instruct``."""
    model_id: str = ""
    """Hub id of the checkpoint the profile describes."""
    display_name: str = ""
    """Human name used in client-visible messages; defaults to ``name``."""
    modalities: tuple[str, ...] = ("text", "image")
    """Input modalities the model accepts: ``text``, ``image``, ``video``."""
    max_images: int = 8
    """Images per request the model handles well (the guard may set a lower bound)."""
    context_length: int = 32768
    """Prompt plus completion tokens the model was trained for."""
    image_factor: int = 32
    """Image sides the model sees are multiples of this (patch size x spatial merge)."""
    min_pixels: int = 65536
    """Smallest pixel count per image the processor accepts."""
    max_pixels: int = 16777216
    """Largest pixel count per image the processor accepts; caps every task's budget."""
    strengths: tuple[str, ...] = ()
    """Tasks the model is good at (documentation and ``/v1/models`` metadata)."""
    ocr_languages: Mapping[str, Quality] = field(default_factory=dict)
    """Expected OCR quality per language code (``zh``, ``en``, ``ja``...)."""
    ocr_default: Quality = "weak"
    """Expected OCR quality for a language not listed in ``ocr_languages``."""
    weak_tasks: Mapping[str, WeakTask] = field(default_factory=dict)
    """Tasks beyond the model, by task name; the router applies the task's ``beyond_action``."""
    tools: bool = False
    """Whether the model was trained for function calling (OpenAI ``tools``). Off unless the
    profile says so: a model that was not answers a tool request with noise."""

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def accepts_images(self) -> bool:
        return "image" in self.modalities

    def ocr_quality(self, language: str) -> Quality:
        """Expected OCR quality for ``language`` (an ISO 639-1 code)."""
        return self.ocr_languages.get(language, self.ocr_default)

    def strong_ocr_languages(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.ocr_languages.items() if v == "strong")

    def to_capabilities(
        self, *, model_id: str | None = None, revision: str = "main"
    ) -> Capabilities:
        """The adapter-contract view of the limits this profile states."""
        return Capabilities(
            model_id=model_id or self.model_id or self.name,
            revision=revision,
            context_length=self.context_length,
            max_images=self.max_images,
            image_factor=self.image_factor,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            supports_tools=self.tools,
        )


def load_profile(path: Path, *, tasks: tuple[str, ...]) -> ModelProfile:
    """Read one profile file; ``tasks`` are the task names ``weak_tasks``/``strengths`` may use."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read model profile {path.name}: {exc}") from exc
    unknown = set(data) - {"model", "ocr_languages", "weak_tasks"}
    if unknown:
        raise ProfileError(f"{path.name}: unknown table(s) {sorted(unknown)}")
    model: dict[str, Any] = dict(data.get("model", {}))
    known = {
        "model_id", "display_name", "modalities", "max_images", "context_length",
        "image_factor", "min_pixels", "max_pixels", "strengths", "ocr_default", "tools",
    }  # fmt: skip
    bad = set(model) - known
    if bad:
        raise ProfileError(f"{path.name}: unknown [model] key(s) {sorted(bad)}")
    for key in ("modalities", "strengths"):
        if key in model:
            model[key] = tuple(model[key])
    if not set(model.get("modalities", ())) <= _MODALITIES:
        raise ProfileError(f"{path.name}: modalities must be among {sorted(_MODALITIES)}")
    if not set(model.get("strengths", ())) <= set(tasks):
        raise ProfileError(f"{path.name}: strengths must be task names {list(tasks)}")
    languages = dict(data.get("ocr_languages", {}))
    for lang, quality in [*languages.items(), ("ocr_default", model.get("ocr_default", "weak"))]:
        if quality not in _QUALITIES:
            raise ProfileError(f"{path.name}: OCR quality of {lang!r} must be one of {_QUALITIES}")
    weak: dict[str, WeakTask] = {}
    for task, table in data.get("weak_tasks", {}).items():
        if task not in tasks:
            raise ProfileError(f"{path.name}: weak_tasks.{task} is not a task name")
        if (
            not isinstance(table, dict)
            or set(table) - {"cannot", "instead"}
            or "cannot" not in table
        ):
            raise ProfileError(f"{path.name}: weak_tasks.{task} needs 'cannot' (and 'instead')")
        weak[task] = WeakTask(**table)
    try:
        return ModelProfile(name=path.stem, ocr_languages=languages, weak_tasks=weak, **model)
    except TypeError as exc:
        raise ProfileError(f"{path.name}: malformed [model] table") from exc
