"""A compiled, static-shape decode step over the story's evicting KV cache (``torch.compile``).

Why static shapes: ``torch.compile`` with ``dynamic=False`` specialises a graph to its input shapes. The story cache
(:class:`~seedstory_core.cache.StoryKVCache`) grows by one entry per decoded token and shrinks at every eviction, so
a decoder called on it directly would see a new key length every token. Here every decode step runs on a
**fixed-capacity mirror** of the story cache instead, transformers' own ``StaticCache`` (the static-cache path of
transformers' ``generate``, docs: https://huggingface.co/docs/transformers/llm_optims#static-kv-cache-and-torchcompile):

* capacity ``C`` slots per layer, fixed for the story: the policy's token budget plus the longest step
  (:func:`capacity_for_policy`), or, for a policy without a bound (``dense``, an uncapped ``multimodal_sink``),
  the kept length rounded up to a multiple of ``bucket`` (a new capacity is one more compile, rarely);
* slots ``0..L-1`` hold the story cache's ``L`` kept entries (keys already rotated at their RoPE positions, as the
  story cache stores them); the new token's key/value is written in place at slot ``L`` (``StaticLayer``'s
  ``index_copy_`` at its ``cumulative_length``);
* an additive attention mask ``(1, 1, 1, C)`` (0 over slots ``0..L``, the dtype's most negative value elsewhere),
  computed inside the graph from ``cumulative_length``, and explicit position ids (the story cache's own: ``L`` in
  ``rerotate`` mode, the story position in ``original`` mode), so the graph never depends on ``L`` itself.

An eviction (or a fork, a rollback, another cache) makes the mirror stale; the next step then rewrites slots
``0..L-1`` in place from the story cache (one copy of the kept entries, per sentence at most, not per token) and
the compiled graph is reused: same shapes, same buffers. After each step the new entry is appended to the story cache
as well, so the story cache stays the single truth (copy-on-write forks, eviction, saving: unchanged).

Use: :func:`enable_static_decode` on a story engine (or agent), after which every single-token
:func:`~seedstory_core.generation.forward_chunk` on its decoder (the story engine's text decoding) goes through
:class:`StaticDecoder`; :func:`disable_static_decode` turns it off. Default: off. Compiled and eager decoding produce
the same tokens (tests/core/test_static_decode.py); the speed is measured by ``python -m bench.decode_bench``.
"""

from __future__ import annotations

import time
import weakref
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import StaticCache

from .cache import CachePolicy, StoryKVCache

#: default rounding of the capacity when the policy has no token bound
DEFAULT_BUCKET = 512

_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, StaticDecoder]" = weakref.WeakKeyDictionary()


def capacity_for_policy(
    policy: CachePolicy, segment_tokens: int, step_tokens: int, pinned_tokens: int = 0
) -> Optional[int]:
    """Slots a static mirror needs for a whole story under ``policy``, or None when the policy has no bound.

    Args:
        policy: the story's cache policy.
        segment_tokens: the longest caption + image segment in tokens (what :meth:`CachePolicy.token_bound` takes).
        step_tokens: the most tokens one story step adds before its eviction can run (text + image segment).
        pinned_tokens: the story's pinned tokens (BOS + its cast block, ``StoryState.cast_tokens``; 0 without a cast
            sheet), which every policy keeps.

    Returns ``policy.token_bound(segment_tokens, pinned_tokens) + step_tokens`` (tokens), None for ``dense`` or an
    uncapped ``multimodal_sink`` (then :class:`StaticDecoder` rounds up to buckets).
    """
    bound = policy.token_bound(int(segment_tokens), int(pinned_tokens))
    return None if bound is None else bound + int(step_tokens)


class StaticDecoder:
    """One decoder's compiled single-token step on a fixed-capacity mirror of a :class:`StoryKVCache`.

    Args:
        decoder: a transformers decoder (``LlamaModel``: the agent's merged-LoRA inference decoder or its decoder)
            that takes ``inputs_embeds``, ``position_ids``, a 4D ``attention_mask`` and a cache.
        capacity: slots per layer (tokens); None = the first cache's length rounded up to ``bucket``. A cache
            longer than the capacity gets a larger mirror (rounded up to ``bucket``; one more compile).
        bucket: rounding of automatic capacities (tokens).
        compile: ``torch.compile`` the step (False: the same static-shape step, eager; what the tests compare).
        mode: ``torch.compile`` mode; None = ``reduce-overhead`` (CUDA graphs) on CUDA, the default mode elsewhere.
        fullgraph: compile the whole step as one graph (an error instead of a silent graph break).

    Attributes:
        compile_seconds: wall seconds of each capacity's first (compiling) call, ``{capacity: s}``.
        resyncs: how many times the mirror was rewritten from a story cache.

    Raises:
        ValueError: ``capacity`` or ``bucket`` below 1.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        capacity: Optional[int] = None,
        bucket: int = DEFAULT_BUCKET,
        compile: bool = True,
        mode: Optional[str] = None,
        fullgraph: bool = True,
    ):
        if capacity is not None and int(capacity) < 1:
            raise ValueError(f"StaticDecoder capacity must be >= 1 token, got {capacity}; pass None for automatic")
        if int(bucket) < 1:
            raise ValueError(f"StaticDecoder bucket must be >= 1 token, got {bucket}")
        self.decoder = decoder
        self.config = decoder.config
        self.requested_capacity = None if capacity is None else int(capacity)
        self.bucket = int(bucket)
        self.compiled = bool(compile)
        self.mode = mode
        self.fullgraph = fullgraph
        self.static: Optional[StaticCache] = None
        self.capacity = 0
        self.compile_seconds = {}
        self.resyncs = 0
        self._fn = None
        self._mirror = None  # (weakref to the story cache, its meta) the slots 0..L-1 hold, or None

    # ------------------------------------------------------------------ the graph
    def _forward(self, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The static-shape step: (1, 1, D) embeddings, (1, 1) positions -> (1, 1, D) final-norm hidden states."""
        static = self.static
        filled = static.layers[0].cumulative_length
        slots = torch.arange(self.capacity, device=embeds.device)
        mask = torch.zeros((1, 1, 1, self.capacity), dtype=embeds.dtype, device=embeds.device)
        mask = mask.masked_fill(slots > filled, torch.finfo(embeds.dtype).min)
        out = self.decoder(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask, cache=static, use_cache=True
        )
        return out.last_hidden_state

    def _allocate(self, needed: int, like: torch.Tensor) -> None:
        capacity = self.requested_capacity or 0
        if capacity < needed:
            capacity = -(-needed // self.bucket) * self.bucket
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        static = StaticCache(config=cfg, max_cache_len=capacity)
        static.early_initialization(
            batch_size=1,
            num_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            dtype=like.dtype,
            device=like.device,
        )
        self.static, self.capacity, self._mirror = static, capacity, None
        if self._fn is None:
            if not self.compiled:
                self._fn = self._forward
            else:
                mode = self.mode
                if mode is None and like.device.type == "cuda":
                    mode = "reduce-overhead"
                self._fn = torch.compile(self._forward, mode=mode, fullgraph=self.fullgraph, dynamic=False)

    # ------------------------------------------------------------------ mirror
    def in_sync(self, cache: StoryKVCache) -> bool:
        """Whether slots ``0..L-1`` hold exactly ``cache``'s kept entries (same view, same metadata)."""
        m = self._mirror
        return m is not None and m[0]() is cache and m[1] is cache.meta

    def _sync(self, cache: StoryKVCache) -> None:
        """Rewrite slots ``0..L-1`` in place from ``cache`` (after an eviction, a fork, another cache)."""
        n = cache.length
        for layer, slot in zip(cache.layers, self.static.layers):
            if n and layer.is_initialized:
                keys, values = layer.view()
                slot.keys[:, :, :n].copy_(keys)
                slot.values[:, :, :n].copy_(values)
            slot.cumulative_length.fill_(n)
        self.resyncs += 1

    def step(self, cache: StoryKVCache, embeds: torch.Tensor, kinds: Sequence[int]) -> torch.Tensor:
        """One token on top of ``cache``, as :func:`~seedstory_core.generation.forward_chunk` with ``commit=True``.

        Args:
            cache: the story cache; gains the token's entry (and evicts if the token is an EOI completing an image).
            embeds: (1, 1, D) input embedding in the decoder's dtype and device.
            kinds: one TokenKind value.

        Returns (1, 1, D) final-norm hidden states.

        Raises:
            ValueError: not exactly one token, or a batch other than 1.
        """
        if embeds.dim() != 3 or embeds.shape[0] != 1 or embeds.shape[1] != 1 or len(kinds) != 1:
            raise ValueError(
                f"StaticDecoder.step decodes one token of batch 1: expected (1, 1, D) embeddings and one kind, got "
                f"{tuple(embeds.shape)} and {len(kinds)} kinds; use forward_chunk for a chunk of several tokens"
            )
        n = cache.length
        if self.static is None or n + 1 > self.capacity:
            self._allocate(n + 1, embeds)
        if not self.in_sync(cache):
            self._sync(cache)
        self._mirror = None  # stale until this step is committed
        evictions = cache.meta.evictions
        with cache.chunk(kinds) as position_ids:
            first = self.capacity not in self.compile_seconds
            t0 = time.perf_counter()
            hidden = self._fn(embeds, position_ids.to(embeds.device))
            if first:
                if embeds.device.type == "cuda":
                    torch.cuda.synchronize(embeds.device)
                self.compile_seconds[self.capacity] = time.perf_counter() - t0
            for layer, slot in zip(cache.layers, self.static.layers):
                layer.update(slot.keys[:, :, n : n + 1], slot.values[:, :, n : n + 1])
        if cache.meta.evictions == evictions and cache.length == n + 1:
            self._mirror = (weakref.ref(cache), cache.meta)
        if self.compiled and embeds.device.type == "cuda":
            hidden = hidden.clone()  # CUDA graphs reuse their output buffer on the next replay
        return hidden


# ------------------------------------------------------------------------------------------------ engine switch
def _decoder_of(model) -> nn.Module:
    if hasattr(model, "inference_model"):  # a StoryEngine
        return model.inference_model().decoder
    if hasattr(model, "decoder"):  # an agent or an InferenceModel
        return model.decoder
    if isinstance(model, nn.Module) and hasattr(model, "layers"):
        return model
    raise TypeError(
        f"enable_static_decode expects a StoryEngine, an agent (with .decoder) or a decoder module, got "
        f"{type(model).__name__}"
    )


def enable_static_decode(model, static: Optional[StaticDecoder] = None, **options) -> StaticDecoder:
    """Route every single-token :func:`~seedstory_core.generation.forward_chunk` on ``model``'s decoder through a
    :class:`StaticDecoder` (``static``, e.g. one enabled before and disabled since: its compiled graph is kept; else
    a new one built with ``options``); returns it. ``model``: a ``StoryEngine`` (its inference decoder: the
    merged-LoRA one when it merges), an agent / ``InferenceModel`` (its ``.decoder``) or the decoder. A rebuilt
    decoder (the agent's weights changed) is not covered: enable again.

    Raises:
        TypeError: ``model`` is none of these.
        ValueError: ``static`` was built for another decoder.
    """
    decoder = _decoder_of(model)
    if static is None:
        static = StaticDecoder(decoder, **options)
    elif static.decoder is not decoder:
        raise ValueError(
            "enable_static_decode: this StaticDecoder was built for another decoder; pass no `static` to build one "
            "for this model"
        )
    _REGISTRY[decoder] = static
    return static


def disable_static_decode(model) -> None:
    """Undo :func:`enable_static_decode` (eager decoding again); nothing happens when it was not enabled."""
    _REGISTRY.pop(_decoder_of(model), None)


def static_decoder_for(decoder: nn.Module) -> Optional[StaticDecoder]:
    """The :class:`StaticDecoder` enabled for ``decoder``, or None."""
    return _REGISTRY.get(decoder)
