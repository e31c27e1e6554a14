"""The compiled static-shape decode step (seedstory_core.static_decode): same tokens as eager decoding, the mirror of
the evicting story cache kept exact across evictions and forks, bad input refused."""

from pathlib import Path

import pytest
import torch

from bench import decode_bench
from seedstory_core.agent import SeedStoryAgent
from seedstory_core.cache import CachePolicy
from seedstory_core.generation import forward_chunk, new_cache
from seedstory_core.static_decode import (
    StaticDecoder,
    capacity_for_policy,
    disable_static_decode,
    enable_static_decode,
    static_decoder_for,
)
from seedstory_core.story import DecodingSettings, StoryEngine, StorySettings
from seedstory_core.tiny import default_tiny_tokenizer, tiny_config
from seedstory_core.tokens import TokenKind
from tests.support.agents import lora_tiny_agent

# window of 2 images: the story evicts (and re-rotates) from its third frame on; a repetition penalty so the
# engine's logits processors run too
DECODING = DecodingSettings(max_sentence_tokens=10, repetition_penalty=1.2)
STEPS = 5


@pytest.fixture(scope="module")
def engine():
    agent = lora_tiny_agent(0)
    return StoryEngine(agent, default_tiny_tokenizer(1000))


@pytest.fixture(scope="module")
def feats():
    return torch.randn(1, 64, 256, generator=torch.Generator().manual_seed(1))


def tell(engine, feats, decoding=DECODING, steps=STEPS):
    state = engine.start(
        "Tom the cat sat in the garden.", features=feats, settings=StorySettings(policy=CachePolicy(window_images=2))
    )
    results = []
    with torch.no_grad():
        for _ in range(steps):
            results.append(engine.step(state, decoding=decoding))
            state = results[-1].state
    return state, results


@pytest.fixture(scope="module")
def eager_story(engine, feats):
    return tell(engine, feats)


def assert_same_story(a, b, atol):
    (sa, ra), (sb, rb) = a, b
    assert sb.token_ids == sa.token_ids  # the same tokens, every frame
    assert [r.sentence for r in rb] == [r.sentence for r in ra]
    assert sb.context.meta == sa.context.meta  # same kept entries after the same evictions
    assert sa.context.meta.evictions >= 2
    for x, y in zip(ra, rb):
        torch.testing.assert_close(y.features, x.features, atol=atol, rtol=0)
    ta, tb = sa.context.tensors(), sb.context.tensors()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], atol=atol, rtol=0)


def test_static_shape_step_decodes_the_eager_story(engine, feats, eager_story):
    """The static-shape step (not compiled): same tokens, features and kept cache as eager decoding, through
    evictions; the mirror is re-synced once per sentence, not per token, and keeps one capacity."""
    static = enable_static_decode(engine, compile=False, capacity=256)
    try:
        story = tell(engine, feats)
    finally:
        disable_static_decode(engine)
    assert_same_story(eager_story, story, atol=1e-5)
    assert static.capacity == 256 and list(static.compile_seconds) == [256]
    assert static.resyncs == STEPS  # the prefill and the eviction change the cache once per step
    assert static_decoder_for(engine.inference_model().decoder) is None


def test_step_hidden_states_and_cache_match_forward_chunk(engine):
    """One token at a time on a fresh cache and on its fork: the static step returns forward_chunk's hidden states
    and leaves the same cache; a fork is re-synced, never sharing the mirror; the parent is untouched."""
    run = engine.inference_model()
    torch.manual_seed(3)
    embeds = torch.randn(1, 12, 256)
    kinds = [TokenKind.TEXT] * 12
    eager, static_cache = new_cache(run, CachePolicy()), new_cache(run, CachePolicy())
    static = StaticDecoder(run.decoder, compile=False, capacity=8)
    with torch.no_grad():
        forward_chunk(run, eager, embeds[:, :4], kinds[:4])
        forward_chunk(run, static_cache, embeds[:, :4], kinds[:4])
        for i in range(4, 12):
            want = forward_chunk(run, eager, embeds[:, i : i + 1], kinds[i : i + 1])
            got = static.step(static_cache, embeds[:, i : i + 1], kinds[i : i + 1])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert static.capacity == 512  # 13 slots needed > capacity 8: grown to the bucket
        fork = static_cache.fork()
        got = static.step(fork, embeds[:, :1], kinds[:1])
        want = forward_chunk(run, eager.fork(), embeds[:, :1], kinds[:1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert static_cache.length == 12 and fork.length == 13
    for key, value in eager.tensors().items():
        torch.testing.assert_close(static_cache.tensors()[key], value, atol=1e-5, rtol=0)


def test_bad_input_is_refused(engine):
    run = engine.inference_model()
    static = StaticDecoder(run.decoder, compile=False)
    cache = new_cache(run, CachePolicy())
    with pytest.raises(ValueError, match=r"expected \(1, 1, D\) embeddings"):
        static.step(cache, torch.zeros(1, 2, 256), [TokenKind.TEXT] * 2)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        StaticDecoder(run.decoder, capacity=0)
    with pytest.raises(TypeError, match="expects a StoryEngine"):
        enable_static_decode(object())
    foreign = StaticDecoder(SeedStoryAgent.build(tiny_config().agent).decoder, compile=False)
    with pytest.raises(ValueError, match="built for another decoder"):
        enable_static_decode(engine, static=foreign)
    assert static_decoder_for(run.decoder) is None


def test_capacity_for_policy():
    assert capacity_for_policy(CachePolicy(kind="dense"), 100, 50) is None
    policy = CachePolicy(kind="multimodal_sink", window_images=8, max_sink_images=4)
    assert capacity_for_policy(policy, 100, 50) == policy.token_bound(100) + 50


@pytest.mark.slow
def test_compiled_decode_generates_the_eager_tokens(engine, feats, eager_story):
    """torch.compile (inductor, fullgraph, dynamic=False): the same story as eager decoding; one compile for the
    whole story (the capacity stays fixed through the evictions)."""
    static = enable_static_decode(engine, capacity=256)
    try:
        story = tell(engine, feats)
    finally:
        disable_static_decode(engine)
    assert_same_story(eager_story, story, atol=1e-4)
    assert list(static.compile_seconds) == [256]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def test_python_m_bench_runs_the_decode_bench_but_not_for_smoke_quality_or_memory_children(capsys):
    for argv in (["--smoke"], ["--model", "models/seedstory-tiny"], ["--memory-child", "{}"]):
        assert decode_bench.before_engine_bench(argv) == 0
    assert capsys.readouterr().out == ""
    main = (Path(__file__).resolve().parents[2] / "bench" / "__main__.py").read_text()
    assert "decode_before_engine_bench()" in main
