"""Key/value caches of sequences of different lengths, held as one left-padded batch.

Each sequence of the running batch is one row. Rows are right-aligned: a row's ``length`` real
positions are the last ``length`` columns of the batch's ``width``; the columns before them are
padding, zero-filled (finite, so a masked position contributes exactly nothing) and masked out by
``attention_mask``. Every decode step appends one column to every row.

Policy:

- Each layer's keys and values live in a preallocated buffer written in place, so a decode step
  costs the new column only (``DynamicCache`` concatenates, copying the whole batch's cache every
  step). A full buffer grows by ``GROWTH`` columns at a time.
- Rows that leave are dropped in place (``drop``: the last rows move into their places, a copy
  of one row each); the buffers keep their rows' memory. Rows that join go into such free rows
  in place (``join``: a copy of the joining row only) when they fit: no longer than the batch's
  width, their future within the buffers' columns, and the batch at most half padding after it.
  Otherwise rows change by ``rebuild``, which copies the kept rows and the joining caches into
  fresh buffers as wide as the longest row plus the longest future (``headroom``: the most
  tokens any row may still generate), so the buffers never grow while the rows decode and their
  size is known in advance (the batch's memory budget counts exactly this); the batch changes at
  most once per step whatever joined or left.
- ``row(i)`` copies one row's real positions out as a ``DynamicCache`` (for the prefix cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ("GROWTH", "BatchedKV", "cache_bytes")

GROWTH = 256
"""Columns added to a full buffer (only when a row outgrows the headroom it was given)."""


def cache_bytes(kv: Cache) -> int:
    """Bytes of the keys and values a cache holds."""
    total = 0
    for layer in kv.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


class _SlabLayer(DynamicLayer):
    """One layer of the batch: ``keys``/``values`` are views of the first ``rows`` rows and
    ``length`` columns of buffers that may hold more of both (free rows, headroom)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self._keys_all, self._values_all = keys, values
        self.rows = int(keys.shape[0])
        self.length = length
        self.device = keys.device
        self.is_initialized = True
        self._expose()

    def _expose(self) -> None:
        self.keys = self._keys_all[: self.rows, :, : self.length]
        self.values = self._values_all[: self.rows, :, : self.length]

    @property
    def capacity_bytes(self) -> int:
        """Bytes of one of the two buffers (free rows and headroom included)."""
        return int(self._keys_all.untyped_storage().nbytes())

    @property
    def free_rows(self) -> int:
        return int(self._keys_all.shape[0]) - self.rows

    @property
    def columns(self) -> int:
        return int(self._keys_all.shape[2])

    def keep(self, order: Sequence[int]) -> None:
        """Row ``i`` becomes old row ``order[i]``; rows are moved only from beyond the new row
        count (``BatchedKV.drop``), so no source is overwritten before it is read. The rows
        beyond stay allocated (``join`` reuses them)."""
        for new, old in enumerate(order):
            if new != old:
                self._keys_all[new] = self._keys_all[old]
                self._values_all[new] = self._values_all[old]
        self.rows = len(order)
        self._expose()

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """One more row, right-aligned at ``length`` (``keys``: ``(heads, n, head dim)``, n <=
        length), written into the first free row; its padding is zeroed (finite, masked)."""
        row, n = self.rows, int(keys.shape[-2])
        for buffer, new in ((self._keys_all, keys), (self._values_all, values)):
            buffer[row, :, : self.length - n] = 0
            buffer[row, :, self.length - n : self.length] = new
        self.rows += 1
        self._expose()

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, values)``, each ``(rows, heads, length, head dim)`` (views of the buffers)."""
        rows, length = self.rows, self.length
        return self._keys_all[:rows, :, :length], self._values_all[:rows, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + int(key_states.shape[-2])
        if end > self.columns:
            self._keys_all = _widened(self._keys_all[: self.rows], self.length, end + GROWTH)
            self._values_all = _widened(self._values_all[: self.rows], self.length, end + GROWTH)
        self._keys_all[: self.rows, :, self.length : end] = key_states
        self._values_all[: self.rows, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.pair


def _widened(buffer: torch.Tensor, used: int, columns: int) -> torch.Tensor:
    shape = list(buffer.shape)
    shape[2] = columns
    wider = buffer.new_zeros(shape)
    wider[:, :, :used] = buffer[:, :, :used]
    return wider


class BatchedKV:
    """The running batch's key/value cache: rows of different lengths, left-padded."""

    def __init__(self) -> None:
        self._layers: list[_SlabLayer] = []
        self.lengths: list[int] = []
        """Real positions per row."""
        self.rebuilds = self.joined_in_place = 0
        """How rows joined: fresh buffers (a copy of every row) or a free row (its own copy)."""

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns per row (the longest row's length)."""
        return self._layers[0].length if self._layers else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers (padding and headroom included)."""
        return sum(2 * layer.capacity_bytes for layer in self._layers)

    @property
    def cache(self) -> Cache:
        """The cache to pass to the model's forward; it appends one column per row per step."""
        return Cache(layers=list(self._layers))

    @property
    def sparse(self) -> bool:
        """More than half the rows' positions are padding (rebuilding would compact them)."""
        return 2 * sum(self.lengths) < self.rows * self.width

    def attention_mask(self, new: int = 1) -> torch.Tensor:
        """``(rows, width + new)`` int64: 1 at each row's real positions and the ``new`` ones."""
        device = self._layers[0].device if self._layers else torch.device("cpu")
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(self.width + new, device=device)
        return (columns[None, :] >= (self.width - lengths)[:, None]).long()

    def advanced(self, new: int = 1) -> None:
        """Record that a forward pass appended ``new`` positions to every row."""
        self.lengths = [n + new for n in self.lengths]

    def rebuild(
        self, keep: Sequence[int], joining: Sequence[DynamicCache], headroom: int = 0
    ) -> None:
        """Rows ``keep`` of the current batch (in that order), then one row per ``joining``.

        ``joining`` caches hold one sequence each (batch 1, any length); they are copied, not
        kept. ``headroom``: columns to leave free for coming steps.
        """
        lengths = [self.lengths[i] for i in keep] + [kv.get_seq_length() for kv in joining]
        if not lengths:
            self.clear()
            return
        self.rebuilds += 1
        width = max(lengths)
        columns = width + max(0, headroom)
        old_width = self.width
        count = len(joining[0].layers) if joining else len(self._layers)
        layers: list[_SlabLayer] = []
        for index in range(count):
            pairs = [layer.pair for layer in self._layers[index : index + 1]]
            sample = pairs[0][0] if pairs else _layer(joining[0], index)[0]
            keys = sample.new_zeros((len(lengths), sample.shape[1], columns, sample.shape[3]))
            values = keys.clone()
            row = 0
            for i in keep:
                n = self.lengths[i]
                old_keys, old_values = pairs[0]
                keys[row, :, width - n : width] = old_keys[i, :, old_width - n : old_width]
                values[row, :, width - n : width] = old_values[i, :, old_width - n : old_width]
                row += 1
            for kv in joining:
                new_keys, new_values = _layer(kv, index)
                n = int(new_keys.shape[-2])
                keys[row, :, width - n : width] = new_keys[0]
                values[row, :, width - n : width] = new_values[0]
                row += 1
            layers.append(_SlabLayer(keys, values, width))
        self._layers = layers
        self.lengths = lengths

    def drop(self, rows: Sequence[int]) -> list[int]:
        """Remove ``rows``, each replaced by the then-last row (swap-remove): one row is copied
        per removed row, not the batch, and the buffers keep the freed rows for ``join``.
        Returns the new row order as old row indices."""
        order = list(range(self.rows))
        for index in sorted(rows, reverse=True):
            order[index] = order[-1]
            order.pop()
        for layer in self._layers:
            layer.keep(order)
        self.lengths = [self.lengths[i] for i in order]
        return order

    def join(self, joining: Sequence[DynamicCache], headroom: int = 0) -> bool:
        """Add ``joining`` (batch-1 caches, copied) as rows in the buffers' free rows, without
        touching the running rows, if they fit: free rows for all, none longer than ``width``,
        ``headroom`` more columns within the buffers, and at most half the batch's positions
        padding afterwards (a short row in a wide batch is cheaper rebuilt than carried).
        False, changing nothing, when they do not fit (then ``rebuild``)."""
        if not self._layers or not joining:
            return False
        lengths = [kv.get_seq_length() for kv in joining]
        first = self._layers[0]
        rows = self.rows + len(joining)
        if (
            first.free_rows < len(joining)
            or max(lengths) > self.width
            or self.width + max(0, headroom) > first.columns
            or 2 * (sum(self.lengths) + sum(lengths)) < rows * self.width
        ):
            return False
        for index, layer in enumerate(self._layers):
            for kv in joining:
                keys, values = _layer(kv, index)
                layer.append(keys[0], values[0])
        self.lengths = [*self.lengths, *lengths]
        self.joined_in_place += len(joining)
        return True

    def row(self, index: int) -> DynamicCache:
        """A copy of row ``index``'s real positions, as a batch-1 ``DynamicCache``."""
        kv = DynamicCache()
        n, width = self.lengths[index], self.width
        for i, layer in enumerate(self._layers):
            keys, values = layer.pair
            keys = keys[index : index + 1, :, width - n : width]
            values = values[index : index + 1, :, width - n : width]
            # update() concatenates onto an empty tensor: a copy that owns its memory.
            kv.update(keys, values, i)
        return kv

    def clear(self) -> None:
        self._layers = []
        self.lengths = []


def _layer(kv: DynamicCache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer: Any = kv.layers[index]  # a DynamicLayer: prefill caches hold no other kind
    keys, values = layer.keys, layer.values
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise ValueError("a joining cache has an empty layer")
    return keys, values
