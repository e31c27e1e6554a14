"""Cache policies, the cache-plan CLI and the StoryKVCache on a real (tiny) transformers LLaMA."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from seedstory_core.cache import (
    CachePolicy,
    StoryKVCache,
    apply_rotation,
    plan_kept_positions,
    rotate_into,
    rotate_keys,
    rotation_tables,
)
from seedstory_core.cache_plan_cli import plan_from_spec
from seedstory_core.tiny import tiny_config
from seedstory_core.tokens import TokenKind

K = TokenKind


def stream(caption_lengths, n_img=64, trailing=True):
    """Kinds of a story stream: BOS, then (caption, image) per caption; the last caption has no image if trailing."""
    kinds = [K.BOS]
    for i, n in enumerate(caption_lengths):
        kinds += [K.TEXT] * n
        if not (trailing and i == len(caption_lengths) - 1):
            kinds += [K.BOI] + [K.IMG] * n_img + [K.EOI]
    return kinds


def image_spans(kinds):
    spans, boi = [], None
    for i, k in enumerate(kinds):
        if k == K.BOI:
            boi = i
        elif k == K.EOI:
            spans.append((boi, i))
    return spans


# ------------------------------------------------------------------ planner
def test_planner_matches_public_fixture(golden_dir):
    data = json.loads((golden_dir / "sink_ranges_public.json").read_text())
    spec = {
        "token_types": data["token_types"],
        "policy": "multimodal_sink",
        "window_images": data["window_size"],
        "n_start": 4,
        "boi_before": 4,
        "boi_after": 8,
        "eoi_before": 8,
        "eoi_after": 4,
    }
    kept = plan_from_spec(spec)
    last = data["evictions"][-1]
    expected = sorted(
        set(last["sink_after_eviction_global"])
        | set(range(last["evicted_image_eoi_global"] + 1, len(data["token_types"])))
    )
    assert kept == expected
    # every intermediate eviction agrees too: replay the stream up to each eviction point
    for ev in data["evictions"]:
        end = ev["input_ids_global_range_before"][1]
        kept_then = plan_from_spec({**spec, "token_types": data["token_types"][:end]})
        sink = set(ev["sink_after_eviction_global"])
        assert sink <= set(kept_then)
        assert [p for p in kept_then if p <= ev["evicted_image_eoi_global"]] == sorted(
            sink - set(range(ev["evicted_image_eoi_global"] + 1, end))
        )


def test_planner_cli(tmp_path, golden_dir):
    data = json.loads((golden_dir / "sink_ranges_public.json").read_text())
    spec = {
        "token_types": data["token_types"],
        "policy": "multimodal_sink",
        "window_images": 2,
        "n_start": 4,
        "boi_before": 4,
        "boi_after": 8,
        "eoi_before": 8,
        "eoi_after": 4,
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, "-m", "seedstory_core.cache_plan_cli", "plan", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["kept"] == plan_from_spec(spec)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"token_types": ["BOS", "X1"]}))
    res = subprocess.run(
        [sys.executable, "-m", "seedstory_core.cache_plan_cli", "plan", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2 and "Unknown token label" in res.stderr


def test_short_captions_clip_and_dedupe():
    # caption0 of 2 tokens (head slice reaches before BOS) and caption1 of 1 token (head slice reaches into
    # image 0's tail); set semantics: clipped to valid positions, overlaps counted once.
    kinds = stream([2, 1, 3, 2], n_img=64)
    spans = image_spans(kinds)
    kept = plan_kept_positions(kinds, CachePolicy(window_images=1))
    expected = set(range(4))
    for boi, eoi in spans[:2]:
        expected |= set(range(max(0, boi - 4), boi + 8)) | set(range(eoi - 8, eoi + 4))
    expected |= set(range(spans[1][1] + 1, len(kinds)))
    assert kept == sorted(expected)
    assert len(kept) == len(set(kept))


def test_window_of_one_and_policy_kinds():
    kinds = stream([5, 6, 7, 8, 4])
    spans = image_spans(kinds)
    last_evicted_eoi = spans[-2][1]
    window = list(range(last_evicted_eoi + 1, len(kinds)))
    assert plan_kept_positions(kinds, CachePolicy(kind="window", window_images=1)) == window
    assert plan_kept_positions(kinds, CachePolicy(kind="sink", window_images=1)) == [0, 1, 2, 3] + window
    assert plan_kept_positions(kinds, CachePolicy(kind="dense", window_images=1)) == list(range(len(kinds)))
    mm = plan_kept_positions(kinds, CachePolicy(kind="multimodal_sink", window_images=1))
    expected = set(range(4)) | set(window)
    for boi, eoi in spans[:-1]:
        expected |= set(range(boi - 4, boi + 8)) | set(range(eoi - 8, eoi + 4))
    assert mm == sorted(expected)
    assert len(mm) <= 4 + 24 * (len(spans) - 1) + len(window)


def test_never_evicting_window_keeps_everything():
    kinds = stream([5, 6, 7])
    for kind in ("window", "sink", "multimodal_sink"):
        assert plan_kept_positions(kinds, CachePolicy(kind=kind, window_images=8)) == list(range(len(kinds)))


def test_sink_cap_bounds_length():
    policy = CachePolicy(window_images=2, max_sink_images=3)
    lengths = [len(plan_kept_positions(stream([6] * n), policy)) for n in (5, 20, 60)]
    assert lengths[1] == lengths[2]
    assert lengths[2] <= policy.token_bound(6 + 66)


def test_policy_validation():
    with pytest.raises(ValueError, match="Unknown cache policy"):
        CachePolicy(kind="lru")
    with pytest.raises(ValueError, match="window_images"):
        CachePolicy(window_images=0)
    with pytest.raises(ValueError, match="position mode"):
        CachePolicy(positions="absolute")


# ------------------------------------------------------------------ RoPE re-rotation
def test_rerotated_keys_equal_direct_encoding_and_attention():
    cfg = tiny_config().agent.llm.to_transformers()
    rope = LlamaRotaryEmbedding(cfg)
    torch.manual_seed(1)
    heads, n, d = 4, 30, cfg.head_dim
    k_raw = torch.randn(1, heads, n, d)
    v = torch.randn(1, heads, n, d)
    q_raw = torch.randn(1, heads, 1, d)
    # transformers computes RoPE angles as pos * inv_freq in fp32 (error ~ pos * 1.2e-7 rad), so the direct
    # encoding itself carries ~4e-5 error at position 300; the float64 test below shows the re-rotation is exact.
    old = torch.tensor(sorted(torch.randperm(300)[:n].tolist()))
    new = torch.arange(n)

    def rotated(x, pos):
        cos, sin = rope(x, pos.unsqueeze(0))
        return apply_rotary_pos_emb(x, x, cos, sin)[0]

    k_old = rotated(k_raw, old)
    k_moved = rotate_keys(k_old, new - old, rope.inv_freq)
    k_direct = rotated(k_raw, new)
    assert (k_moved - k_direct).abs().max() < 1e-4
    q = rotated(q_raw, torch.tensor([n]))
    att_moved = torch.nn.functional.scaled_dot_product_attention(q, k_moved, v)
    att_direct = torch.nn.functional.scaled_dot_product_attention(q, k_direct, v)
    assert (att_moved - att_direct).abs().max() < 1e-4
    # not re-rotating would be visibly wrong
    assert (torch.nn.functional.scaled_dot_product_attention(q, k_old, v) - att_direct).abs().max() > 1e-3


def test_rerotation_is_exact_in_float64_at_large_positions():
    inv_freq = LlamaRotaryEmbedding(tiny_config().agent.llm.to_transformers()).inv_freq.double()

    def encode(x, pos):  # reference RoPE (rotate_half convention) in float64
        ang = pos.double()[:, None] * inv_freq[None, :]
        ang = torch.cat([ang, ang], -1)
        half = x.shape[-1] // 2
        return x * ang.cos() + torch.cat([-x[..., half:], x[..., :half]], -1) * ang.sin()

    x = torch.randn(1, 2, 50, inv_freq.numel() * 2, dtype=torch.float64)
    old = torch.tensor(sorted(torch.randperm(100_000)[:50].tolist()))
    new = torch.arange(50)
    assert (rotate_keys(encode(x, old), new - old, inv_freq) - encode(x, new)).abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotate_into_equals_apply_rotation(dtype):
    """The eviction's in-place rotation (into the new buffer) computes what apply_rotation computes."""
    inv_freq = LlamaRotaryEmbedding(tiny_config().agent.llm.to_transformers()).inv_freq
    torch.manual_seed(3)
    keys = torch.randn(1, 4, 37, inv_freq.numel() * 2, dtype=dtype)
    cos, sin = rotation_tables(torch.randint(-500, 0, (37,)), inv_freq, dtype=dtype)
    out = torch.full_like(keys, float("nan"))
    rotate_into(out, keys, cos, sin)
    assert torch.allclose(out, apply_rotation(keys, cos, sin), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)


# ------------------------------------------------------------------ the cache on a real decoder
@pytest.fixture(scope="module")
def tiny_llama():
    cfg = tiny_config().agent.llm.to_transformers()
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def feed(model, cache, ids, kinds):
    with cache.chunk(kinds) as pos:
        return model.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).last_hidden_state


def chunks_of(kinds):
    """Split a stream into chunks ending at each EOI (as the engine feeds it), plus the tail."""
    out, start = [], 0
    for i, k in enumerate(kinds):
        if k == K.EOI:
            out.append((start, i + 1))
            start = i + 1
    if start < len(kinds):
        out.append((start, len(kinds)))
    return out


@pytest.mark.parametrize("kind", ["window", "sink", "multimodal_sink"])
@pytest.mark.parametrize("positions", ["rerotate", "original"])
def test_cache_keeps_what_the_planner_says(tiny_llama, kind, positions):
    kinds = stream([5, 3, 7, 2, 6, 4], n_img=64)
    policy = CachePolicy(kind=kind, window_images=2, positions=positions)
    ids = torch.randint(3, 900, (1, len(kinds)))
    cache = StoryKVCache(4, policy, tiny_llama.model.rotary_emb.inv_freq)
    with torch.no_grad():
        for a, b in chunks_of(kinds):
            feed(tiny_llama, cache, ids[:, a:b], kinds[a:b])
    assert list(cache.meta.positions) == plan_kept_positions(kinds, policy)
    assert all(layer.length == cache.length for layer in cache.layers)
    if positions == "rerotate":
        assert list(cache.meta.rope_positions) == list(range(cache.length))
    else:
        assert cache.meta.rope_positions == cache.meta.positions


def test_dense_chunks_equal_full_encode(tiny_llama):
    ids = torch.randint(3, 900, (1, 90))
    with torch.no_grad():
        full = tiny_llama.model(input_ids=ids).last_hidden_state
        cache = StoryKVCache(4, CachePolicy(kind="dense"), tiny_llama.model.rotary_emb.inv_freq)
        parts = [
            feed(tiny_llama, cache, ids[:, a:b], [K.TEXT] * (b - a)) for a, b in [(0, 30), (30, 31), (31, 70), (70, 90)]
        ]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def test_fork_is_copy_on_write(tiny_llama):
    ids = torch.randint(3, 900, (1, 20))
    with torch.no_grad():
        root = StoryKVCache(4, CachePolicy(kind="dense"), tiny_llama.model.rotary_emb.inv_freq)
        feed(tiny_llama, root, ids[:, :10], [K.TEXT] * 10)
        before = {k: v.clone() for k, v in root.tensors().items()}
        a, b = root.fork(), root.fork()
        ha = feed(tiny_llama, a, ids[:, 10:15], [K.TEXT] * 5)
        hb = feed(tiny_llama, b, ids[:, 15:20], [K.TEXT] * 5)
        # b alone (isolated) from a fresh fork of the root
        hb_iso = feed(tiny_llama, root.fork(), ids[:, 15:20], [K.TEXT] * 5)
        ha_iso = feed(tiny_llama, root.fork(), ids[:, 10:15], [K.TEXT] * 5)
    assert root.length == 10 and a.length == 15 and b.length == 15
    assert torch.equal(ha, ha_iso) and torch.equal(hb, hb_iso)
    for k, v in root.tensors().items():
        assert torch.equal(v, before[k])


def test_copy_owns_its_tensors_and_continues_like_the_original(tiny_llama):
    """copy(): same entries and metadata, no shared storage, headroom for appends; stepping it equals stepping a
    fork, and leaves the original untouched."""
    ids = torch.randint(3, 900, (1, 16))
    with torch.no_grad():
        root = StoryKVCache(4, CachePolicy(kind="dense"), tiny_llama.model.rotary_emb.inv_freq)
        feed(tiny_llama, root, ids[:, :10], [K.TEXT] * 10)
        before = {k: v.clone() for k, v in root.tensors().items()}
        own = root.copy(headroom=8)
        assert own.meta == root.meta and own.length == root.length
        for a, b in zip(own.layers, root.layers):
            assert a.buffer is not b.buffer and a.buffer.keys.data_ptr() != b.buffer.keys.data_ptr()
            assert a.buffer.capacity == 18 and a.buffer.filled == 10
        h_own = feed(tiny_llama, own, ids[:, 10:16], [K.TEXT] * 6)
        h_fork = feed(tiny_llama, root.fork(), ids[:, 10:16], [K.TEXT] * 6)
    assert torch.equal(h_own, h_fork)
    assert own.layers[0].buffer.capacity == 18  # the append fitted: no growth, no prefix copy
    for k, v in root.tensors().items():
        assert torch.equal(v, before[k])


def test_uncommitted_chunk_and_errors_leave_cache_unchanged(tiny_llama):
    ids = torch.randint(3, 900, (1, 12))
    with torch.no_grad():
        cache = StoryKVCache(4, CachePolicy(kind="dense"), tiny_llama.model.rotary_emb.inv_freq)
        feed(tiny_llama, cache, ids[:, :6], [K.TEXT] * 6)
        with cache.chunk([K.TEXT] * 6, commit=False) as pos:
            tiny_llama.model(input_ids=ids[:, 6:], position_ids=pos, past_key_values=cache, use_cache=True)
        assert cache.length == 6 and all(layer.length == 6 for layer in cache.layers)
        with pytest.raises(RuntimeError, match="boom"):
            with cache.chunk([K.TEXT] * 6) as pos:
                tiny_llama.model(input_ids=ids[:, 6:], position_ids=pos, past_key_values=cache, use_cache=True)
                raise RuntimeError("boom")
        assert cache.length == 6 and all(layer.length == 6 for layer in cache.layers)


def test_save_roundtrip_and_move(tiny_llama, tmp_path):
    kinds = stream([5, 3, 7, 2], n_img=64)
    ids = torch.randint(3, 900, (1, len(kinds)))
    policy = CachePolicy(window_images=1)
    with torch.no_grad():
        cache = StoryKVCache(4, policy, tiny_llama.model.rotary_emb.inv_freq)
        for a, b in chunks_of(kinds):
            feed(tiny_llama, cache, ids[:, a:b], kinds[a:b])
    restored = StoryKVCache.from_saved(json.loads(json.dumps(cache.meta_dict())), cache.tensors(), cache.inv_freq)
    assert restored.meta == cache.meta
    for k, v in cache.tensors().items():
        assert torch.equal(restored.tensors()[k], v)
    half = cache.to(dtype=torch.float16)
    assert next(iter(half.tensors().values())).dtype == torch.float16
    assert cache.nbytes() == 2 * half.nbytes()
