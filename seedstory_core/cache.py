"""KV-cache policies for long stories, with the multimodal attention sink as a real transformers ``Cache``.

Policies (paper §3.2 and Fig. 4 right; docs/reference.md §3.2 "Sink policy note"):

* ``dense`` — keep every token.
* ``window`` — keep only the tokens after the EOI of the newest evicted image (the last ``window_images``
  image segments).
* ``sink`` — StreamingLLM: the first ``n_start`` tokens + the window.
* ``multimodal_sink`` — the first ``n_start`` tokens; for every image that left the window the positions
  [BOI-``boi_before``, BOI+``boi_after``) and [EOI-``eoi_before``, EOI+``eoi_after``) (clipped, overlaps counted
  once); plus the window. Defaults n=4, W=8 images, 4/8/8/4 (docs/reference.md §3.2).

**Pinned tokens** (the cast sheet, :mod:`seedstory_core.cast`): a story may pin the tokens at its very start (BOS and
the cast block). Every policy keeps them whatever happens, images among them never count in the window or the sink,
and :meth:`CachePolicy.token_bound` / :func:`plan_kept_positions` take their number (``pinned``).

An image "leaves the window" when it completes (its EOI is stored) and more than ``window_images`` complete images
exist; eviction runs right after the chunk holding that EOI (so the EOI's own logits still saw everything).
The same rule drives the planner (:func:`plan_kept_positions`, used by
``python -m seedstory_core.cache_plan_cli plan``) and :class:`StoryKVCache`, so the planner is exactly what the engine
keeps.

Positions after eviction (``positions`` setting):

* ``rerotate`` (default) — kept keys are re-rotated so the cache is contiguous (positions 0..K-1) and new tokens
  continue at K, as StreamingLLM and the former transformers ``SinkCache`` did. RoPE positions then stay within the
  trained range however long the story runs.
* ``original`` — keys keep the positions they were encoded at and new tokens continue at their story position.

Storage is copy-on-write: a cache view is (shared per-layer buffers, its own length). Appending writes in place
while the view owns the buffer's tail (``buffer.filled == view.length``); otherwise it copies its prefix first. A
:class:`StoryKVCache` handed to two branches therefore never sees the other's tokens, and a parent is never
modified by its children.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .tokens import TokenKind

POLICIES = ("dense", "window", "sink", "multimodal_sink")
POSITION_MODES = ("rerotate", "original")


@dataclass(frozen=True)
class CachePolicy:
    """Which KV entries a story keeps (see module docstring). All sizes are in tokens except ``window_images``.

    Attributes:
        kind: one of ``dense``, ``window``, ``sink``, ``multimodal_sink``.
        window_images: W, how many complete images (with their captions) the recent window keeps (8 at inference).
        n_start: tokens kept from the very start (4; BOS + 3).
        boi_before, boi_after, eoi_before, eoi_after: the sink ranges around each evicted image's BOI / EOI.
        max_sink_images: keep the sink ranges of at most this many evicted images (oldest dropped); None = all.
        positions: ``rerotate`` or ``original`` (module docstring).
    """

    kind: str = "multimodal_sink"
    window_images: int = 8
    n_start: int = 4
    boi_before: int = 4
    boi_after: int = 8
    eoi_before: int = 8
    eoi_after: int = 4
    max_sink_images: Optional[int] = None
    positions: str = "rerotate"

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"Unknown cache policy {self.kind!r}; choose one of {POLICIES}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"Unknown position mode {self.positions!r}; choose one of {POSITION_MODES}")
        for name in ("window_images", "n_start", "boi_before", "boi_after", "eoi_before", "eoi_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"CachePolicy.{name} must be >= 0, got {getattr(self, name)}")
        if self.kind != "dense" and self.window_images < 1:
            raise ValueError("CachePolicy.window_images must be >= 1 for windowed policies")
        if self.max_sink_images is not None and self.max_sink_images < 0:
            raise ValueError("CachePolicy.max_sink_images must be >= 0 or None")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CachePolicy":
        data = dict(data)
        if "policy" in data and "kind" not in data:
            data["kind"] = data.pop("policy")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def token_bound(self, tokens_per_image_segment: int, pinned: int = 0) -> Optional[int]:
        """Upper bound on the kept length for any story length, or None for ``dense``.

        ``tokens_per_image_segment`` = the longest caption + image (BOI, IMG*n, EOI) segment in tokens; ``pinned`` =
        the story's pinned tokens (BOS + the cast block, :mod:`seedstory_core.cast`; 0 without a cast sheet), always
        kept.
        """
        if self.kind == "dense":
            return None
        window = (self.window_images + 1) * tokens_per_image_segment
        start = max(self.n_start, int(pinned)) if self.kind in ("sink", "multimodal_sink") else int(pinned)
        if self.kind != "multimodal_sink":
            return start + window
        per_image = self.boi_before + self.boi_after + self.eoi_before + self.eoi_after
        if self.max_sink_images is None:
            return None  # grows by <= per_image per evicted image (paper §3.2); bounded only with a cap
        return start + per_image * self.max_sink_images + window


# ------------------------------------------------------------------------------------------------ policy core
def _completed_images(positions: Sequence[int], kinds: Sequence[int]) -> List[Tuple[int, int]]:
    """(boi, eoi) original positions of every complete image among the given entries, in order."""
    images, open_boi = [], None
    for pos, kind in zip(positions, kinds):
        if kind == TokenKind.BOI:
            open_boi = pos
        elif kind == TokenKind.EOI and open_boi is not None:
            images.append((open_boi, pos))
            open_boi = None
    return images


def select_kept(
    policy: CachePolicy, kept: Sequence[int], images: Sequence[Tuple[int, int]], pinned: int = 0
) -> List[int]:
    """Apply one eviction: which of the currently kept original positions survive.

    Args:
        policy: the cache policy.
        kept: sorted original positions currently stored.
        images: (boi, eoi) of every complete story image so far (evicted ones included; pinned images are not
            story images), in order.
        pinned: positions ``0..pinned-1`` are pinned (BOS + the cast block) and always survive.

    Returns the sorted surviving positions (a subset of ``kept``); unchanged when nothing has to be evicted.
    """
    if policy.kind == "dense" or len(images) <= policy.window_images:
        return list(kept)
    evicted = list(images[: len(images) - policy.window_images])
    window_start = evicted[-1][1] + 1
    keep = set(range(int(pinned)))
    if policy.kind in ("sink", "multimodal_sink"):
        keep.update(range(policy.n_start))
    if policy.kind == "multimodal_sink":
        sink_images = (
            evicted
            if policy.max_sink_images is None
            else evicted[len(evicted) - policy.max_sink_images :]
            if policy.max_sink_images
            else []
        )
        for boi, eoi in sink_images:
            keep.update(range(max(0, boi - policy.boi_before), boi + policy.boi_after))
            keep.update(range(max(0, eoi - policy.eoi_before), eoi + policy.eoi_after))
    return [p for p in kept if p >= window_start or p in keep]


def plan_kept_positions(kinds: Sequence[int], policy: CachePolicy, pinned: int = 0) -> List[int]:
    """Original positions kept after processing a whole stream, evicting after each image completes.

    ``kinds`` are :class:`TokenKind` values of the full, un-windowed story stream (BOS, text, BOI, IMG, EOI).
    ``pinned``: the first ``pinned`` entries (BOS + a cast block) are pinned: always kept, and their images are not
    story images. This simulates exactly what :class:`StoryKVCache` does when the stream is appended chunk by chunk
    with each image ending a chunk.
    """
    kept: List[int] = []
    images: List[Tuple[int, int]] = []
    open_boi = None
    for pos, kind in enumerate(kinds):
        kept.append(pos)
        if pos < pinned:
            continue
        if kind == TokenKind.BOI:
            open_boi = pos
        elif kind == TokenKind.EOI and open_boi is not None:
            images.append((open_boi, pos))
            open_boi = None
            kept = select_kept(policy, kept, images, pinned)
    return kept


# ------------------------------------------------------------------------------------------------ RoPE
def rotation_tables(delta: torch.Tensor, inv_freq: torch.Tensor, *, dtype=torch.float32, device=None):
    """cos/sin tables (N, D) that move RoPE keys by ``delta`` positions (angles computed in float64 once).

    Args:
        delta: (N,) int64 position shifts (new minus old; may be negative).
        inv_freq: (D/2,) RoPE inverse frequencies (default RoPE, no scaling).
        dtype, device: of the returned tables.

    An eviction shifts whole runs of keys by the same amount, so the angles are computed once per distinct shift
    (a handful) and gathered.
    """
    shifts, which = torch.unique(delta, return_inverse=True)
    angles = shifts.to(torch.float64)[:, None] * inv_freq.to(dtype=torch.float64, device=delta.device)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)
    which = which.to(cos.device)
    return cos.index_select(0, which), sin.index_select(0, which)


def apply_rotation(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, D) keys with (N, D) tables (rotate_half convention); computed in the tables' dtype and
    returned in ``keys``' dtype."""
    k = keys.to(cos.dtype)
    half = k.shape[-1] // 2
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated_half * sin).to(keys.dtype)


def rotate_into(out: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotation` written into ``out`` (B, H, N, D) without temporaries; ``keys``, ``cos``, ``sin`` and
    ``out`` share one dtype, and ``out`` must not overlap ``keys``. Uses that both halves of the tables are equal
    (:func:`rotation_tables` repeats the angles): out₁ = k₁·cos − k₂·sin, out₂ = k₂·cos + k₁·sin. Returns ``out``."""
    half = keys.shape[-1] // 2
    torch.mul(keys, cos, out=out)
    out[..., :half].addcmul_(keys[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(keys[..., :half], sin[..., half:])
    return out


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Move RoPE-rotated keys by ``delta`` positions (rotate_half convention of transformers' LLaMA).

    Args:
        keys: (B, H, N, D) keys already rotated at their old positions.
        delta: (N,) int64, new position minus old position of each key (may be negative).
        inv_freq: (D/2,) float, the model's RoPE inverse frequencies (default RoPE, no scaling).

    Returns (B, H, N, D) keys rotated as if encoded at old + delta, in ``keys``' dtype. Angles are computed in
    float64 (they can be large); the rotation itself runs in float32 (float64 for float64 keys).
    """
    work = torch.promote_types(keys.dtype, torch.float32)
    cos, sin = rotation_tables(delta, inv_freq, dtype=work, device=keys.device)
    return apply_rotation(keys, cos, sin)


# ------------------------------------------------------------------------------------------------ storage
class _Buffer:
    """Append-only key/value storage of one layer, shared by cache views (copy-on-write by ``filled``)."""

    __slots__ = ("keys", "values", "filled")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
        self.keys, self.values, self.filled = keys, values, filled

    @classmethod
    def allocate(cls, like: torch.Tensor, capacity: int) -> "_Buffer":
        b, h, _, d = like.shape
        keys = like.new_empty((b, h, capacity, d))
        values = like.new_empty((b, h, capacity, d))
        return cls(keys, values, 0)

    @property
    def capacity(self) -> int:
        return self.keys.shape[-2]

    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


class StoryKVLayer(CacheLayerMixin):
    """One decoder layer's view: a shared :class:`_Buffer` plus this view's ``length`` (copy-on-write)."""

    is_sliding = False
    is_croppable = True

    def __init__(self, buffer: Optional[_Buffer] = None, length: int = 0):
        super().__init__()
        self.buffer = buffer
        self.length = length
        self.is_initialized = buffer is not None

    # -- transformers API
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.buffer = _Buffer.allocate(key_states, max(64, 2 * key_states.shape[-2]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.buffer is None:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        buf = self.buffer
        # Copy our prefix first (copy-on-write) when someone else owns the tail, or when the buffer was made under
        # torch.inference_mode (ComfyUI runs nodes there) and we are outside it: such tensors refuse in-place writes.
        frozen = buf.keys.is_inference() and not torch.is_inference_mode_enabled()
        if buf.filled != self.length or frozen:
            buf = self._copy_prefix(extra=n)
        elif self.length + n > buf.capacity:
            self._grow(buf, self.length + n)
        buf.keys[:, :, self.length : self.length + n] = key_states.to(buf.keys.dtype)
        buf.values[:, :, self.length : self.length + n] = value_states.to(buf.values.dtype)
        self.length += n
        buf.filled = self.length
        self.buffer = buf
        return buf.keys[:, :, : self.length], buf.values[:, :, : self.length]

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.buffer, self.length, self.is_initialized = None, 0, False

    def crop(self, max_length: int) -> None:
        """Shorten this view to ``max_length`` tokens (negative: drop that many). Frees the tail for reuse when
        this view owns it."""
        if max_length < 0:
            max_length = self.length + max_length
        max_length = max(0, min(max_length, self.length))
        if self.buffer is not None and self.buffer.filled == self.length:
            self.buffer.filled = max_length
        self.length = max_length

    # -- helpers
    @staticmethod
    def _grow(buf: _Buffer, needed: int) -> None:
        capacity = max(needed, 2 * buf.capacity)
        for name in ("keys", "values"):
            old = getattr(buf, name)
            new = old.new_empty(old.shape[:2] + (capacity,) + old.shape[3:])
            new[:, :, : buf.filled] = old[:, :, : buf.filled]
            setattr(buf, name, new)

    def _copy_prefix(self, extra: int) -> _Buffer:
        old = self.buffer
        new = _Buffer.allocate(old.keys, max(64, 2 * (self.length + extra)))
        new.keys[:, :, : self.length] = old.keys[:, :, : self.length]
        new.values[:, :, : self.length] = old.values[:, :, : self.length]
        new.filled = self.length
        return new

    def view(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of this view, each (B, H, length, D); empty tensors when uninitialised."""
        if self.buffer is None:
            return torch.empty(0), torch.empty(0)
        return self.buffer.keys[:, :, : self.length], self.buffer.values[:, :, : self.length]


@dataclass(frozen=True)
class CacheMeta:
    """Bookkeeping shared by all layers of a :class:`StoryKVCache` (immutable; replaced, never mutated)."""

    positions: Tuple[int, ...] = ()  # original story position of each stored entry
    rope_positions: Tuple[int, ...] = ()  # RoPE position each stored key is currently rotated at
    kinds: Tuple[int, ...] = ()  # TokenKind of each stored entry
    images: Tuple[Tuple[int, int], ...] = ()  # (boi, eoi) of every complete image of the story, evicted or not
    next_position: int = 0  # story position of the next token
    open_boi: Optional[int] = None  # story position of a BOI whose EOI has not been stored yet
    evictions: int = 0
    pinned: int = 0  # story positions 0..pinned-1 are pinned (BOS + the cast block): always kept, not story images


class StoryKVCache(Cache):
    """A transformers ``Cache`` whose per-layer views evict by :class:`CachePolicy` after each image completes.

    Use with any transformers decoder that calls ``past_key_values.update(k, v, layer_idx)`` (LLaMA does):

    >>> with cache.chunk(kinds) as position_ids:          # kinds of the tokens about to be fed
    ...     out = decoder(inputs_embeds=e, position_ids=position_ids, past_key_values=cache, use_cache=True)

    The chunk is committed on exit (metadata recorded, eviction applied when an image completed). Use
    ``cache.chunk(kinds, commit=False)`` for a look-ahead pass whose KV must not stay (the image-query pass).

    Args:
        num_layers: decoder layers.
        policy: :class:`CachePolicy`.
        inv_freq: (head_dim/2,) RoPE inverse frequencies of the decoder (needed for ``rerotate``).
    """

    def __init__(self, num_layers: int, policy: CachePolicy, inv_freq: torch.Tensor, *, _layers=None, _meta=None):
        super().__init__(layers=_layers if _layers is not None else [StoryKVLayer() for _ in range(num_layers)])
        self.policy = policy
        self.inv_freq = inv_freq.detach().to("cpu", torch.float64)
        self.meta = _meta if _meta is not None else CacheMeta()
        self._pending: Optional[Tuple[int, ...]] = None

    # ------------------------------------------------------------------ views
    @property
    def length(self) -> int:
        return len(self.meta.positions)

    def copy(self, *, headroom: int = 256) -> "StoryKVCache":
        """A copy that owns its tensors (nothing shared), with room for ``headroom`` more tokens per layer.

        What a story holds after a step taken in order (its buffers are its own, with headroom after an eviction),
        whereas a :meth:`fork` shares them and its first append copies the prefix (copy-on-write). The benchmark
        uses it to time a frame's step as a story in progress pays it. O(tokens x layers) copy.
        """
        if self._pending is not None:
            raise RuntimeError("copy() inside an open chunk")
        layers = []
        for layer in self.layers:
            if not layer.is_initialized:
                layers.append(StoryKVLayer())
                continue
            keys, values = layer.view()
            n = keys.shape[-2]
            buf = _Buffer.allocate(keys, n + max(1, int(headroom)))
            buf.keys[:, :, :n] = keys
            buf.values[:, :, :n] = values
            buf.filled = n
            layers.append(StoryKVLayer(buf, n))
        return StoryKVCache(len(layers), self.policy, self.inv_freq, _layers=layers, _meta=self.meta)

    def fork(self) -> "StoryKVCache":
        """A new view sharing the stored tensors (copy-on-write). O(layers), no tensor copy."""
        if self._pending is not None:
            raise RuntimeError("fork() inside an open chunk")
        layers = [StoryKVLayer(layer.buffer, layer.length) for layer in self.layers]
        return StoryKVCache(len(layers), self.policy, self.inv_freq, _layers=layers, _meta=self.meta)

    def next_position_ids(self, count: int) -> torch.Tensor:
        """(1, count) int64 RoPE positions for the next ``count`` tokens."""
        if self.policy.positions == "rerotate":
            start = self.length
        else:
            start = self.meta.next_position
        return torch.arange(start, start + count, dtype=torch.long).unsqueeze(0)

    @contextlib.contextmanager
    def chunk(self, kinds: Sequence[int], *, commit: bool = True, pin: int = 0) -> Iterator[torch.Tensor]:
        """Context for one decoder forward over ``len(kinds)`` new tokens; yields their position ids (1, n).

        On normal exit with ``commit=True`` the tokens are recorded and the policy is applied; with
        ``commit=False`` (or on an exception) the layers are cropped back, leaving the cache as before.
        ``pin``: the first ``pin`` of these tokens are pinned (always kept; images among them are not story images).
        Only the start of a story can be pinned: ``pin`` > 0 needs every token stored so far to be pinned.

        Raises:
            RuntimeError: nested chunks. ValueError: no tokens, or a bad ``pin``.
        """
        if self._pending is not None:
            raise RuntimeError("StoryKVCache.chunk() cannot be nested")
        kinds = tuple(int(k) for k in kinds)
        if not kinds:
            raise ValueError("StoryKVCache.chunk() needs at least one token")
        if pin and (not 0 <= pin <= len(kinds) or self.meta.pinned != self.meta.next_position or not commit):
            raise ValueError(
                f"StoryKVCache.chunk(pin={pin}): only the first tokens of a story can be pinned (this chunk has "
                f"{len(kinds)} tokens, {self.meta.next_position - self.meta.pinned} unpinned tokens are stored)"
            )
        start_len = self.length
        self._pending = kinds
        try:
            position_ids = self.next_position_ids(len(kinds))
            yield position_ids
            lengths = {layer.length for layer in self.layers if layer.is_initialized}
            if lengths and lengths != {start_len + len(kinds)}:
                raise RuntimeError(
                    f"StoryKVCache: the forward stored {sorted(lengths)} entries per layer, "
                    f"expected {start_len + len(kinds)}; "
                    "pass this cache as past_key_values and feed exactly the tokens announced to chunk()."
                )
        except BaseException:
            self._rollback(start_len)
            self._pending = None
            raise
        self._pending = None
        if not commit:
            self._rollback(start_len)
            return
        self._commit(kinds, position_ids[0].tolist(), pin)

    def rollback(self, snapshot: CacheMeta) -> None:
        """Return to an earlier ``self.meta`` snapshot of this same view (tokens appended since are dropped).

        Raises ``ValueError`` when an eviction happened since the snapshot (evicted entries cannot be restored).
        """
        if snapshot.evictions != self.meta.evictions or len(snapshot.positions) > self.length:
            raise ValueError("StoryKVCache.rollback: the cache was evicted or shortened since the snapshot")
        self._rollback(len(snapshot.positions))
        self.meta = snapshot

    def _rollback(self, length: int) -> None:
        for layer in self.layers:
            if layer.is_initialized and layer.length > length:
                layer.crop(length)

    def _commit(self, kinds: Tuple[int, ...], rope_positions: List[int], pin: int = 0) -> None:
        meta = self.meta
        start = meta.next_position
        images = meta.images
        open_boi = meta.open_boi
        completed = False
        if TokenKind.BOI in kinds[pin:] or TokenKind.EOI in kinds[pin:]:
            images = list(images)
            for offset, kind in enumerate(kinds):
                if offset < pin:
                    continue
                if kind == TokenKind.BOI:
                    open_boi = start + offset
                elif kind == TokenKind.EOI and open_boi is not None:
                    images.append((open_boi, start + offset))
                    open_boi = None
                    completed = True
            images = tuple(images)
        self.meta = dataclasses.replace(
            meta,
            positions=meta.positions + tuple(range(start, start + len(kinds))),
            rope_positions=meta.rope_positions + tuple(rope_positions),
            kinds=meta.kinds + kinds,
            images=images,
            next_position=start + len(kinds),
            open_boi=open_boi,
            pinned=meta.pinned + int(pin),
        )
        if completed:
            self._evict()

    def _evict(self) -> None:
        meta = self.meta
        survivors = select_kept(self.policy, meta.positions, meta.images, meta.pinned)
        if len(survivors) == len(meta.positions):
            return
        index_of = {p: i for i, p in enumerate(meta.positions)}
        idx = [index_of[p] for p in survivors]
        old_rope = [meta.rope_positions[i] for i in idx]
        if self.policy.positions == "rerotate":
            new_rope = list(range(len(idx)))
        else:
            new_rope = old_rope
        delta = torch.tensor([n - o for n, o in zip(new_rope, old_rope)], dtype=torch.long)
        needs_rotation = bool(delta.abs().max() > 0) if len(idx) else False
        tables = {}  # (device, dtype) -> cos/sin, shared by every layer
        # The new buffers get headroom for roughly one more story step; an append past it grows them (doubling).
        capacity = len(idx) + max(128, len(idx) // 4)
        for layer in self.layers:
            if not layer.is_initialized:
                continue
            keys, values = layer.view()
            index = torch.tensor(idx, dtype=torch.long, device=keys.device)
            buf = _Buffer.allocate(keys, capacity)
            torch.index_select(values, 2, index, out=buf.values[:, :, : len(idx)])
            if needs_rotation:
                work = torch.promote_types(keys.dtype, torch.float32)
                key = (keys.device, work)
                if key not in tables:
                    tables[key] = rotation_tables(delta, self.inv_freq, dtype=work, device=keys.device)
                kept_k = keys.index_select(2, index)
                if kept_k.dtype == work:  # rotate straight into the new buffer (no temporaries)
                    rotate_into(buf.keys[:, :, : len(idx)], kept_k, *tables[key])
                else:  # low-precision keys: rotate in float32, round once
                    buf.keys[:, :, : len(idx)] = apply_rotation(kept_k, *tables[key])
            else:
                torch.index_select(keys, 2, index, out=buf.keys[:, :, : len(idx)])
            buf.filled = len(idx)
            layer.buffer, layer.length = buf, len(idx)
        self.meta = dataclasses.replace(
            meta,
            positions=tuple(meta.positions[i] for i in idx),
            rope_positions=tuple(new_rope),
            kinds=tuple(meta.kinds[i] for i in idx),
            evictions=meta.evictions + 1,
        )

    # ------------------------------------------------------------------ memory, devices, persistence
    def nbytes(self, *, used_only: bool = True) -> int:
        """Bytes of key/value tensors: of the stored entries (default) or of the allocated buffers."""
        total = 0
        for layer in self.layers:
            if not layer.is_initialized:
                continue
            if used_only:
                k, v = layer.view()
                total += k.numel() * k.element_size() + v.numel() * v.element_size()
            else:
                total += layer.buffer.nbytes()
        return total

    def to(self, device=None, dtype=None) -> "StoryKVCache":
        """A copy on ``device`` / in ``dtype`` (the original is untouched)."""
        layers = []
        for layer in self.layers:
            if not layer.is_initialized:
                layers.append(StoryKVLayer())
                continue
            k, v = layer.view()
            k = k.to(device=device, dtype=dtype).contiguous()
            v = v.to(device=device, dtype=dtype).contiguous()
            layers.append(StoryKVLayer(_Buffer(k, v, k.shape[-2]), k.shape[-2]))
        return StoryKVCache(len(layers), self.policy, self.inv_freq, _layers=layers, _meta=self.meta)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Contiguous copies of the stored entries, keyed ``layers.<i>.keys`` / ``layers.<i>.values``."""
        out = {}
        for i, layer in enumerate(self.layers):
            if layer.is_initialized:
                k, v = layer.view()
                out[f"layers.{i}.keys"] = k.contiguous()
                out[f"layers.{i}.values"] = v.contiguous()
        return out

    def meta_dict(self) -> dict:
        m = self.meta
        return {
            "policy": self.policy.to_dict(),
            "num_layers": len(self.layers),
            "positions": list(m.positions),
            "rope_positions": list(m.rope_positions),
            "kinds": list(m.kinds),
            "images": [list(x) for x in m.images],
            "next_position": m.next_position,
            "open_boi": m.open_boi,
            "evictions": m.evictions,
            "pinned": m.pinned,
        }

    @classmethod
    def from_saved(cls, meta: dict, tensors: Dict[str, torch.Tensor], inv_freq: torch.Tensor) -> "StoryKVCache":
        """Rebuild a cache from :meth:`meta_dict` and :meth:`tensors` output."""
        layers = []
        for i in range(int(meta["num_layers"])):
            k, v = tensors.get(f"layers.{i}.keys"), tensors.get(f"layers.{i}.values")
            if k is None:
                layers.append(StoryKVLayer())
            else:
                layers.append(StoryKVLayer(_Buffer(k, v, k.shape[-2]), k.shape[-2]))
        cache_meta = CacheMeta(
            positions=tuple(meta["positions"]),
            rope_positions=tuple(meta["rope_positions"]),
            kinds=tuple(meta["kinds"]),
            images=tuple(tuple(x) for x in meta["images"]),
            next_position=int(meta["next_position"]),
            open_boi=meta["open_boi"],
            evictions=int(meta["evictions"]),
            pinned=int(meta.get("pinned", 0)),
        )
        lengths = {layer.length for layer in layers if layer.is_initialized}
        if lengths and lengths != {len(cache_meta.positions)}:
            raise ValueError(
                f"saved cache is inconsistent: layer lengths {sorted(lengths)} vs {len(cache_meta.positions)} positions"
            )
        return cls(len(layers), CachePolicy.from_dict(meta["policy"]), inv_freq, _layers=layers, _meta=cache_meta)
