"""The routing configuration: ``config/routing.toml`` and the model profiles it names.

``load_routing`` reads the file into a ``RoutingFile`` (classifier rules, backends with their
capability profiles and served names, per-task policy) and refuses unknown keys, naming them.
``RouterConfig`` is the ``[router]`` table of ``gateway.toml`` that says where the files are.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.routing.classifier import TaskClassifier
from gateway.routing.profiles import ModelProfile, ProfileError, load_profile
from gateway.routing.rules import TASKS, ClassifierConfig

__all__ = (
    "CONFIG_DIR",
    "Backend",
    "RouterConfig",
    "RoutingFile",
    "ServedNames",
    "TaskPolicy",
    "load_routing",
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
ServedNames = Sequence[str] | Mapping[str, Sequence[str]]
"""Extra model names: a sequence for the first configured backend, or a mapping per backend."""
_BEYOND_ACTIONS = ("warn", "redirect", "refuse")


@dataclass(frozen=True)
class RouterConfig:
    """The ``[router]`` table of ``gateway.toml``: where the routing files are, what to apply."""

    routing_file: str = ""
    """Routing rules and policy (TOML); empty means the bundled ``config/routing.toml``."""
    profiles_dir: str = ""
    """Directory of model capability profiles; empty means the bundled ``config/models``."""
    shape_prompts: bool = True
    """Prepend the task instruction as a system message when the client sent none."""
    sampling_defaults: bool = True
    """Offer per-task temperature/top_p defaults (used only where the client set none)."""


@dataclass(frozen=True)
class TaskPolicy:
    """One ``[policy.<task>]`` table."""

    max_pixels: int | None = None
    """Per-image pixel budget for the guard; lowers the ceiling only. None: the profile's."""
    text_heavy: bool = False
    """The guard's low-resolution-for-text warning applies."""
    temperature: float | None = None
    """Default temperature (0 = greedy) when the client set none."""
    top_p: float | None = None
    """Default nucleus mass when the client set none."""
    beyond_action: Literal["warn", "redirect", "refuse"] = "warn"
    """What to do when the task is beyond the backend's profile."""
    redirect_to: str = ""
    """Backend that takes the task on ``redirect``."""
    task: str = ""
    """Instruction part 1: what to do. Empty: no instruction for this task."""
    region: str = ""
    """Instruction part 2: which part of the image."""
    format: str = ""
    """Instruction part 3: the shape of the answer."""


@dataclass(frozen=True)
class Backend:
    """One ``[backends.<name>]`` table."""

    name: str
    """Configured backend name (the ``x-gateway-backend`` header value, a metric label)."""
    profile: ModelProfile
    """The capability profile the backend serves."""
    names: tuple[str, ...] = ()
    """Model names clients may send for this backend, in ``/v1/models`` order: the names given
    at run time (the served model id, settings aliases) first, then the configured aliases."""
    upstream: Mapping[str, Any] | None = None
    """The ``upstream`` sub-table: this backend forwards to an OpenAI-compatible server
    (``adapters.upstream.UpstreamConfig`` keys). None: the local model served by ``--model``."""


@dataclass(frozen=True)
class RoutingFile:
    """Everything ``config/routing.toml`` says, loaded and checked."""

    classifier: TaskClassifier
    """The task classifier built from ``[classifier]``."""
    backends: Mapping[str, Backend] = field(default_factory=dict)
    """Configured backends by name (``[backends.<name>]``)."""
    policies: Mapping[str, TaskPolicy] = field(default_factory=dict)
    """Policy per task name (``[policy.<task>]``; every task has one, defaults where absent)."""
    prompt_template: str = "Task: {task}\nRegion: {region}\nOutput format: {format}"
    """Template of the task instruction (``[router]``)."""
    structured_format: str = "Only JSON that follows the requested format."
    """Output-format line used when the client asked for JSON (``[router]``)."""
    check_ocr_languages: bool = True
    """Warn (per the task's ``beyond_action``) when a prompt names a weak OCR language."""
    refuse_min_margin: float = 2.0
    """Classifier margin a ``refuse`` needs; under it the request is answered with a warning."""


def load_routing(
    routing: Path, profiles_dir: Path, *, served_names: ServedNames = ()
) -> RoutingFile:
    """Load ``routing`` and the profiles it names from ``profiles_dir``.

    ``served_names`` adds model names at run time (the ``--model`` id, settings aliases): a
    sequence to the local backend, or a mapping per backend name.
    Raises ``ProfileError`` naming the first bad key.
    """
    try:
        with routing.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read routing file {routing.name}: {exc}") from exc
    unknown = set(data) - {"router", "backends", "policy", "classifier"}
    if unknown:
        raise ProfileError(f"{routing.name}: unknown table(s) {sorted(unknown)}")
    try:
        classifier = TaskClassifier(ClassifierConfig.from_table(data.get("classifier", {})))
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{routing.name}: {exc}") from exc
    backends = {}
    tables = data.get("backends", {})
    extra_names: Mapping[str, Sequence[str]] = (
        served_names
        if isinstance(served_names, Mapping)
        else {next((n for n, t in tables.items() if "upstream" not in t), ""): tuple(served_names)}
    )
    for name, table in tables.items():
        if set(table) - {"profile", "names", "upstream"} or "profile" not in table:
            raise ProfileError(
                f"{routing.name}: backends.{name} takes 'profile', 'names' and 'upstream'"
            )
        upstream = table.get("upstream")
        if upstream is not None and not isinstance(upstream, Mapping):
            raise ProfileError(f"{routing.name}: backends.{name}.upstream must be a table")
        profile = load_profile(profiles_dir / f"{table['profile']}.toml", tasks=TASKS)
        extra = tuple(extra_names.get(name, ()))
        names = tuple(dict.fromkeys([*extra, *table.get("names", ())]))
        backends[name] = Backend(name, profile, names, upstream)
    if not backends:
        raise ProfileError(f"{routing.name}: at least one [backends.<name>] is needed")
    policies = {task: _policy(routing.name, task, data.get("policy", {})) for task in TASKS}
    router: dict[str, Any] = dict(data.get("router", {}))
    if set(router) - {
        "prompt_template",
        "structured_format",
        "check_ocr_languages",
        "refuse_min_margin",
    }:
        raise ProfileError(f"{routing.name}: unknown [router] key(s)")
    margin = router.get("refuse_min_margin", 2.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or margin < 0:
        raise ProfileError(f"{routing.name}: router.refuse_min_margin must be a number >= 0")
    router["refuse_min_margin"] = float(margin)
    return RoutingFile(classifier=classifier, backends=backends, policies=policies, **router)


def _policy(where: str, task: str, tables: Mapping[str, Any]) -> TaskPolicy:
    table = dict(tables.get(task, {}))
    fields = set(TaskPolicy.__dataclass_fields__)
    if set(table) - fields:
        raise ProfileError(
            f"{where}: unknown key(s) in policy.{task}: {sorted(set(table) - fields)}"
        )
    for key, value in table.items():
        kind = {"text_heavy": bool, "max_pixels": int, "temperature": float, "top_p": float}.get(
            key, str
        )
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (isinstance(value, kind) or (kind is float and number)):
            raise ProfileError(f"{where}: policy.{task}.{key} must be a {kind.__name__}")
    if table.get("beyond_action", "warn") not in _BEYOND_ACTIONS:
        raise ProfileError(f"{where}: policy.{task}.beyond_action must be one of {_BEYOND_ACTIONS}")
    if table.get("max_pixels") is not None and int(table["max_pixels"]) <= 0:
        raise ProfileError(f"{where}: policy.{task}.max_pixels must be positive")
    return TaskPolicy(**table)
