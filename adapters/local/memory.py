"""Key/value memory: what one position costs, and the default budget for the running batch."""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ("default_kv_budget", "free_memory", "kv_bytes_per_token")


def default_kv_budget(device: torch.device, reserved: int) -> int:
    """Half the memory free now (after the weights loaded), less ``reserved`` (the prefix
    cache's bytes), and never under a quarter of it."""
    free = free_memory(device)
    return max(free // 2 - reserved, free // 4)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (for the CPU: what the kernel could give without swapping)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return _available_memory()


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:  # MemAvailable counts reclaimable page cache
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def kv_bytes_per_token(model: Any) -> int:
    """Key/value bytes one position of one sequence takes (every layer, keys and values)."""
    text = model.config.get_text_config()
    heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    size = torch.empty((), dtype=model.dtype).element_size()
    return 2 * int(text.num_hidden_layers) * heads * head_dim * size
