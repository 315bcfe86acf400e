"""The measuring side of ``bench/vision_runtime.py``: the Qwen3-VL vision encoder alone, loaded
from the checkpoint, run by torch (float32, dynamic int8 as ``quantize_vision`` does it), by
OpenVINO (FP32, INT8 weights) and by ONNX Runtime (FP32) on the processor's input for one
1024x768 image. One variant per process (``child``); the figures go back as one JSON line.

The runtimes get ``VisionCore``: the encoder's own modules and arithmetic for ONE image, with the
grid-dependent index computations (position-embedding interpolation taps, rotary position ids;
``transformers.vision_utils``, integer work on ``image_grid_thw``) done in torch before each
call and timed with it. For one image ``cu_seqlens`` is ``[0, patches]``, so the attention is
plain full attention over the image's patches (``scaled_dot_product_attention``, no mask),
which every exporter handles; the unmodified ``Qwen3VLVisionModel`` is tried first and its
failure recorded (``--direct``).
"""

from __future__ import annotations

import gc
import re
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench._common import synthetic_image

__all__ = ("RUNTIME_VARIANTS", "child", "decode_proxy", "rel_err")

RUNTIME_VARIANTS = ("ov_fp32", "ov_int8", "ort_fp32")
THREADS = 2
OUTPUTS = ("merged", "deepstack0", "deepstack1", "deepstack2")


def _status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole tensor (float64)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64)) / max(float(np.linalg.norm(b64)), 1e-30)


def load_visual(model_dir: Path, depth: int = 0) -> Any:
    """``model.model.visual`` of ``Qwen3VLForConditionalGeneration.from_pretrained(model_dir,
    dtype=torch.float32)`` (sdpa attention), built alone: only the ``model.visual.`` tensors of
    the checkpoint are read. ``depth``: keep only the first blocks (a quick smoke test)."""
    from safetensors import safe_open
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    config = AutoConfig.from_pretrained(model_dir).vision_config
    if depth:
        config.depth = depth
        config.deepstack_visual_indexes = [i for i in config.deepstack_visual_indexes if i < depth]
    visual = Qwen3VLVisionModel._from_config(config, attn_implementation="sdpa")
    prefix = "model.visual."
    state = {}
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith(prefix):
                state[key[len(prefix) :]] = f.get_tensor(key).float()
    if depth:
        wanted = visual.state_dict()
        state = {k: v for k, v in state.items() if k in wanted}
    visual.load_state_dict(state, strict=True)
    return visual.float().eval()


def image_inputs(model_dir: Path, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's ``pixel_values`` and ``image_grid_thw`` of 1024x768 synthetic images."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    images = [synthetic_image(1024, 768, seed=s) for s in seeds]
    out = processor.image_processor(images=images, return_tensors="pt")
    return out["pixel_values"].float(), out["image_grid_thw"]


@dataclass(frozen=True)
class GridSpec:
    """What ``grid_inputs`` needs of the encoder (so a runtime's call holds no torch weights)."""

    num_grid_per_side: int
    interpolation_mode: str
    interpolation_align_corners: bool
    spatial_merge_size: int

    @classmethod
    def of(cls, visual: Any) -> GridSpec:
        return cls(
            visual.num_grid_per_side,
            visual.interpolation_mode,
            visual.interpolation_align_corners,
            visual.spatial_merge_size,
        )


def grid_inputs(visual: Any, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(interpolation indices, weights, rotary position ids)`` of one image's grid, exactly as
    ``Qwen3VLVisionModel.forward`` computes them (``visual``: the encoder or its ``GridSpec``)."""
    from transformers.vision_utils import (
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    indices, weights = get_vision_interpolation_indices_and_weights(
        grid,
        num_grid_per_side=visual.num_grid_per_side,
        mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners,
        spatial_merge_size=visual.spatial_merge_size,
    )
    position_ids = get_vision_position_ids(grid, visual.spatial_merge_size)
    return indices, weights.float(), position_ids


class VisionCore(nn.Module):
    """``Qwen3VLVisionModel.forward`` for one image, with the grid's index tensors as inputs;
    returns ``(merged, deepstack...)``."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.visual = visual

    def forward(
        self,
        pixels: torch.Tensor,
        indices: torch.Tensor,
        weights: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        v = self.visual
        hidden = v.patch_embed(pixels)
        hidden = hidden + (v.pos_embed(indices) * weights[:, :, None]).sum(1)
        cos, sin = v.rotary_pos_emb(hidden, position_ids)
        n = hidden.shape[0]
        deepstack = []
        for number, block in enumerate(v.blocks):
            attn = block.attn
            x = block.norm1(hidden)
            q, k, val = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
            q, k, val = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, val))
            out = nn.functional.scaled_dot_product_attention(q, k, val, scale=attn.scaling)
            hidden = hidden + attn.proj(out.transpose(1, 2).reshape(n, -1))
            hidden = hidden + block.mlp(block.norm2(hidden))
            if number in v.deepstack_visual_indexes:
                merger = v.deepstack_merger_list[v.deepstack_visual_indexes.index(number)]
                deepstack.append(merger(hidden))
        return (v.merger(hidden), *deepstack)


class DirectVisual(nn.Module):
    """The unmodified ``Qwen3VLVisionModel`` with tensor outputs (for the ``--direct`` try)."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.visual(pixels, grid)
        return (out.pooler_output, *out.deepstack_features)


def _timed(fn: Callable[[], Any], reps: int) -> tuple[float, list[float], Any]:
    """First call's seconds, ``reps`` more calls' seconds, the last result."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return first, samples, result


def _torch_outputs(out: Any) -> list[np.ndarray]:
    return [out.pooler_output.numpy().copy(), *(f.numpy().copy() for f in out.deepstack_features)]


def _short(exc: BaseException) -> str:
    """The exception in one line; for torch.onnx's long report, its exception summary."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", "".join(traceback.format_exception_only(exc)))
    head = text.split("\n", 1)[0]
    if "## Exception summary" in text:
        text = head[:120] + " ... " + text.split("## Exception summary", 1)[1]
    return " ".join(text.split())[:900]


def child(args: Any) -> dict[str, Any]:
    """Measure ``args.variant`` in this process."""
    torch.set_num_threads(THREADS)
    variant = args.variant
    result: dict[str, Any] = {"variant": variant, "threads": THREADS, "notes": []}
    if variant == "decode_proxy":
        return decode_proxy(args, result)
    t0 = time.perf_counter()
    visual = load_visual(args.model, args.depth)
    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_gib"] = _status_gib("VmRSS")
    if variant == "torch_batch2":
        return _batch2(args, visual, result)
    pixels, grid = image_inputs(args.model, [3])
    result["patches"] = int(pixels.shape[0])
    result["image_tokens"] = int(grid.prod(-1).item()) // visual.spatial_merge_size**2
    reference = Path(args.work_dir) / "reference.npz"
    if variant in ("torch_fp32", "torch_int8"):
        t0 = time.perf_counter()
        if variant == "torch_int8":
            from types import SimpleNamespace

            from adapters.local.quantize import apply_quantization

            holder = SimpleNamespace(model=SimpleNamespace(visual=visual))
            report = apply_quantization(holder, "none", True, torch.device("cpu"), torch.float32)
            result["notes"].append(report.describe())
            result["convert_s"] = time.perf_counter() - t0

        def run() -> list[np.ndarray]:
            with torch.inference_mode():
                return _torch_outputs(visual(pixels, grid))

    else:
        run = _runtime(args, variant, visual, pixels, grid, result)
        del visual
        gc.collect()
    first, samples, outputs = _timed(run, args.reps)
    if variant == "torch_fp32":
        np.savez(reference, *outputs)
    result.update(_figures(first, samples))
    result["shapes"] = [list(o.shape) for o in outputs]
    if reference.exists():
        with np.load(reference) as ref:
            expected = [ref[f"arr_{i}"] for i in range(len(ref.files))]
        result["rel_err"] = {
            name: rel_err(o, e)
            for name, o, e in zip(OUTPUTS[: len(outputs)], outputs, expected, strict=True)
        }
    result["peak_rss_gib"] = _status_gib("VmHWM")
    result["rss_end_gib"] = _status_gib("VmRSS")
    return result


def _figures(first: float, samples: list[float]) -> dict[str, Any]:
    return {
        "first_call_s": first,
        "encode_s": min(samples),
        "median_s": statistics.median(samples),
        "samples": samples,
    }


def _batch2(args: Any, visual: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Two images in one encoder call against the two images in two calls."""
    both = image_inputs(args.model, [3, 4])
    single = [image_inputs(args.model, [s]) for s in (3, 4)]

    def one_call() -> None:
        with torch.inference_mode():
            visual(*both)

    def two_calls() -> None:
        with torch.inference_mode():
            for pixels, grid in single:
                visual(pixels, grid)

    f1, s1, _ = _timed(one_call, args.batch_reps)
    f2, s2, _ = _timed(two_calls, args.batch_reps)
    result["batched"] = _figures(f1, s1)
    result["separate"] = _figures(f2, s2)
    result["ratio"] = min(s1) / min(s2)
    result["peak_rss_gib"] = _status_gib("VmHWM")
    return result


def _runtime(
    args: Any,
    variant: str,
    visual: Any,
    pixels: torch.Tensor,
    grid: torch.Tensor,
    result: dict[str, Any],
) -> Callable[[], list[np.ndarray]]:
    """Convert for ``variant``; returns the timed call (grid preprocessing included)."""
    sys.path.append(str(args.runtime_path))  # after the venv's own packages
    core = VisionCore(visual).eval()
    example = (pixels, *grid_inputs(visual, grid))
    with torch.inference_mode():
        check = [t.numpy().copy() for t in core(*example)]
    ref = Path(args.work_dir) / "reference.npz"
    if ref.exists():
        with np.load(ref) as r:
            errs = [rel_err(c, r[f"arr_{i}"]) for i, c in enumerate(check)]
        result["wrapper_rel_err_max"] = max(errs)
    t0 = time.perf_counter()
    if variant.startswith("ov_"):
        call = _openvino(args, variant, visual, core, example, grid, result)
    else:
        call = _onnxruntime(args, visual, core, example, grid, result)
    result["convert_s"] = time.perf_counter() - t0
    result["rss_after_convert_gib"] = _status_gib("VmRSS")
    return call


def _openvino(
    args: Any,
    variant: str,
    visual: Any,
    core: nn.Module,
    example: tuple[torch.Tensor, ...],
    grid: torch.Tensor,
    result: dict[str, Any],
) -> Callable[[], list[np.ndarray]]:
    import openvino as ov

    result["openvino"] = ov.__version__
    ov_core = ov.Core()
    result["ov_default_precision"] = str(ov_core.get_property("CPU", "INFERENCE_PRECISION_HINT"))
    if args.ov_direct and variant == "ov_fp32":
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                ov.convert_model(DirectVisual(visual), example_input=(example[0], grid))
            took = time.perf_counter() - t0
            result["notes"].append(
                f"the unmodified Qwen3VLVisionModel converted too ({took:.0f} s)"
            )
        except Exception as exc:
            result["notes"].append(f"unmodified Qwen3VLVisionModel: {_short(exc)}")
        gc.collect()
    t0 = time.perf_counter()
    with torch.inference_mode():
        # Static shapes (those of the 1024x768 input): with the default dynamic ones the
        # CPU plugin's compile took as long as the trace and held 6x the weights' memory.
        shapes = [tuple(t.shape) for t in example]
        model = ov.convert_model(core, example_input=example, input=shapes)
    result["trace_s"] = time.perf_counter() - t0
    if variant == "ov_int8":
        import nncf

        result["nncf"] = nncf.__version__
        t0 = time.perf_counter()
        model = nncf.compress_weights(model)  # INT8_ASYM, per output channel
        result["compress_s"] = time.perf_counter() - t0
    config = {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"}
    config["PERFORMANCE_HINT"] = "LATENCY"
    compiled = ov_core.compile_model(model, "CPU", config)
    del model
    result["ov_compiled"] = {
        key: str(compiled.get_property(key))
        for key in (
            "INFERENCE_PRECISION_HINT",
            "INFERENCE_NUM_THREADS",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE",
        )
    }
    spec = GridSpec.of(visual)
    request = compiled.create_infer_request()
    count = len(compiled.outputs)

    def run() -> list[np.ndarray]:
        feeds = [t.numpy() for t in (example[0], *grid_inputs(spec, grid))]
        request.infer(feeds)
        return [request.get_output_tensor(i).data.copy() for i in range(count)]

    return run


def _onnxruntime(
    args: Any,
    visual: Any,
    core: nn.Module,
    example: tuple[torch.Tensor, ...],
    grid: torch.Tensor,
    result: dict[str, Any],
) -> Callable[[], list[np.ndarray]]:
    import onnx
    import onnxruntime as ort
    import onnxscript

    result.update(onnxruntime=ort.__version__, onnx=onnx.__version__)
    result["onnxscript"] = onnxscript.__version__
    folder = Path(tempfile.mkdtemp(prefix="vision-onnx-", dir=args.work_dir))
    names = ["pixels", "indices", "weights", "position_ids"]
    if args.direct:
        t0 = time.perf_counter()
        try:
            torch.onnx.export(DirectVisual(visual), (example[0], grid), str(folder / "direct.onnx"))
            took = time.perf_counter() - t0
            result["notes"].append(f"the unmodified Qwen3VLVisionModel exported too ({took:.0f} s)")
        except Exception as exc:
            result["notes"].append(f"unmodified Qwen3VLVisionModel: {_short(exc)}")
        for path in folder.glob("direct.onnx*"):
            path.unlink()
        gc.collect()
    t0 = time.perf_counter()
    path = folder / "vision.onnx"
    torch.onnx.export(core, example, str(path), input_names=names, external_data=True)
    result["trace_s"] = time.perf_counter() - t0
    gc.collect()
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    result["onnx_inputs"] = sorted(inputs)
    spec = GridSpec.of(visual)

    def run() -> list[np.ndarray]:
        feeds = [t.numpy() for t in (example[0], *grid_inputs(spec, grid))]
        named = {n: f for n, f in zip(names, feeds, strict=True) if n in inputs}
        return list(session.run(None, named))

    return run


# --- decode proxy -------------------------------------------------------------------------------

PROXY_LAYERS = 4
"""Decoder layers in the decode proxy (their weights, 800 MB float32, do not fit any cache)."""


class ProxyLayer(nn.Module):
    """The seven Linear layers of one Qwen3-VL-2B decoder layer (q, k, v, o, gate, up, down;
    no biases) chained as the layer chains them, attention and norms left out: at a short
    context a decode step's cost is reading these weights."""

    def __init__(self, hidden: int = 2048, kv: int = 1024, inter: int = 6144) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(hidden, n, bias=False) for n in (hidden, kv, kv))
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.gate = nn.Linear(hidden, inter, bias=False)
        self.up = nn.Linear(hidden, inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.q(x) + torch.cat([self.k(x), self.v(x)], dim=-1)
        x = x + self.o(mixed)
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def _per_call(fn: Callable[[], Any], warm: int = 5, calls: int = 40) -> float:
    """Median seconds of ``calls`` calls after ``warm``."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_proxy(args: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Seconds per decoder layer at 1 and 8 rows: torch float32 (plain, oneDNN-prepacked as the
    server's default), torch dynamic int8 (as ``quantize = int8``), OpenVINO FP32 / INT8 / INT4
    weights (``nncf.compress_weights``)."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from adapters.local.packing import PackedLinear

    sys.path.append(str(args.runtime_path))
    import nncf
    import openvino as ov

    torch.manual_seed(0)
    model = nn.Sequential(*(ProxyLayer() for _ in range(PROXY_LAYERS))).eval()
    rows = (1, 8)
    inputs = {m: torch.randn(m, 2048) for m in rows}
    calls: dict[str, Callable[[torch.Tensor], Any]] = {}
    notes: dict[str, Any] = {}
    calls["torch_fp32"] = model
    packed = copy.deepcopy(model)
    for layer in packed:
        for name, child in list(layer.named_children()):
            if isinstance(child, nn.Linear):
                setattr(layer, name, PackedLinear(child))
    calls["torch_prepack"] = packed
    torch.backends.quantized.engine = "x86"
    int8 = copy.deepcopy(model)
    quantize_dynamic(
        int8, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
    calls["torch_int8"] = int8
    ov_core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"}
    config["PERFORMANCE_HINT"] = "LATENCY"
    for mode in ("ov_fp32", "ov_int8", "ov_int4"):
        t0 = time.perf_counter()
        with torch.inference_mode():
            ov_model = ov.convert_model(model, example_input=inputs[1], input=[(-1, 2048)])
        if mode == "ov_int8":
            ov_model = nncf.compress_weights(ov_model)
        elif mode == "ov_int4":
            ov_model = nncf.compress_weights(
                ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0
            )
        compiled = ov_core.compile_model(ov_model, "CPU", config)
        notes[mode] = {"convert_s": time.perf_counter() - t0}
        request = compiled.create_infer_request()

        def ov_call(x: torch.Tensor, request: Any = request) -> Any:
            request.infer([x.numpy()])
            return request.get_output_tensor(0).data

        calls[mode] = ov_call
    figures: dict[str, Any] = {}
    reference = {}
    with torch.inference_mode():
        for m in rows:
            reference[m] = model(inputs[m]).numpy()
        for name, fn in calls.items():
            per_layer = {}
            for m in rows:
                x = inputs[m]
                seconds = _per_call(lambda fn=fn, x=x: fn(x))  # type: ignore[misc]
                per_layer[f"rows{m}_ms_per_layer"] = 1000 * seconds / PROXY_LAYERS
            out = np.asarray(fn(inputs[1]))
            figures[name] = {
                **per_layer,
                "rel_err": rel_err(out, reference[1]),
                **notes.get(name, {}),
            }
    result["decode_proxy"] = figures
    result["proxy_layers"] = PROXY_LAYERS
    result["peak_rss_gib"] = _status_gib("VmHWM")
    return result
