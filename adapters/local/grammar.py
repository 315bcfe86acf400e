"""The decoding-time half of ``response_format``: a logits processor over a compiled grammar.

``GrammarLogitsProcessor`` advances one xgrammar matcher per batch row with each sampled token and
masks the logits to what the grammar allows, never allowing the tokens ``VocabFacts.never`` marks
inside a JSON string and ``VocabFacts.outside`` marks elsewhere (the same, except that a tool
call's wrapper tokens, ``<tool_call>`` and newlines, may be let through), and, near the end of the
token budget, narrowing further so the JSON closes in time ("closing mode", policy in
``adapters.local.constraints``). ``adapters.local.constraints`` and ``adapters.local.toolgrammar``
build both.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import transformers
import xgrammar as xgr

__all__ = ("GrammarLogitsProcessor", "VocabFacts")


class VocabFacts:
    """Per-token facts the processor needs beyond the grammar, as boolean masks over the vocab."""

    def __init__(
        self, info: xgr.TokenizerInfo, banned: set[int], structure: frozenset[int] = frozenset()
    ) -> None:
        """``banned``: token ids never allowed; ``structure``: ids of ``banned`` allowed outside
        JSON strings, together with the tokens whose only control bytes are newlines (a tool
        call's wrapper text has them), when not empty."""
        decoded: list[bytes] = list(info.decoded_vocab)
        decoded += [b""] * (int(info.vocab_size) - len(decoded))
        special = set(info.special_token_ids)

        def mask(test: Any) -> torch.Tensor:
            return torch.tensor([i not in special and test(b) for i, b in enumerate(decoded)])

        self.decoded = decoded
        self.length = torch.tensor([len(b) for b in decoded])
        self.never = mask(lambda b: any(c < 0x20 for c in b))
        banned_ids = [i for i in banned if i < len(decoded)]
        self.never[banned_ids] = True
        self.outside = self.never
        if structure:
            newlines = mask(lambda b: 0x0A in b and all(c >= 0x20 or c == 0x0A for c in b))
            self.outside = self.never & ~newlines
            self.outside[banned_ids] = True
            self.outside[[i for i in structure if i < len(decoded)]] = False
        self.stops = torch.zeros(len(decoded), dtype=torch.bool)
        self.stops[[i for i in info.stop_token_ids if i < len(decoded)]] = True
        self.quote_first = mask(lambda b: b[:1] == b'"')
        self.quote_close = mask(lambda b: b[:1] == b'"' and set(b[1:]) <= set(b"]}"))
        self.closers = mask(lambda b: bool(b) and set(b) <= set(b"]}"))
        self.separators = mask(lambda b: bool(b) and set(b) <= set(b'", :'))
        self.punctuation = mask(lambda b: bool(b) and set(b) <= set(b'"]}[{,: '))


class GrammarLogitsProcessor(transformers.LogitsProcessor):
    """Sets the logits of every token the grammar forbids to -inf; one per ``generate()`` call.

    Each call first advances the grammar by the token sampled last (the prompt on the first
    call), then masks. ``max_tokens`` (completion budget) and ``reserve`` (tokens kept for
    closing) enable closing mode. ``steps`` and ``seconds`` count calls and time spent in them.
    """

    def __init__(
        self,
        grammar: xgr.CompiledGrammar,
        vocab: VocabFacts,
        *,
        max_tokens: int | None = None,
        reserve: int = 0,
    ) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.vocab_size = int(grammar.tokenizer_info.vocab_size)
        self.max_tokens = max_tokens
        self.reserve = reserve
        self.matchers: list[xgr.GrammarMatcher] = []
        self.bitmask: torch.Tensor | None = None
        self.prompt_length = 0
        self.in_string: list[bool] = []
        self.escaped: list[bool] = []
        self.depth: list[int] = []
        self.steps = 0
        self.seconds = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = time.perf_counter()
        batch = int(input_ids.shape[0])
        if self.bitmask is None:
            self.matchers = [xgr.GrammarMatcher(self.grammar) for _ in range(batch)]
            self.bitmask = xgr.allocate_token_bitmask(batch, self.vocab_size)
            self.prompt_length = int(input_ids.shape[1])
            self.in_string = [False] * batch
            self.escaped = [False] * batch
            self.depth = [0] * batch
        else:
            if batch != len(self.matchers):
                raise RuntimeError("one GrammarLogitsProcessor serves one batch of one generate()")
            for row, matcher in enumerate(self.matchers):
                if matcher.is_terminated():
                    continue
                token = int(input_ids[row, -1])
                if not matcher.accept_token(token):
                    raise RuntimeError("a token outside the grammar was sampled")
                self._lex(row, token)
        for row, matcher in enumerate(self.matchers):
            # A terminated row keeps its last mask (stop tokens only): generate pads it anyway.
            if not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
        xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        width = min(int(scores.shape[-1]), self.vocab_size)
        view = scores[:, :width]
        never = self.vocab.never[:width]
        if self.vocab.outside is not self.vocab.never and not all(self.in_string):
            outside = self.vocab.outside[:width]
            # Rows in different states need a mask each (never with one row, the engine's case).
            inside = torch.tensor(self.in_string)[:, None]
            never = torch.where(inside, never, outside) if any(self.in_string) else outside
        view.masked_fill_(never.to(scores.device), -torch.inf)
        if self.max_tokens is not None:
            left = self.max_tokens - (int(input_ids.shape[1]) - self.prompt_length)
            self._close(view, [left <= self.reserve + 2 * d for d in self.depth])
        self.steps += 1
        self.seconds += time.perf_counter() - start
        return scores

    def _lex(self, row: int, token: int) -> None:
        """Track whether ``row`` is inside a JSON string (after ``token``'s bytes)."""
        if token >= len(self.vocab.decoded):
            return
        for byte in self.vocab.decoded[token]:
            if not self.in_string[row]:
                self.in_string[row] = byte == 0x22
                self.depth[row] += (byte in b"[{") - (byte in b"]}")
            elif self.escaped[row]:
                self.escaped[row] = False
            elif byte == 0x5C:
                self.escaped[row] = True
            elif byte == 0x22:
                self.in_string[row] = False

    def _close(self, view: torch.Tensor, closing: list[bool]) -> None:
        """Closing mode: narrow each closing row to the first tier keeping an allowed token."""
        width = view.shape[-1]
        v = self.vocab
        for row in range(view.shape[0]):
            if not closing[row] or self.escaped[row]:
                continue
            tiers = (
                (v.quote_close, v.quote_first)
                if self.in_string[row]
                else (v.stops, v.closers, v.separators, v.punctuation)
            )
            scores = view[row]
            allowed = scores > -torch.inf
            for tier in tiers:
                keep = tier[:width].to(scores.device)
                if bool((allowed & keep).any()):
                    scores.masked_fill_(~keep, -torch.inf)
                    break
            else:  # forced text (a key, an enum value): in as few tokens as possible
                length = torch.where(allowed, v.length[:width].to(scores.device), -1)
                scores.masked_fill_(length < length.max(), -torch.inf)
