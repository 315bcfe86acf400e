"""Vision-encoder outputs as the language model consumes them, one per image.

(Re-exported by ``adapters.local.worker``, where they were first defined.) Every function here calls
the model, so it runs on the worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ("VisionFeatures", "encode_images", "encoder_outputs")


@dataclass(frozen=True, eq=False)
class VisionFeatures:
    """One image's vision-encoder output, as the language model consumes it.

    Depends only on that image's pixels (and the model), so it can be cached per image digest.
    """

    embeds: torch.Tensor
    """``(image tokens, text hidden)``: the merged patch embeddings scattered onto placeholders."""
    deepstack: tuple[torch.Tensor, ...]
    """One ``(image tokens, text hidden)`` tensor per DeepStack layer, added to early layers."""

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes (the embedding cache's unit)."""
        tensors = (self.embeds, *self.deepstack)
        return sum(t.numel() * t.element_size() for t in tensors)


def encode_images(
    model: Any, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
) -> list[VisionFeatures]:
    """Run the vision encoder over a batch of images; one ``VisionFeatures`` per image.

    Call on the worker thread. ``pixel_values``/``image_grid_thw`` as the image processor
    returns them, already on the model's device.
    """
    out = model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
    # clone(): each image's tensors own their memory instead of viewing the whole batch's.
    return [
        VisionFeatures(
            embeds=embeds.clone(),
            deepstack=tuple(layer[i].clone() for layer in out.deepstack_features),
        )
        for i, embeds in enumerate(out.pooler_output)
    ]


def encoder_outputs(features: Sequence[VisionFeatures]) -> Any:
    """``features`` (in placeholder order) as ``generate(mm_encoder_outputs={"image": ...})``."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        BaseModelOutputWithDeepstackFeatures,
    )

    layers = len(features[0].deepstack) if features else 0
    # Per-image tuples, as Qwen3VLModel.get_image_features returns them (its annotations say
    # Tensor, the model consumes sequences).
    output: Any = BaseModelOutputWithDeepstackFeatures
    return output(
        pooler_output=tuple(f.embeds for f in features),
        deepstack_features=[tuple(f.deepstack[j] for f in features) for j in range(layers)],
    )
