"""Decoding primitives shared by the story engine and the official-parity ``generate`` (spec §2.6).

* :func:`forward_chunk` — one decoder forward of new tokens on top of a :class:`~seedstory_core.cache.StoryKVCache`
  (prefill only the new tokens; never re-encode the kept context).
* :func:`image_query_pass` — the 64 image queries in ONE forward: once BOI is chosen the next tokens
  (IMG_0..IMG_{n-1}, EOI) are fixed, so the hidden states at the IMG positions are computed together instead of
  by 66 forced decode steps; they equal forced decoding to fp32 rounding (tested).
* :class:`ImageTokenRule` — the official ``AutoImageTokenGenerationProcessor``: after BOI/IMG_j the next image token
  is forced (score = max + 10); otherwise IMG/EOI scores are set to 0.0 (official) or -inf (``suppress='neg_inf'``).
* :func:`official_generate` — the official greedy ``generate`` (first prompt of gen_george.py) on top of the
  same primitives; used by the golden agent check.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .cache import CachePolicy, StoryKVCache, TokenKind


@dataclass(frozen=True)
class ImageTokens:
    """Ids of BOI, EOI and the IMG tokens (spec §2.1). Build from a tokenizer's ``image_ids``."""

    boi: int
    eoi: int
    img: tuple

    @classmethod
    def of(cls, obj) -> "ImageTokens":
        return cls(int(obj.boi), int(obj.eoi), tuple(int(i) for i in obj.img))

    @property
    def forced_sequence(self) -> List[int]:
        return [self.boi, *self.img, self.eoi]


def kinds_from_ids(ids: Sequence[int], image: ImageTokens, bos_id: int) -> List[int]:
    """TokenKind of each id (BOS, BOI, IMG, EOI, else TEXT)."""
    img = set(image.img)
    out = []
    for i, t in enumerate(ids):
        t = int(t)
        if t == bos_id and i == 0:
            out.append(TokenKind.BOS)
        elif t == image.boi:
            out.append(TokenKind.BOI)
        elif t == image.eoi:
            out.append(TokenKind.EOI)
        elif t in img:
            out.append(TokenKind.IMG)
        else:
            out.append(TokenKind.TEXT)
    return out


class ImageTokenRule:
    """The official image-token logits rule (spec §2.6 "Logits processor").

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


def forward_chunk(agent, cache: StoryKVCache, embeds: torch.Tensor, kinds: Sequence[int], *, commit: bool = True) -> torch.Tensor:
    """Run the LoRA LLaMA over new tokens on top of ``cache``.

    Args:
        agent: a :class:`~seedstory_core.agent.SeedStoryAgent` (uses ``agent.decoder``).
        cache: the story cache; extended in place when ``commit`` (else restored after the pass).
        embeds: (1, n, D) input embeddings of the new tokens, in the decoder's dtype/device.
        kinds: n TokenKind values.

    Returns (1, n, D) final-norm hidden states.
    """
    decoder = decoder_of(agent)
    with cache.chunk(kinds, commit=commit) as position_ids:
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


def image_query_pass(agent, cache: StoryKVCache, image: ImageTokens, *, commit: bool = False, forced: bool = False) -> Dict[str, torch.Tensor]:
    """The image queries: [BOI, IMG_0..IMG_{n-1}] (+ EOI when ``commit``) with their word embeddings.

    ``forced=False`` (the engine): ONE forward over the whole run — once BOI is chosen the rest is fixed.
    ``forced=True`` (the official loop, spec §2.6): one decode step per token, computing the logits of every step
    as HF ``generate`` with the forcing processor does; used by the ``reencode_window`` baseline.

    Returns ``{'hidden': (1, n, D) hidden states at the IMG input positions, 'features': (1, T, D)
    output_resampler(hidden), 'all_hidden': hidden states of every fed token}``. With ``commit=False`` the cache
    is left exactly as before (the story context later stores the image through the input resampler instead).
    """
    ids = [image.boi, *image.img] + ([image.eoi] if commit else [])
    kinds = [TokenKind.BOI] + [TokenKind.IMG] * len(image.img) + ([TokenKind.EOI] if commit else [])
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


@torch.no_grad()
def official_generate(
    agent,
    input_ids: torch.Tensor,
    image_embeds: Optional[torch.Tensor],
    ids_cmp_mask: Optional[torch.Tensor],
    *,
    image: ImageTokens,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
    one_pass: bool = True,
) -> Dict[str, torch.Tensor]:
    """The official greedy ``ContinuousLVLM.generate`` (spec §2.6) on the engine's primitives.

    Args:
        input_ids: (1, L) prompt ids (e.g. ``[BOS] caption <img> IMG... </img>``).
        image_embeds: (N, T, D) ViT-space features of the prompt's input images (or None).
        ids_cmp_mask: (1, L) bool, True at the prompt's input IMG positions.
        one_pass: process the forced [IMG..., EOI] run in one forward (True) or token by token (False).

    Returns ``generate_ids`` (n,) int64, ``has_img_output`` bool scalar, ``num_gen_imgs`` int64 scalar,
    ``img_gen_feat`` (1, T, D) (zeros-shaped empty when no image), ``img_hidden_states`` (1, n_img, D),
    ``step_scores`` (n, V) processed scores of every step.
    """
    device = agent.lm_head.weight.device
    rule = ImageTokenRule(image, suppress="official")
    cache = new_cache(agent, CachePolicy(kind="dense"))
    ids = input_ids[0].tolist()
    embeds = agent.embed_inputs(input_ids.to(device), image_embeds, ids_cmp_mask)
    hidden = forward_chunk(agent, cache, embeds, kinds_from_ids(ids, image, bos_id))
    logits = logits_at(agent, hidden[0, -1])
    last = ids[-1]
    generated: List[int] = []
    scores_list: List[torch.Tensor] = []
    hidden_by_input: List[torch.Tensor] = []  # hidden state whose INPUT is generated token j
    n_img = len(image.img)
    while len(generated) < max_new_tokens:
        scores = rule(last, logits)
        token = int(scores.argmax())
        generated.append(token)
        scores_list.append(scores)
        if token == eos_id or len(generated) >= max_new_tokens:
            break
        if token == image.boi and one_pass:
            # The run after BOI is fixed: IMG_0..IMG_{n-1}, EOI (spec §2.6). Feed it in one forward: BOI and the
            # forced tokens (the last one only when generation continues after it).
            forced = [*image.img, image.eoi][: max_new_tokens - len(generated)]
            continues = len(generated) + len(forced) < max_new_tokens
            feed = [token] + (forced if continues else forced[:-1])
            kinds = kinds_from_ids([-1] + feed, image, bos_id)[1:]
            emb = agent.embed_tokens(torch.tensor([feed], dtype=torch.long, device=device))
            h = forward_chunk(agent, cache, emb, kinds)
            step_logits = logits_at(agent, h[0])
            prev = token
            for j, tok in enumerate(forced):
                scores_list.append(rule(prev, step_logits[j]))
                generated.append(tok)
                prev = tok
            hidden_by_input.extend(h[0, i] for i in range(len(feed)))
            if not continues:
                break
            logits = step_logits[len(forced)]
            last = forced[-1]
            continue
        emb = agent.embed_tokens(torch.tensor([[token]], dtype=torch.long, device=device))
        h = forward_chunk(agent, cache, emb, kinds_from_ids([-1, token], image, bos_id)[1:])
        hidden_by_input.append(h[0, 0])
        logits = logits_at(agent, h[0, -1])
        last = token
    gen = torch.tensor(generated, dtype=torch.long)
    eoi_positions = [i for i, t in enumerate(generated) if t == image.eoi]
    out = {
        "generate_ids": gen,
        "step_scores": torch.stack(scores_list) if scores_list else torch.empty(0),
        "has_img_output": torch.tensor(bool(eoi_positions)),
        "num_gen_imgs": torch.tensor(1 if eoi_positions else 0, dtype=torch.long),
    }
    if eoi_positions:
        e = eoi_positions[-1]
        img_hidden = torch.stack(hidden_by_input[e - n_img : e]).unsqueeze(0)
        out["img_hidden_states"] = img_hidden
        out["img_gen_feat"] = agent.output_resampler(img_hidden)
    return out
