"""The cast sheet: a pinned block that every policy keeps, the same ids in training and at inference."""

import pytest
import torch

from seedstory_core.cache import CachePolicy, plan_kept_positions
from seedstory_core.cache_plan_cli import plan_from_spec
from seedstory_core.cast import MAX_CAST, CastSheet, cast_block_ids, check_cast_names
from seedstory_core.data.samples import StorySampleBuilder
from seedstory_core.reencode import ReencodePolicy
from seedstory_core.story import DecodingSettings, StoryEngine, StorySettings, StoryState, engine_for
from seedstory_core.tiny import default_tiny_tokenizer
from tests.support.agents import lora_tiny_agent

FAST = DecodingSettings(max_sentence_tokens=5)
OPENING = "Tom the cat sat in the garden."


@pytest.fixture(scope="module")
def engine():
    agent = lora_tiny_agent(0)
    return StoryEngine(agent, default_tiny_tokenizer(1000))


@pytest.fixture(scope="module")
def feats():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(1, 64, 256, generator=g) for _ in range(3)]


def sheet(feats):
    return CastSheet(("Tom", "Anna"), (feats[1], feats[2]))


def run(engine, state, n, decoding=FAST):
    results = []
    for _ in range(n):
        res = engine.step(state, decoding=decoding)
        results.append(res)
        state = res.state
    return state, results


@pytest.mark.parametrize(
    "policy",
    [
        CachePolicy(kind="dense"),
        CachePolicy(kind="window", window_images=2),
        CachePolicy(kind="sink", window_images=2),
        CachePolicy(kind="multimodal_sink", window_images=2),
        CachePolicy(kind="multimodal_sink", window_images=2, max_sink_images=1),
        CachePolicy(kind="multimodal_sink", window_images=2, positions="original"),
    ],
    ids=lambda p: f"{p.kind}-{p.max_sink_images}-{p.positions}",
)
def test_every_policy_keeps_the_cast_block_and_the_planner_knows_it(engine, feats, policy):
    state = engine.start(OPENING, features=feats[0], settings=StorySettings(policy=policy), cast=sheet(feats))
    n_block = len(cast_block_ids(engine.tokenizer, ("Tom", "Anna"))[0])
    assert state.cast_tokens == 1 + n_block and state.num_images == 1
    state, _ = run(engine, state, 6)
    kept = state.context.meta.positions
    assert set(range(state.cast_tokens)) <= set(kept)  # pinned: never evicted
    stored = state.context.meta.next_position  # the pending image is not in the cache yet
    assert list(kept) == plan_kept_positions(state.kinds[:stored], policy, pinned=state.cast_tokens)
    if policy.kind != "dense":
        assert state.context.meta.evictions > 0  # the story was long enough to evict
        # the cast images never count in the window: exactly W story images (+ the pending one) stay whole
        whole = [(b, e) for b, e in state.context.meta.images if set(range(b, e + 1)) <= set(kept)]
        assert len(whole) == policy.window_images and all(b >= state.cast_tokens for b, _ in state.context.meta.images)
        seg = max(len(state.token_ids) // max(1, state.num_images), 80)
        bound = policy.token_bound(seg * 2, pinned=state.cast_tokens)
        if bound is not None:
            assert state.kv_length <= bound
    assert state.num_images == 7


def test_the_cast_changes_the_story_and_the_reencode_loop_keeps_it(engine, feats):
    policy = CachePolicy(kind="dense")
    plain = engine.start(OPENING, features=feats[0], settings=StorySettings(policy=policy))
    cast = engine.start(OPENING, features=feats[0], settings=StorySettings(policy=policy), cast=sheet(feats))
    _, r_plain = run(engine, plain, 2)
    _, r_cast = run(engine, cast, 2)
    assert not torch.allclose(r_plain[0].features, r_cast[0].features)
    # the official loop re-encodes the cast block every step: with a window that drops nothing it equals dense
    reenc = engine_for(ReencodePolicy(), engine.agent, engine.tokenizer)
    r_state = reenc.start(
        OPENING, features=feats[0], settings=StorySettings(policy=ReencodePolicy(window_images=8)), cast=sheet(feats)
    )
    _, r_re = run(reenc, r_state, 2)
    assert [r.sentence for r in r_re] == [r.sentence for r in r_cast]
    for a, b in zip(r_re, r_cast):
        torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-4)
    # a window of 1 image drops the oldest images but never the cast block
    small = reenc.start(
        OPENING, features=feats[0], settings=StorySettings(policy=ReencodePolicy(window_images=1)), cast=sheet(feats)
    )
    small, _ = run(reenc, small, 3)
    w = small.context
    assert w.pinned_images == 2 and len(w.features) == 3 and w.ids[: w.pinned] == cast.token_ids[1 : cast.cast_tokens]


def test_state_save_load_keeps_the_cast(engine, feats, tmp_path):
    state = engine.start(OPENING, features=feats[0], cast=sheet(feats))
    state, _ = run(engine, state, 2)
    state.save(tmp_path / "s")
    back = StoryState.load(tmp_path / "s")
    assert back.cast.names == ("Tom", "Anna") and back.cast_tokens == state.cast_tokens
    torch.testing.assert_close(back.cast.features[1], state.cast.features[1])
    a = engine.step(state, decoding=FAST)
    b = engine.step(back, decoding=FAST)
    assert a.sentence == b.sentence
    torch.testing.assert_close(a.features, b.features)


def test_training_samples_and_inference_use_the_same_ids(engine, feats):
    captions = ["Tom sat in the garden.", "Anna came by.", "They played ball.", "Tom slept."]
    builder = StorySampleBuilder(engine.tokenizer, max_length=4096)
    sample = builder.build(captions, 2, cast=["Tom", "Anna"])
    state = engine.start(captions[0], features=feats[0], cast=sheet(feats))
    for cap in captions[1:3]:
        state = engine.step(state, text=cap, mode="visualization").state
    assert sample.input_ids[: len(state.token_ids)] == list(state.token_ids)
    assert sample.embeds_cmp_mask == [True] * 5 + [False] and sample.cast == ["Tom", "Anna"]
    # the cast block is never labelled
    assert all(lab == -100 for lab in sample.labels[: state.cast_tokens])


def test_bad_cast_sheets_are_refused_with_what_to_do(feats):
    with pytest.raises(ValueError, match="at most"):
        check_cast_names([f"C{i}" for i in range(MAX_CAST + 1)])
    with pytest.raises(ValueError, match="distinct"):
        check_cast_names(["Tom", "Tom"])
    with pytest.raises(ValueError, match="name"):
        check_cast_names(["Tom", ""])
    with pytest.raises(ValueError, match="':'"):
        check_cast_names(["Tom: the cat"])
    with pytest.raises(ValueError, match="one picture per name"):
        CastSheet(("Tom", "Anna"), (feats[1],))
    with pytest.raises(ValueError, match="one shape"):
        CastSheet(("Tom", "Anna"), (feats[1], torch.zeros(1, 8, 256)))


def test_the_planner_cli_takes_the_pinned_tokens():
    def image(i):
        return [f"BOI{i}"] + [f"IMG{i}.{j}" for j in range(4)] + [f"EOI{i}"]

    labels = ["BOS", "T0.0", *image(0)]  # the cast block: one picture
    labels += [f"T1.{j}" for j in range(3)] + image(1)
    for i in range(2, 6):
        labels += [f"T{i}.{j}" for j in range(3)] + image(i)
    spec = {"token_types": labels, "policy": "window", "window_images": 2}
    plain = plan_from_spec(spec)
    pinned = plan_from_spec({**spec, "pinned": 8})
    assert not set(range(8)) <= set(plain) and set(range(8)) <= set(pinned)
    assert set(pinned) - set(range(8)) == set(plain) - set(range(8))
    with pytest.raises(ValueError, match="pinned"):
        plan_from_spec({**spec, "pinned": -1})
