"""Full-size SEED-Story on paper: KV bytes and attention FLOPs per story step for every cache policy, analytically.

No weights are needed: the kept token counts come from the engine's own eviction rule
(:func:`seedstory_core.cache.select_kept`, the rule :class:`~seedstory_core.cache.StoryKVCache` applies), simulated
on the token stream of a story with ``sentence_tokens`` text tokens per frame, and the model sizes from the official
config (``seedstory_core.config.official_config``: Llama-2-7B, 32 layers × 32 heads × 128 dims).

One story step N (as :meth:`seedstory_core.story.StoryEngine.step` runs it):

1. context pass: the previous image ([BOI, 64 IMG, EOI]) is stored on top of the kept cache, then the policy evicts;
2. decode: ``sentence_tokens`` text tokens, one forward each (stored);
3. image queries: [BOI, IMG_0..IMG_63] in one forward (not stored).

The official loop (``reencode_window``) re-encodes the whole window prompt from scratch (causal), decodes the sentence
and forces the 65 image tokens one forward each on the re-encoded cache.

Attention FLOPs = 4 × layers × heads × head_dim × (Σ over the step's queries of the keys each attends to): QKᵀ and
the weighted sum of V, 2 FLOPs per multiply-add. Projections and MLP are excluded (equal for all cached policies;
the re-encode's extra prompt tokens are listed as ``reencode_tokens``). KV bytes = 2 (K and V) × layers × KV heads ×
head_dim × bytes per element × tokens.

``python -m bench.full_size [--frame 50] [--sentence-tokens 24] [--out FILE]`` prints / writes the CSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional

from bench.config import DEFAULT_CHOICE, POLICIES
from bench.report import write_csv
from seedstory_core.cache import CachePolicy, select_kept
from seedstory_core.config import official_config
from seedstory_core.reencode import REENCODE_WINDOW
from seedstory_core.story import StorySettings
from seedstory_core.tokens import TokenKind, image_segment_kinds

#: Table 8 of the paper (GPU memory, GB) for the policies it lists.
PAPER_MEMORY_GB = {"dense": 37.99, "window": 30.81, "sink": 30.81, "multimodal_sink": 31.82}
COLUMNS = (
    "policy",
    "frame",
    "sentence_tokens",
    "window_images",
    "layers",
    "heads",
    "kv_heads",
    "head_dim",
    "dtype_bytes",
    "kv_tokens",
    "kv_bytes",
    "kv_bytes_minus_dense",
    "attn_flops",
    "reencode_tokens",
    "paper_memory_gb",
    "paper_minus_dense_gb",
)


class _Stream:
    """A simulated story cache: original positions kept, kinds, completed images (the engine's bookkeeping)."""

    def __init__(self, policy: Optional[CachePolicy]):
        self.policy = policy
        self.kept: List[int] = []
        self.kinds: List[int] = []
        self.images: List[tuple] = []
        self.next = 0
        self.open_boi = None

    def append(self, kinds: List[int]) -> None:
        completed = False
        for k in kinds:
            self.kept.append(self.next)
            if k == TokenKind.BOI:
                self.open_boi = self.next
            elif k == TokenKind.EOI and self.open_boi is not None:
                self.images.append((self.open_boi, self.next))
                self.open_boi = None
                completed = True
            self.next += 1
        if completed and self.policy is not None:
            self.kept = select_kept(self.policy, self.kept, self.images)


def _image(n_img: int) -> List[int]:
    return image_segment_kinds(n_img)


def step_costs(
    policy: str,
    frame: int,
    *,
    sentence_tokens: int,
    window_images: int,
    n_img: int = 64,
    max_sink_images: Optional[int] = None,
) -> Dict[str, int]:
    """Kept KV tokens after step ``frame`` and the attention "query × key" count of that step (see module doc)."""
    image = _image(n_img)
    text = [TokenKind.TEXT] * sentence_tokens
    if policy == REENCODE_WINDOW:
        # window prompt at step N: the last `window_images` images with their captions + the new sentence
        prompt = 1 + min(frame, window_images) * (sentence_tokens + len(image))
        qk = prompt * (prompt + 1) // 2  # causal re-encode
        qk += sum(prompt + j for j in range(1, sentence_tokens + 1))
        qk += sum(prompt + sentence_tokens + j for j in range(1, n_img + 2))  # BOI + 64 IMG forced one by one
        return dict(kv_tokens=prompt + sentence_tokens + n_img + 1, qk=qk, reencode_tokens=prompt)
    if policy == "dense":
        pol = CachePolicy(kind="dense")
    else:
        pol = CachePolicy(kind=policy, window_images=window_images, max_sink_images=max_sink_images)
    s = _Stream(pol)
    s.append([TokenKind.BOS] + text + image)  # start(): caption 0 + start image
    qk = 0
    for n in range(1, frame + 1):
        last = n == frame
        if n > 1:  # context pass: store the previous step's image
            k0 = len(s.kept)
            if last:
                qk += sum(k0 + i for i in range(1, len(image) + 1))
            s.append(image)
        k1 = len(s.kept)
        if last:
            qk += sum(k1 + j for j in range(1, sentence_tokens + 1))
            qk += sum(k1 + sentence_tokens + j for j in range(1, n_img + 2))
        s.append(text)
    return dict(kv_tokens=len(s.kept), qk=qk, reencode_tokens=0)


def full_size_rows(
    frame: int = 50,
    sentence_tokens: int = 24,
    window_images: int = 8,
    dtype_bytes: int = 2,
    default_max_sink_images: Optional[int] = None,
) -> List[dict]:
    """One row per policy of :data:`bench.config.POLICIES` (dense, window, sink, multimodal_sink, default,
    reencode_window) at ``frame``."""
    llm = official_config().agent.llm
    layers, heads = llm.num_hidden_layers, llm.num_attention_heads
    kv_heads = llm.num_key_value_heads or heads
    head_dim = llm.hidden_size // heads
    n_img = official_config().agent.image_tokens.num_img_tokens
    if default_max_sink_images is None:
        default_max_sink_images = StorySettings().policy.max_sink_images
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    rows = []
    default_kind = StorySettings().policy.kind
    for name in POLICIES:
        kind = default_kind if name == DEFAULT_CHOICE else name
        cap = default_max_sink_images if name == DEFAULT_CHOICE else None
        c = step_costs(
            kind, frame, sentence_tokens=sentence_tokens, window_images=window_images, n_img=n_img, max_sink_images=cap
        )
        rows.append(
            dict(
                policy=name,
                frame=frame,
                sentence_tokens=sentence_tokens,
                window_images=window_images,
                layers=layers,
                heads=heads,
                kv_heads=kv_heads,
                head_dim=head_dim,
                dtype_bytes=dtype_bytes,
                kv_tokens=c["kv_tokens"],
                kv_bytes=c["kv_tokens"] * per_token,
                attn_flops=4 * layers * heads * head_dim * c["qk"],
                reencode_tokens=c["reencode_tokens"],
                paper_memory_gb=PAPER_MEMORY_GB.get(name, ""),
            )
        )
    dense = rows[0]
    for r in rows:
        r["kv_bytes_minus_dense"] = r["kv_bytes"] - dense["kv_bytes"]
        r["paper_minus_dense_gb"] = (
            round(r["paper_memory_gb"] - PAPER_MEMORY_GB["dense"], 2) if r["paper_memory_gb"] != "" else ""
        )
    return rows


def write(rows: List[dict], path: Path) -> Path:
    """Write :func:`full_size_rows` rows as a CSV (:data:`COLUMNS`) to ``path``; returns it."""
    return write_csv(path, rows, COLUMNS)


def main(argv=None) -> int:
    """``python -m bench.full_size``: the table printed as CSV, or written to ``--out``. Returns 0."""
    ap = argparse.ArgumentParser(prog="python -m bench.full_size", description=__doc__.split("\n")[0])
    ap.add_argument("--frame", type=int, default=50)
    ap.add_argument("--sentence-tokens", type=int, default=24)
    ap.add_argument("--window-images", type=int, default=8)
    ap.add_argument("--out", default=None, help="CSV file (default: print)")
    args = ap.parse_args(argv)
    rows = full_size_rows(args.frame, args.sentence_tokens, args.window_images)
    if args.out:
        print(write(rows, Path(args.out)))
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
