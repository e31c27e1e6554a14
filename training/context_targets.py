"""Context targets: regress the context images of a stage-2 sample too, not only its last image.

Official instruction tuning (docs/reference.md §5) regresses one image per sample: the target image ``k + 1`` after
the random-length prefix. Every context image ``j`` of the same sample (``1 <= j <= k``) is also a picture the
agent could have been asked to regress from the prefix before it. ``--context-targets N`` (stage 2) asks for the
last ``N`` of them in the same forward pass, without changing what any other token sees:

- for each context image ``j`` a block of ``num_img_tokens`` query tokens (the word embeddings of its
  ``<img_xxxxx>`` ids, exactly what the official target image carries) is appended after the sample's tokens;
- the block keeps the position ids of image ``j``'s IMG tokens and attends to the sample's tokens up to and
  including image ``j``'s BOI, and causally to itself; nothing else attends to it (a 4D attention mask);
- the block's last hidden states go through the output resampler and are scored with the official ``1 - cos`` loss
  against the true frame's visual-tokenizer features.

So the block's hidden states are those of the official sample whose target is image ``j`` (tested to float
rounding), and the LM logits of the sample's own tokens are unchanged. The regression loss is the mean over every
target image of the batch (the last images and the context targets alike). Frame 0 is never a context target: the
story engine is always given the first picture. Targets are always the true frames' features, also when the
context holds rolled-out ones (``--own-context``).

This is this project's option (not in SEED-Story), default 0 = the official single target.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from seedstory_core.agent import cosine_loss

__all__ = [
    "CONTEXT_POSITIONS",
    "CONTEXT_TARGETS",
    "block_attention_mask",
    "choose_frames",
    "collate_context",
    "forward",
    "image_positions",
]

#: batch keys: (B, E, T) int64 IMG positions of each context target (-1 = no target in that slot), and the
#: (N, T_vit, D) true features of the N = sum of valid slots targets, in row-major slot order
CONTEXT_POSITIONS = "context_positions"
CONTEXT_TARGETS = "context_targets"


def choose_frames(sample, n: int) -> List[int]:
    """The story frames of ``sample`` regressed as context targets: the last ``n`` of its context frames ``1..k``
    (oldest first); [] for ``n <= 0`` or ``k == 0``. No randomness: the sample draw is unchanged."""
    if n <= 0:
        return []
    frames = list(sample.image_indices[1:-1])  # context frames after the first, the target excluded
    return frames[-int(n) :] if frames else []


def image_positions(sample, frame: int, num_img_tokens: int) -> List[int]:
    """The ``num_img_tokens`` token positions of story frame ``frame``'s IMG tokens in ``sample.input_ids``.

    The input images of a sample are, in order, its cast-sheet pictures then its story frames ``image_indices[:-1]``;
    each has ``num_img_tokens`` True entries in ``ids_cmp_mask``. Raises ValueError when ``frame`` is not a context
    frame of the sample or the mask does not hold the expected count."""
    context = list(sample.image_indices[:-1])
    if frame not in context:
        raise ValueError(f"frame {frame} is not a context frame of this sample (context frames: {context}).")
    positions = [p for p, flag in enumerate(sample.ids_cmp_mask) if flag]
    n_inputs = len(sample.cast) + len(context)
    if len(positions) != n_inputs * num_img_tokens:
        raise ValueError(
            f"the sample's ids_cmp_mask marks {len(positions)} IMG positions, expected {n_inputs} input images x "
            f"{num_img_tokens} tokens."
        )
    group = len(sample.cast) + context.index(frame)
    return positions[group * num_img_tokens : (group + 1) * num_img_tokens]


def collate_context(
    samples: Sequence[Any], features: Sequence[Optional[torch.Tensor]], num_img_tokens: int
) -> Dict[str, torch.Tensor]:
    """Batch tensors of the context targets: ``{}`` when no sample has one.

    Args:
        samples: the batch's :class:`~seedstory_core.data.samples.StorySample` s; ``extras['context_frames']`` lists
            each one's context-target frames (:func:`choose_frames`; missing = none).
        features: per sample, a (E_i, T_vit, D) float tensor of those frames' true features (None when E_i = 0).
        num_img_tokens: IMG tokens per image (the agent's ``num_img_tokens``).

    Returns: ``{CONTEXT_POSITIONS: (B, E, T) int64 with -1 padding, CONTEXT_TARGETS: (N, T_vit, D)}``.
    """
    frames = [list(s.extras.get("context_frames", ())) for s in samples]
    e = max((len(f) for f in frames), default=0)
    if e == 0:
        return {}
    pos = torch.full((len(samples), e, int(num_img_tokens)), -1, dtype=torch.long)
    targets = []
    for row, (s, fr, feat) in enumerate(zip(samples, frames, features)):
        if not fr:
            continue
        if feat is None or feat.shape[0] != len(fr):
            found = None if feat is None else tuple(feat.shape)
            raise ValueError(f"sample {row}: {len(fr)} context targets but features of shape {found}.")
        for slot, frame in enumerate(fr):
            pos[row, slot] = torch.tensor(image_positions(s, frame, num_img_tokens), dtype=torch.long)
        targets.append(feat)
    return {CONTEXT_POSITIONS: pos, CONTEXT_TARGETS: torch.cat(targets, 0)}


def block_attention_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 1, L + E*T, L + E*T) bool mask (True = attend) for a batch of length ``L`` with the query blocks of
    ``positions`` (B, E, T) appended: causal over the sample's tokens; block rows see the tokens before the block's
    first IMG position (up to and including its BOI) and their own block causally; a padding slot sees only itself."""
    b, e, t = positions.shape
    dev = positions.device
    causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
    first = positions[:, :, 0]  # (B, E); -1 for a padding slot -> sees no sample token
    prefix = torch.arange(length, device=dev).view(1, 1, length) < first.unsqueeze(-1)  # (B, E, L)
    prefix = prefix.unsqueeze(2).expand(b, e, t, length).reshape(b, e * t, length)
    idx = torch.arange(e * t, device=dev)
    own = (idx.view(-1, 1) // t == idx.view(1, -1) // t) & (idx.view(-1, 1) >= idx.view(1, -1))
    top = torch.cat([causal.expand(b, length, length), torch.zeros(b, length, e * t, dtype=torch.bool, device=dev)], 2)
    bottom = torch.cat([prefix, own.expand(b, e * t, e * t)], 2)
    return torch.cat([top, bottom], 1).unsqueeze(1)


def forward(
    agent,
    *,
    input_ids: torch.Tensor,
    context_positions: torch.Tensor,
    context_targets: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    image_embeds: Optional[torch.Tensor] = None,
    embeds_gen_mask: Optional[torch.Tensor] = None,
    embeds_cmp_mask: Optional[torch.Tensor] = None,
    ids_gen_mask: Optional[torch.Tensor] = None,
    ids_cmp_mask: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,  # noqa: ARG001 - unused: the official attention is causal only
    **_ignored,
) -> Dict[str, Any]:
    """The agent's training forward with context targets (module docstring).

    Args: the collated batch of :func:`seedstory_core.data.samples.collate` (as
        :meth:`seedstory_core.agent.SeedStoryAgent.forward`, which needs ``image_embeds`` here) plus
        ``context_positions`` (B, E, T) int64 and ``context_targets`` (N, T_vit, D) of :func:`collate_context`.

    Returns: dict with ``total_loss``, ``lm_loss`` (shifted CE over the sample tokens, as official; None without
        labels), ``rec_loss`` (mean ``1 - cos`` over every target image: the batch's last images and the context
        targets), ``recon_image_embeds`` (N_gen + N, T_vit, D): the batch's last images' regressions, then the context
        targets' in slot order, ``logits`` (B, L, V).

    Raises: ValueError on inconsistent masks or counts (as the official forward), or when the number of valid
        slots differs from ``context_targets``' first dimension.
    """
    if image_embeds is None:
        raise ValueError("context targets need the batch's image_embeds (the sample images' features).")
    bsz, length = input_ids.shape
    n_tok = agent.num_img_tokens
    if context_positions.ndim != 3 or context_positions.shape[0] != bsz or context_positions.shape[2] != n_tok:
        raise ValueError(f"context_positions must be (B={bsz}, E, {n_tok}), found {tuple(context_positions.shape)}.")
    dev = agent.lm_head.weight.device
    pos = context_positions.to(dev)
    valid = pos[:, :, 0] >= 0  # (B, E)
    if int(valid.sum()) != context_targets.shape[0]:
        raise ValueError(
            f"{int(valid.sum())} context-target slots but {context_targets.shape[0]} target feature tensors."
        )
    image_embeds = image_embeds.to(dev)
    if embeds_cmp_mask is None:
        embeds_cmp_mask = torch.ones(image_embeds.shape[0], dtype=torch.bool)
    cmp = embeds_cmp_mask.to(dev).bool()
    gen = embeds_gen_mask.to(dev).bool() if embeds_gen_mask is not None else torch.zeros_like(cmp)
    input_ids = input_ids.to(dev)
    embeds = agent.embed_inputs(input_ids, image_embeds[cmp], ids_cmp_mask.to(dev))
    e = pos.shape[1]
    block_ids = input_ids.gather(1, pos.clamp(min=0).view(bsz, e * n_tok))
    full = torch.cat([embeds, agent.embed_tokens(block_ids)], 1)
    position_ids = torch.cat(
        [torch.arange(length, device=dev).expand(bsz, length), pos.clamp(min=0).view(bsz, e * n_tok)], 1
    )
    mask = block_attention_mask(pos, length)
    out = agent.decoder(
        inputs_embeds=full, attention_mask=mask, position_ids=position_ids, use_cache=False, return_dict=True
    )
    hidden = out.last_hidden_state
    logits = agent.lm_head(hidden[:, :length])
    lm_loss = None
    if labels is not None:
        shift_logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
        lm_loss = F.cross_entropy(shift_logits, labels[:, 1:].reshape(-1).to(dev), ignore_index=-100)
    dim = hidden.shape[-1]
    recon, target = [], []
    if bool(gen.any()):
        selected = hidden[:, :length][ids_gen_mask.to(dev).bool()]
        n_gen = int(gen.sum())
        if selected.shape[0] != n_gen * n_tok:
            raise ValueError(f"ids_gen_mask marks {selected.shape[0]} positions, expected {n_gen} x {n_tok}.")
        recon.append(selected.view(n_gen, n_tok, dim))
        target.append(image_embeds[gen])
    blocks = hidden[:, length:].view(bsz, e, n_tok, dim)[valid]
    recon.append(blocks)
    target.append(context_targets.to(device=dev, dtype=image_embeds.dtype))
    rec_out = agent.output_resampler(torch.cat(recon, 0))
    rec_loss = cosine_loss(rec_out, torch.cat(target, 0))
    total = agent.rec_loss_scale * rec_loss
    if lm_loss is not None:
        total = agent.lm_loss_scale * lm_loss + total
    return {
        "total_loss": total,
        "lm_loss": lm_loss,
        "rec_loss": rec_loss,
        "recon_image_embeds": rec_out,
        "logits": logits,
    }
