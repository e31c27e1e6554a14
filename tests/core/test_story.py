"""The story engine on the tiny preset: policies, one-pass image queries, fork safety, cancellation, bounds."""

import dataclasses
from pathlib import Path

import pytest
import torch

from seedstory_core.cache import CachePolicy, plan_kept_positions
from seedstory_core.generation import forward_chunk, image_query_pass
from seedstory_core.reencode import ReencodePolicy, ReencodeWindow
from seedstory_core.story import (
    DEFAULT_MAX_SINK_IMAGES,
    default_policy,
    DecodingSettings,
    StoryCancelled,
    StoryEngine,
    StorySettings,
    StoryState,
    engine_for,
)
from seedstory_core.tiny import default_tiny_tokenizer
from seedstory_core.tokens import TokenKind
from tests.support.agents import lora_tiny_agent

FAST = DecodingSettings(max_sentence_tokens=6)
SAMPLE = DecodingSettings(do_sample=True, temperature=1.3, top_k=50, top_p=0.95, max_sentence_tokens=6)


@pytest.fixture(scope="module")
def engine():
    agent = lora_tiny_agent(0)
    return StoryEngine(agent, default_tiny_tokenizer(1000))


@pytest.fixture(scope="module")
def start_features():
    torch.manual_seed(1)
    return torch.randn(1, 64, 256)


def start(engine, feats, **policy):
    return engine.start(
        "Tom the cat sat in the garden.", features=feats, settings=StorySettings(policy=CachePolicy(**policy))
    )


@pytest.fixture(scope="module")
def reencode_engine(engine):
    return engine_for(ReencodePolicy(), engine.agent, engine.tokenizer)


def start_reencode(engine, feats, window_images):
    return engine.start(
        "Tom the cat sat in the garden.",
        features=feats,
        settings=StorySettings(policy=ReencodePolicy(window_images=window_images)),
    )


def run_story(engine, state, n, decoding=FAST):
    ids, feats = [], []
    for _ in range(n):
        res = engine.step(state, decoding=decoding)
        ids.append(res.state.token_ids)
        feats.append(res.features)
        state = res.state
    return state, ids, feats


def test_policies_agree_when_nothing_is_evicted(engine, start_features):
    ref_state, ref_ids, ref_feats = run_story(engine, start(engine, start_features, kind="dense"), 4)
    for kind in ("window", "sink", "multimodal_sink"):
        _, ids, feats = run_story(engine, start(engine, start_features, kind=kind, window_images=8), 4)
        assert ids == ref_ids
        for a, b in zip(feats, ref_feats):
            assert torch.equal(a, b)


def test_kv_reuse_equals_full_reencode(engine, reencode_engine, start_features):
    """Incremental prefill on the kept cache == re-encoding the same tokens from scratch every step."""
    _, ids_dense, f_dense = run_story(engine, start(engine, start_features, kind="dense"), 4)
    _, ids_re, f_re = run_story(reencode_engine, start_reencode(reencode_engine, start_features, 50), 4)
    assert ids_dense == ids_re
    for a, b in zip(f_dense, f_re):
        assert (a - b).abs().max() < 1e-4


def test_one_pass_image_queries_equal_forced_decoding(engine, start_features):
    state = engine.step(start(engine, start_features, kind="dense"), decoding=FAST).state
    agent, image = engine.agent, engine.image
    cache = state.context.fork()
    with torch.no_grad():
        forward_chunk(agent, cache, engine.image_embeds(state.pending_image), engine.image_kinds())
        one = image_query_pass(agent, cache, image, commit=False)
        assert cache.length == state.context.length + 66  # look-ahead pass left the cache as it was
        forced = []
        step_cache = cache.fork()
        for tok, kind in zip([image.boi, *image.img], [TokenKind.BOI] + [TokenKind.IMG] * len(image.img)):
            h = forward_chunk(agent, step_cache, agent.embed_tokens(torch.tensor([[tok]])), [kind])
            forced.append(h[:, -1])
        forced_hidden = torch.stack(forced[1:], dim=1)
    assert (one["hidden"] - forced_hidden).abs().max() <= 1e-5
    assert (one["features"] - agent.output_resampler(forced_hidden)).abs().max() <= 1e-5
    with torch.no_grad():  # the official loop's forced path (reencode_window baseline) gives the same and restores
        before = cache.meta
        official = image_query_pass(agent, cache, image, commit=False, forced=True)
    assert cache.meta == before and cache.length == state.context.length + 66
    assert (official["features"] - one["features"]).abs().max() <= 1e-5


def test_fork_safety_both_orders_equal_isolated(engine, start_features):
    root = engine.step(start(engine, start_features, window_images=2), decoding=FAST).state
    snapshot = (root.token_ids, root.context.length, {k: v.clone() for k, v in root.context.tensors().items()})
    da, db = dataclasses.replace(SAMPLE, seed=1), dataclasses.replace(SAMPLE, seed=2)
    a1 = engine.step(root, decoding=da)
    b1 = engine.step(root, decoding=db)
    b2 = engine.step(root, decoding=db)
    a2 = engine.step(root, decoding=da)
    iso_root = engine.step(start(engine, start_features, window_images=2), decoding=FAST).state
    a3 = engine.step(iso_root, decoding=da)
    assert a1.state.token_ids == a2.state.token_ids == a3.state.token_ids
    assert b1.state.token_ids == b2.state.token_ids
    assert a1.state.token_ids != b1.state.token_ids  # the branches really differ
    assert torch.equal(a1.features, a2.features) and torch.equal(a1.features, a3.features)
    # two more steps down each branch stay independent
    a_next = engine.step(a1.state, decoding=FAST)
    b_next = engine.step(b1.state, decoding=FAST)
    a_iso = engine.step(a3.state, decoding=FAST)
    assert torch.equal(a_next.features, a_iso.features) and a_next.state.token_ids == a_iso.state.token_ids
    assert b_next.state.token_ids[: len(b1.state.token_ids)] == b1.state.token_ids
    assert root.token_ids == snapshot[0] and root.context.length == snapshot[1]
    for k, v in root.context.tensors().items():
        assert torch.equal(v, snapshot[2][k])


def test_cancellation_leaves_input_usable(engine, start_features):
    state = engine.step(start(engine, start_features, window_images=2), decoding=FAST).state
    calls = {"n": 0}

    def cancel_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(StoryCancelled):
        engine.step(state, decoding=FAST, cancel=cancel_after_three)
    after = engine.step(state, decoding=FAST)
    fresh = engine.step(engine.step(start(engine, start_features, window_images=2), decoding=FAST).state, decoding=FAST)
    assert after.state.token_ids == fresh.state.token_ids and torch.equal(after.features, fresh.features)


@pytest.mark.parametrize("kind", ["window", "sink", "multimodal_sink"])
def test_cache_bounded_over_60_steps_and_matches_planner(engine, start_features, kind):
    policy = dict(kind=kind, window_images=2)
    if kind == "multimodal_sink":
        policy["max_sink_images"] = 4
    state = start(engine, start_features, **policy)
    decoding = DecodingSettings(max_sentence_tokens=3)
    lengths = []
    for _ in range(60):
        state = engine.step(state, decoding=decoding).state
        lengths.append(state.kv_length)
    segment = 3 + 66 + 4  # caption + image (+ [INST] slack)
    bound = CachePolicy(**policy).token_bound(segment)
    assert max(lengths) <= bound
    assert max(lengths[30:]) == max(lengths[10:30])  # flat after the sink fills
    cache = state.context
    assert list(cache.meta.positions) == plan_kept_positions(state.kinds[: cache.meta.next_position], cache.policy)


def test_multimodal_sink_growth_without_cap(engine, start_features):
    state = start(engine, start_features, window_images=2)
    sizes = []
    for _ in range(8):
        state = engine.step(state, decoding=DecodingSettings(max_sentence_tokens=3)).state
        sizes.append((state.context.meta.evictions, state.kv_length))
    evicted = len(state.context.meta.images) - 2
    window_len = state.context.meta.next_position - (state.context.meta.images[-3][1] + 1)
    assert state.kv_length <= 4 + 24 * evicted + window_len


def test_visualization_mode_draws_the_given_sentence(engine, start_features):
    state = start(engine, start_features, kind="dense")
    res = engine.step(state, text="The dog ran to the park.", mode="visualization", decoding=FAST)
    tok = engine.tokenizer
    expected = tok.encode("[INST]The dog ran to the park.")
    new = list(res.state.token_ids[len(state.token_ids) :])
    assert new[: len(expected)] == expected
    assert new[len(expected)] == engine.image.boi
    assert res.sentence == "The dog ran to the park."
    with pytest.raises(ValueError, match="visualization mode needs"):
        engine.step(state, mode="visualization")


def test_steering_text_is_prefixed(engine, start_features):
    state = start(engine, start_features, kind="dense")
    res = engine.step(state, text="Then Tom", decoding=FAST)
    assert res.sentence.startswith("Then Tom")


def test_save_load_roundtrip_continues_identically(engine, start_features, tmp_path):
    state = run_story(engine, start(engine, start_features, window_images=2), 3)[0]
    state.save(tmp_path / "story")
    loaded = StoryState.load(tmp_path / "story.json")
    a = engine.step(state, decoding=FAST)
    b = engine.step(loaded, decoding=FAST)
    assert a.state.token_ids == b.state.token_ids and torch.equal(a.features, b.features)
    assert loaded.get_ram_usage() == state.get_ram_usage() > 0


def test_state_checks(engine, start_features):
    state = start(engine, start_features, kind="dense")
    with pytest.raises(TypeError, match="StoryState"):
        engine.step("not a state")
    with pytest.raises(ValueError, match="different SEED-Story model"):
        engine.step(dataclasses.replace(state, model_key="other"))
    with pytest.raises(ValueError, match="image features must have shape"):
        engine.start("Hi.", features=torch.randn(1, 64, 7))
    with pytest.raises(ValueError, match="non-empty"):
        engine.start("   ", features=start_features)


def test_run_with_progress_and_context_override(engine, start_features):
    seen, streamed = [], []
    state = start(engine, start_features, window_images=2)

    def on_frame(i, n, result):
        seen.append((i, n, result.sentence))
        return torch.zeros_like(result.features)

    final, results = engine.run(
        state, 3, decoding=FAST, on_frame=on_frame, on_text=lambda i, partial: streamed.append(i)
    )
    assert [(i, n) for i, n, _ in seen] == [(1, 3), (2, 3), (3, 3)] and final.step == 3 and len(results) == 3
    assert [s for _, _, s in seen] == [r.sentence for r in results] and set(streamed) <= {1, 2, 3}
    plain, plain_results = engine.run(state, 3, decoding=FAST)
    assert plain.step == 3
    # the loop is step() in order: the same as stepping by hand, with the returned features stored in the context
    by_hand = state
    for i in range(3):
        by_hand = engine.step(
            by_hand, decoding=FAST, context_features=None if i == 0 else torch.zeros_like(results[i - 1].features)
        ).state
    assert by_hand.token_ids == final.token_ids
    assert (
        plain.token_ids != final.token_ids
        or all(  # zeroed context features change the story or its features
            not torch.equal(a.features, b.features) for a, b in zip(results[1:], plain_results[1:])
        )
    )


def test_run_texts_steer_or_give_the_sentences(engine, start_features):
    state = start(engine, start_features, kind="dense")
    final, results = engine.run(
        state, 2, texts=["The dog barks.", "Tom runs home."], mode="visualization", decoding=FAST
    )
    assert [r.sentence for r in results] == ["The dog barks.", "Tom runs home."]
    with pytest.raises(ValueError, match="one caption per step: n_steps=3 needs 3 non-empty lines in 'texts'"):
        engine.run(state, 3, texts=["only one"], mode="visualization", decoding=FAST)
    _, steered = engine.run(state, 2, texts=["", "Tom"], decoding=FAST)
    assert steered[1].sentence.startswith("Tom")


def test_reencode_policy_has_its_own_engine_and_context(engine, reencode_engine, start_features):
    assert (
        type(reencode_engine).__name__ == "ReencodeStoryEngine"
        and type(engine_for(CachePolicy(), engine.agent, engine.tokenizer)) is StoryEngine
    )
    state = start_reencode(reencode_engine, start_features, 2)
    assert isinstance(state.context, ReencodeWindow) and state.kv_length == 0 and state.next_logits is None
    for _ in range(3):
        state = reencode_engine.step(state, decoding=FAST).state
    assert len(state.context.features) == 2  # the oldest images left the window
    with pytest.raises(ValueError, match="engine_for"):
        engine.step(state, decoding=FAST)  # a KV engine refuses a re-encode story, and the other way round
    with pytest.raises(ValueError, match="engine_for"):
        reencode_engine.step(start(engine, start_features, kind="dense"), decoding=FAST)
    settings = StorySettings(policy=ReencodePolicy(window_images=3))
    assert StorySettings.from_dict(settings.to_dict()) == settings
    assert StorySettings.for_choice("reencode_window", window_images=3).policy == ReencodePolicy(3)
    with pytest.raises(ValueError, match="unknown cache policy"):
        StorySettings.for_choice("nope")


def test_reencode_state_save_load_roundtrip(reencode_engine, start_features, tmp_path):
    state = reencode_engine.step(start_reencode(reencode_engine, start_features, 2), decoding=FAST).state
    loaded = StoryState.load(state.save(tmp_path / "re"))
    a = reencode_engine.step(state, decoding=FAST)
    b = reencode_engine.step(loaded, decoding=FAST)
    assert a.state.token_ids == b.state.token_ids and torch.equal(a.features, b.features)


def test_state_made_in_inference_mode_steps_outside_it(engine, start_features):
    with torch.inference_mode():
        state = start(engine, start_features, kind="dense")
    outside = engine.step(state, decoding=FAST)
    with torch.inference_mode():
        inside = engine.step(state, decoding=FAST)
    assert outside.state.token_ids == inside.state.token_ids
    assert torch.equal(outside.features, inside.features)


def test_default_settings_are_bounded_and_the_paper_rule_stays_selectable():
    default = StorySettings().policy
    assert default == default_policy() and default.kind == "multimodal_sink"
    assert default.max_sink_images == DEFAULT_MAX_SINK_IMAGES >= 1
    assert default.token_bound(100) is not None  # bounded however long the story runs
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"`DEFAULT_MAX_SINK_IMAGES` = {DEFAULT_MAX_SINK_IMAGES}" in readme  # the README states the cap in use
    paper = CachePolicy(kind="multimodal_sink")
    assert paper.max_sink_images is None and paper.token_bound(100) is None  # the paper's uncapped rule
    # a saved state keeps its own policy (the default is applied only when nothing is given)
    assert StorySettings.from_dict(StorySettings(policy=paper).to_dict()).policy == paper


def test_merged_lora_engine_matches_the_peft_path(engine, start_features):
    """StoryEngine(merge_lora=True) runs the merged inference decoder; the story equals the peft path to float
    rounding (same greedy tokens, features within 1e-4), and the agent itself is not modified."""
    agent = engine.agent
    merged = StoryEngine(agent, engine.tokenizer, merge_lora=True)
    peft = StoryEngine(agent, engine.tokenizer, merge_lora=False)
    assert merged.inference_model().decoder is not agent.decoder and peft.inference_model().decoder is agent.decoder
    settings = StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=2, max_sink_images=2))
    a = merged.start("Tom the cat sat in the garden.", features=start_features, settings=settings)
    b = peft.start("Tom the cat sat in the garden.", features=start_features, settings=settings)
    torch.testing.assert_close(a.next_logits, b.next_logits, rtol=1e-4, atol=1e-4)
    _, ids_a, feats_a = run_story(merged, a, 4)
    _, ids_b, feats_b = run_story(peft, b, 4)
    assert ids_a == ids_b
    for x, y in zip(feats_a, feats_b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
