"""Decoding primitives shared by the story engine and the official-parity ``generate`` (docs/reference.md §2.6).

* :func:`forward_chunk` — one decoder forward of new tokens on top of a :class:`~seedstory_core.cache.StoryKVCache`
  (prefill only the new tokens; never re-encode the kept context).
* :func:`image_query_pass` — the 64 image queries in ONE forward: once BOI is chosen the next tokens
  (IMG_0..IMG_{n-1}, EOI) are fixed, so the hidden states at the IMG positions are computed together instead of
  by 66 forced decode steps; they equal forced decoding to fp32 rounding (tested).
* :func:`forward_chunk` runs one committed token through the compiled static-shape step of
  :mod:`seedstory_core.static_decode` where that is enabled for the decoder (off by default).
* :class:`ImageTokenRule` — the official ``AutoImageTokenGenerationProcessor``: after BOI/IMG_j the next image token
  is forced (score = max + 10); otherwise IMG/EOI scores are set to 0.0 (official) or -inf (``suppress='neg_inf'``).

The official greedy ``generate`` built on the same primitives (golden parity only) is
:func:`seedstory_core.golden.official_generate`.
"""

from __future__ import annotations

import inspect
from typing import Dict, Optional, Sequence

import torch

from .cache import CachePolicy, StoryKVCache
from .static_decode import static_decoder_for
from .tokens import ImageTokens, image_segment_kinds


class ImageTokenRule:
    """The official image-token logits rule (docs/reference.md §2.6 "Logits processor").

    Args:
        image: image token ids.
        suppress: ``official`` sets IMG/EOI scores to 0.0 at free steps (as SEED-Story does); ``neg_inf`` forbids
            them (this project's engine default: an IMG token can never start a text step).
    """

    def __init__(self, image: ImageTokens, suppress: str = "official"):
        if suppress not in ("official", "neg_inf"):
            raise ValueError(f"suppress must be 'official' or 'neg_inf', got {suppress!r}")
        self.image = image
        self.suppress = suppress
        seq = image.forced_sequence
        self._next = {seq[i]: seq[i + 1] for i in range(len(seq) - 1)}
        self._blocked = torch.tensor([*image.img, image.eoi], dtype=torch.long)

    def forced_next(self, last_token: int) -> Optional[int]:
        return self._next.get(int(last_token))

    def __call__(self, last_token: int, scores: torch.Tensor) -> torch.Tensor:
        """Process a (V,) float score vector given the last token; returns a new tensor."""
        scores = scores.clone()
        forced = self.forced_next(last_token)
        if forced is not None:
            scores[forced] = scores.max() + 10.0
        else:
            scores[self._blocked.to(scores.device)] = 0.0 if self.suppress == "official" else float("-inf")
        return scores


class InferenceModel:
    """An agent seen through another decoder (e.g. its merged-LoRA inference decoder): ``.decoder`` is the given
    module, every other attribute (``lm_head``, ``embed_tokens``, resamplers, ``config``) is the agent's own."""

    def __init__(self, agent, decoder):
        self.agent = agent
        self.decoder = decoder

    def __getattr__(self, name):
        return getattr(self.__dict__["agent"], name)


def decoder_of(agent):
    return agent.decoder


_CACHE_KWARG: Dict[type, str] = {}


def cache_kwarg(decoder) -> str:
    """Name of the decoder's KV-cache argument: ``cache`` in recent transformers 5 releases (5.24 here), where the
    old ``past_key_values`` still works but logs a deprecation warning on every call; ``past_key_values`` in the
    releases before the rename. The same cache object is passed either way."""
    kind = type(decoder)
    if kind not in _CACHE_KWARG:
        params = inspect.signature(decoder.forward).parameters
        _CACHE_KWARG[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[kind]


def forward_chunk(
    agent, cache: StoryKVCache, embeds: torch.Tensor, kinds: Sequence[int], *, commit: bool = True, pin: int = 0
) -> torch.Tensor:
    """Run the LoRA LLaMA over new tokens on top of ``cache``.

    Args:
        agent: a :class:`~seedstory_core.agent.SeedStoryAgent` (uses ``agent.decoder``).
        cache: the story cache; extended in place when ``commit`` (else restored after the pass).
        embeds: (1, n, D) input embeddings of the new tokens, in the decoder's dtype/device.
        kinds: n TokenKind values.
        pin: the first ``pin`` tokens are pinned (the story's BOS + cast block; :meth:`StoryKVCache.chunk`).

    Returns (1, n, D) final-norm hidden states.

    A single committed token on a decoder with static decoding enabled
    (:func:`~seedstory_core.static_decode.enable_static_decode`) runs the compiled static-shape step instead (same
    result, same cache afterwards).
    """
    decoder = decoder_of(agent)
    static = static_decoder_for(decoder) if commit and embeds.shape[1] == 1 and not pin else None
    if static is not None:
        return static.step(cache, embeds, kinds)
    with cache.chunk(kinds, commit=commit, pin=pin) as position_ids:
        out = decoder(
            inputs_embeds=embeds,
            position_ids=position_ids.to(embeds.device),
            use_cache=True,
            **{cache_kwarg(decoder): cache},
        )
    return out.last_hidden_state


def logits_at(agent, hidden: torch.Tensor) -> torch.Tensor:
    """(…, D) hidden states -> float32 logits (…, V) through the agent's lm_head."""
    return agent.lm_head(hidden).float()


def image_query_pass(
    agent, cache: StoryKVCache, image: ImageTokens, *, commit: bool = False, forced: bool = False
) -> Dict[str, torch.Tensor]:
    """The image queries: [BOI, IMG_0..IMG_{n-1}] (+ EOI when ``commit``) with their word embeddings.

    ``forced=False`` (the engine): ONE forward over the whole run — once BOI is chosen the rest is fixed.
    ``forced=True`` (the official loop, docs/reference.md §2.6): one decode step per token, computing the logits of
    every step as HF ``generate`` with the forcing processor does; used by the ``reencode_window`` baseline.

    Returns ``{'hidden': (1, n, D) hidden states at the IMG input positions, 'features': (1, T, D)
    output_resampler(hidden), 'all_hidden': hidden states of every fed token}``. With ``commit=False`` the cache
    is left exactly as before (the story context later stores the image through the input resampler instead).
    """
    ids = [image.boi, *image.img] + ([image.eoi] if commit else [])
    kinds = image_segment_kinds(len(image.img), eoi=commit)
    device = agent.lm_head.weight.device
    embeds = agent.embed_tokens(torch.tensor([ids], dtype=torch.long, device=device))
    if not forced:
        hidden = forward_chunk(agent, cache, embeds, kinds, commit=commit)
    else:
        snapshot = cache.meta
        steps = []
        for j, kind in enumerate(kinds):
            h = forward_chunk(agent, cache, embeds[:, j : j + 1], [kind])
            logits_at(agent, h[:, -1])  # the official loop scores every forced step
            steps.append(h)
        hidden = torch.cat(steps, dim=1)
        if not commit:
            cache.rollback(snapshot)
    n = len(image.img)
    img_hidden = hidden[:, 1 : 1 + n]
    features = agent.output_resampler(img_hidden)
    return {"hidden": img_hidden, "features": features, "all_hidden": hidden}


def new_cache(agent, policy: CachePolicy) -> StoryKVCache:
    """An empty :class:`StoryKVCache` sized for the agent's decoder."""
    decoder = decoder_of(agent)
    return StoryKVCache(len(decoder.layers), policy, decoder.rotary_emb.inv_freq)
