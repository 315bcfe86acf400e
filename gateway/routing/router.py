"""The capability router: which task a request is, which backend serves it, and how.

``CapabilityRouter.route`` turns the conversation into a ``Decision``: the task of its latest
user turn (one of eight names), the backend, a pixel budget per image, a task instruction to
prepend when the client sent no system message, default sampling, and what to do when the task
is beyond the backend's capability profile (``warn``: proceed with a warning; ``redirect``:
another configured backend; ``refuse``: 422 ``task_not_supported``). A refusal needs a confident
classification: under ``refuse_min_margin`` (``Classification.margin``) it is a
``task_beyond_model`` warning instead. Every rule, budget and action is configuration
(``config/routing.toml`` and ``config/models/*.toml``); nothing here names a model.

Conversation-stable prompts (``gateway.routing.conversation``): the instruction is the task of
the conversation's first user turn with an image, and an image's budget the largest among the
tasks of the turns from its own to the latest, so a follow-up whose task changed still hits the
engine's prefix and image caches. The latest task sets everything else.

Function calling: a request whose tools may be called keeps its task, so the pixel budget, the
guard's checks and the sampling defaults still fit its images (a screenshot to read before a
call is still OCR), but gets no task instruction. The instruction's output-format line ("plain
text in reading order", "only JSON ...") would contradict an answer that is a call, a system
message written by the router would sit in the prompt next to the tool descriptions as if the
client had sent it, and the client that declared tools has said what the answer is for. The
router never sets a ``response_format`` either: a client's own is passed through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.errors import ModelNotFound
from gateway.routing.classifier import Reading, TaskClassifier, TurnView
from gateway.routing.config import (
    CONFIG_DIR,
    Backend,
    RouterConfig,
    ServedNames,
    TaskPolicy,
    load_routing,
)
from gateway.routing.conversation import image_budgets, opening_task
from gateway.routing.profiles import ModelProfile, ProfileError

__all__ = (
    "CONFIG_DIR",
    "Action",
    "Backend",
    "CapabilityRouter",
    "Decision",
    "ProfileError",
    "RouterConfig",
    "ServedNames",
    "TaskPolicy",
    "TurnView",
)

Action = Literal["proceed", "warn", "redirect", "refuse"]
_OCR_TASKS = ("ocr", "document")
_LANGUAGE_NAMES = {
    "zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "ru": "Russian", "hi": "Hindi", "th": "Thai", "he": "Hebrew",
}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """What the router decided for one request; the gateway applies it and shows it."""

    task: str
    """One of the eight task names."""
    backend: str
    """Configured backend name that serves the request."""
    action: Action
    """``proceed``, ``warn`` (beyond the model, answered anyway), ``redirect`` or ``refuse``."""
    max_pixels: tuple[int, ...]
    """The guard's pixel budget of each image of the user turns, in order (lowers the ceiling)."""
    text_heavy: bool
    """Whether the guard's low-resolution-for-text check applies."""
    system_prompt: str | None
    """The opening task's instruction, to prepend as a system message (None: the client's own)."""
    temperature: float | None
    """Default for a client that set none."""
    top_p: float | None
    """Default for a client that set none."""
    warnings: tuple[str, ...] = ()
    """Warning codes for the warnings header: ``task_beyond_model``, ``task_redirected``,
    ``ocr_language_weak``."""
    refusal: str | None = None
    """Client-visible message of the 422 ``task_not_supported`` when ``action == "refuse"``."""
    detail: str | None = None
    """What the model cannot do and what to use instead, for warn/redirect/refuse (for logs)."""
    reason: str = ""
    """Why this task: the classifier's source (``latest``, ``follow_up``, ``context``, ...)."""
    margin: float = 0.0
    """The classifier's margin for the task (see ``gateway.routing.classifier``)."""


class CapabilityRouter:
    """Classifies requests and applies per-task policy against capability profiles."""

    def __init__(
        self,
        *,
        classifier: TaskClassifier,
        backends: Mapping[str, Backend],
        policies: Mapping[str, TaskPolicy],
        prompt_template: str = "Task: {task}\nRegion: {region}\nOutput format: {format}",
        structured_format: str = "Only JSON that follows the requested format.",
        check_ocr_languages: bool = True,
        refuse_min_margin: float = 2.0,
        config: RouterConfig | None = None,
    ) -> None:
        self.classifier = classifier
        self.backends = dict(backends)
        self.policies = dict(policies)
        self.prompt_template = prompt_template
        self.structured_format = structured_format
        self.check_ocr_languages = check_ocr_languages
        self.refuse_min_margin = refuse_min_margin
        self.config = config or RouterConfig()
        self._names: dict[str, str] = {}
        for backend in self.backends.values():
            for name in backend.names:
                if self._names.setdefault(name, backend.name) != backend.name:
                    raise ProfileError(f"model name {name!r} is served by two backends")
        for task, policy in self.policies.items():
            if policy.beyond_action == "redirect" and policy.redirect_to not in self.backends:
                raise ProfileError(f"policy.{task}.redirect_to must name a configured backend")
        try:
            prompt_template.format(task="", region="", format="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ProfileError(
                "router.prompt_template may use only {task} {region} {format}"
            ) from exc

    @classmethod
    def from_config(
        cls, config: RouterConfig, *, served_names: ServedNames = ()
    ) -> CapabilityRouter:
        """Build from ``gateway.toml``'s ``[router]`` settings (bundled files by default)."""
        routing = Path(config.routing_file) if config.routing_file else CONFIG_DIR / "routing.toml"
        profiles = Path(config.profiles_dir) if config.profiles_dir else CONFIG_DIR / "models"
        return cls.from_files(routing, profiles, served_names=served_names, config=config)

    @classmethod
    def from_files(
        cls,
        routing: Path,
        profiles_dir: Path,
        *,
        served_names: ServedNames = (),
        config: RouterConfig | None = None,
    ) -> CapabilityRouter:
        """Load ``routing`` and the profiles it names from ``profiles_dir``.

        ``served_names`` adds model names at run time (the ``--model`` id, settings aliases):
        a sequence adds them to the first configured backend, a mapping per backend name.
        Raises ``ProfileError`` naming the first bad key.
        """
        loaded = load_routing(routing, profiles_dir, served_names=served_names)
        return cls(
            classifier=loaded.classifier,
            backends=loaded.backends,
            policies=loaded.policies,
            prompt_template=loaded.prompt_template,
            structured_format=loaded.structured_format,
            check_ocr_languages=loaded.check_ocr_languages,
            refuse_min_margin=loaded.refuse_min_margin,
            config=config,
        )

    # -- names ------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Served model names (aliases included), backend by backend in configuration order."""
        return list(self._names)

    def resolve(self, model: str) -> str | None:
        """The backend serving ``model``, or None when no backend serves that name."""
        return self._names.get(model)

    def profile(self, backend: str) -> ModelProfile:
        return self.backends[backend].profile

    # -- routing ----------------------------------------------------------------------------

    def route(
        self,
        turns: Sequence[TurnView],
        *,
        model: str,
        structured: bool = False,
        tools: bool = False,
    ) -> Decision:
        """Decide task, backend and policy for one request.

        ``structured``: the client asked for JSON (``response_format``), so the instruction's
        output-format line defers to it. ``tools``: the model may answer with a function call,
        so no task instruction is added (see the module's policy). Raises ``ModelNotFound`` for
        an unknown ``model``.
        """
        backend_name = self.resolve(model)
        if backend_name is None:
            raise ModelNotFound(
                f"The model '{model[:100]}' does not exist; GET /v1/models lists served models.",
                param="model",
            )
        reading = self.classifier.read(turns)
        result = reading.latest()
        task, policy = result.task, self.policies[result.task]
        backend = self.backends[backend_name]
        profile = backend.profile
        warnings: list[str] = []
        reasons: list[tuple[str, str]] = []  # (cannot, instead)
        if task in profile.weak_tasks:
            weak = profile.weak_tasks[task]
            reasons.append((weak.cannot, weak.instead))
        weak_language = _weak_language(profile, result.languages)
        if self.check_ocr_languages and task in _OCR_TASKS and weak_language:
            warnings.append("ocr_language_weak")
            reasons.append(weak_language)
        action: Action = "proceed"
        if reasons:
            action = policy.beyond_action
            if action == "redirect" and policy.redirect_to == backend_name:
                action = "warn"  # already on the target: answering is all that is left
            if action == "refuse" and result.margin < self.refuse_min_margin:
                action = "warn"  # a refusal must rest on a confident classification
        if task != "text" and not profile.accepts_images() and action != "redirect":
            reasons.append(("accept images", "a vision-language model"))
            action = "refuse"
        detail = self._explain(profile, reasons, backend_name, task) if reasons else None
        if detail and action == "warn" and policy.beyond_action == "refuse":
            detail += f" Not refused: the task is uncertain (margin {result.margin:g})."
        if action == "warn":
            warnings.insert(0, "task_beyond_model")
        elif action == "redirect":
            warnings.insert(0, "task_redirected")
            backend = self.backends[policy.redirect_to]
        budgets = image_budgets(reading, task, self.policies, backend.profile.max_pixels)
        sampling = self.config.sampling_defaults
        return Decision(
            task=task,
            backend=backend.name,
            action=action,
            max_pixels=budgets,
            text_heavy=policy.text_heavy,
            system_prompt=None if tools else self._instruction(reading, structured),
            temperature=policy.temperature if sampling else None,
            top_p=policy.top_p if sampling else None,
            warnings=tuple(dict.fromkeys(warnings)),
            refusal=detail if action == "refuse" else None,
            detail=detail,
            reason=result.source,
            margin=result.margin,
        )

    def _instruction(self, reading: Reading, structured: bool) -> str | None:
        """The opening task's instruction (see ``gateway.routing.conversation``)."""
        if not self.config.shape_prompts or any(t.role == "system" for t in reading.turns):
            return None  # the client's own instruction stands; user words are never rewritten
        opening = opening_task(reading)
        policy = self.policies[opening] if opening is not None else None
        if policy is None or not policy.task:
            return None
        fmt = self.structured_format if structured else policy.format
        return self.prompt_template.format(task=policy.task, region=policy.region, format=fmt)

    def _explain(
        self, profile: ModelProfile, reasons: list[tuple[str, str]], current: str, task: str
    ) -> str:
        cannot, instead = reasons[0]
        text = f"{profile.title} cannot {cannot}."
        options = [instead] if instead else []
        others = [
            b.names[0]
            for b in self.backends.values()
            if b.name != current and b.names and task not in b.profile.weak_tasks
        ]
        if others:
            options.append("the model '" + "' or '".join(others) + "' on this gateway")
        if options:
            text += f" Use {' or '.join(options)} instead."
        return text


def _weak_language(profile: ModelProfile, languages: Sequence[str]) -> tuple[str, str] | None:
    """(cannot, instead) for the first named language the profile reads weakly, if any."""
    for lang in languages:
        if profile.ocr_quality(lang) in ("weak", "none"):
            strong = ", ".join(_LANGUAGE_NAMES.get(x, x) for x in profile.strong_ocr_languages())
            name = _LANGUAGE_NAMES.get(lang, lang)
            return (
                f"read {name} text reliably (its OCR is strong for {strong or 'no language'} only)",
                f"a model with strong {name} OCR",
            )
    return None
