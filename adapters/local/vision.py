"""Vision-encoder outputs as the language model consumes them, one per image.

Every function here calls the model, so it runs on the worker thread. ``encode_pieces`` is the
encoder run a few blocks at a time (``adapters.local.jobs.Pieces``): a 1024x768 image costs seconds
on a CPU, and running streams must not stall that long.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.local.jobs import StepBudget

__all__ = (
    "ENCODER_COST",
    "VisionFeatures",
    "encode_images",
    "encode_pieces",
    "encoder_outputs",
    "encoder_outputs_of",
)

ENCODER_COST = 2
"""Budget tokens one image token costs to encode, in prefill tokens (measured on the
2b-dimension model: encoding a 1024x768 image takes about twice its 768 tokens' prefill)."""


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
    return _per_image(out.pooler_output, out.deepstack_features)


def encode_pieces(
    model: Any,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.Tensor,
    budget: Callable[[], StepBudget],
) -> Generator[None, None, list[VisionFeatures]]:
    """``encode_images`` as ``Pieces``: each piece runs as many encoder blocks as the step's
    ``budget()`` grants (at least one); returns the same features.

    The steps of ``Qwen3VLVisionModel.forward`` (transformers 5.x), with a pause between blocks;
    ``tests/integration/test_vision_pieces.py`` holds it to ``encode_images`` exactly.
    """
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    visual = model.model.visual
    merge = visual.spatial_merge_size
    sizes = (image_grid_thw.prod(-1) // merge**2).tolist()
    # image tokens per image (after the merger)
    tokens = sum(sizes)
    block_cost = max(1, ENCODER_COST * tokens // len(visual.blocks))
    kwargs: dict[str, Any] = {}
    indices, weights = get_vision_interpolation_indices_and_weights(
        image_grid_thw,
        num_grid_per_side=visual.num_grid_per_side,
        mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners,
        spatial_merge_size=visual.config.spatial_merge_size,
        kwargs=kwargs,
    )
    position_ids = get_vision_position_ids(image_grid_thw, merge, kwargs=kwargs)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(
        image_grid_thw, visual.config, kwargs=kwargs
    )
    hidden = visual.patch_embed(pixel_values.type(visual.dtype))
    pos_embeds = (visual.pos_embed(indices) * weights[:, :, None]).sum(1)
    hidden = hidden + pos_embeds.to(hidden.dtype)
    rotary = visual.rotary_pos_emb(hidden, position_ids)
    hidden = hidden.reshape(hidden.shape[0], -1)
    deepstack: list[torch.Tensor] = []
    blocks = list(enumerate(visual.blocks))
    while blocks:
        granted = budget().take("encode", block_cost * len(blocks), block_cost)
        for _ in range(max(1, granted // block_cost)):
            number, block = blocks.pop(0)
            hidden = block(
                hidden, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_embeddings=rotary
            )
            if number in visual.deepstack_visual_indexes:
                merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(number)]
                deepstack.append(merger(hidden))
            if not blocks:
                break
        if blocks:
            yield
    return _per_image(
        torch.split(visual.merger(hidden), sizes), [torch.split(f, sizes) for f in deepstack]
    )


def _per_image(
    embeds: Sequence[torch.Tensor], deepstack: Sequence[Sequence[torch.Tensor]]
) -> list[VisionFeatures]:
    # clone(): each image's tensors own their memory instead of viewing the whole batch's.
    return [
        VisionFeatures(
            embeds=image.clone(),
            deepstack=tuple(layer[i].clone() for layer in deepstack),
        )
        for i, image in enumerate(embeds)
    ]


def encoder_outputs(features: Sequence[VisionFeatures]) -> Any:
    """``features`` (in placeholder order) as ``generate(mm_encoder_outputs={"image": ...})``."""
    layers = len(features[0].deepstack) if features else 0
    return _outputs(
        tuple(f.embeds for f in features),
        [tuple(f.deepstack[j] for f in features) for j in range(layers)],
    )


def encoder_outputs_of(embeds: torch.Tensor, deepstack: Sequence[torch.Tensor]) -> Any:
    """Features of consecutive image tokens (any slice of the images' concatenated features) as
    ``mm_encoder_outputs["image"]``: the model scatters rows onto placeholders in order."""
    return _outputs((embeds,), [(layer,) for layer in deepstack])


def _outputs(embeds: tuple[torch.Tensor, ...], deepstack: list[tuple[torch.Tensor, ...]]) -> Any:
    from transformers.models.qwen3_vl.modeling_qwen3_vl import (
        BaseModelOutputWithDeepstackFeatures,
    )

    # Per-image tuples, as Qwen3VLModel.get_image_features returns them (its annotations say
    # Tensor, the model consumes sequences).
    output: Any = BaseModelOutputWithDeepstackFeatures
    return output(pooler_output=embeds, deepstack_features=deepstack)
