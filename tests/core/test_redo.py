"""Redo one frame of a finished story (seedstory_core.redo): frames and states before k bit-identical, the sentences
after k kept (or the story continued), refusals, and what a record costs in memory."""

import dataclasses

import pytest
import torch

from seedstory_core.agent import SeedStoryAgent
from seedstory_core.cache import CachePolicy
from seedstory_core.consistency import RetryReport, RetrySettings
from seedstory_core.redo import StoryRecord, redo_frame
from seedstory_core.retry_render import StoryRetry
from seedstory_core.story import DecodingSettings, StoryEngine, StorySettings
from seedstory_core.tiny import default_tiny_tokenizer, tiny_config

SAMPLE = DecodingSettings(do_sample=True, temperature=1.3, top_k=50, top_p=0.95, max_sentence_tokens=6, seed=3)
GREEDY = DecodingSettings(max_sentence_tokens=6)
STEPS = 11  # frames 0..11: a 12-frame story


def _agent(seed):
    torch.manual_seed(seed)
    agent = SeedStoryAgent.build(tiny_config().agent).eval()
    with torch.no_grad():  # peft initialises LoRA B to zero; give the adapters weight
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return agent


@pytest.fixture(scope="module")
def engine():
    return StoryEngine(_agent(0), default_tiny_tokenizer(1000))


@pytest.fixture(scope="module")
def feats():
    torch.manual_seed(1)
    return torch.randn(1, 64, 256)


def fake_render(i, result):
    """A stand-in for the de-tokenizer: the frame is its features (a new tensor per frame)."""
    return result.features.detach().clone()


def make_record(engine, feats, decoding, steps=STEPS, mode="generation", texts=(), **policy):
    policy = {"kind": "multimodal_sink", "window_images": 3, "max_sink_images": 2, **policy}
    settings = StorySettings(CachePolicy(**policy))
    start = engine.start("Tom the cat sat in the garden.", features=feats, settings=settings)
    _, results = engine.run(start, steps, texts=list(texts), mode=mode, decoding=decoding)
    frames = [feats.clone()] + [fake_render(i + 1, r) for i, r in enumerate(results)]
    return StoryRecord.from_run(start, results, frames, mode=mode, texts=texts, decoding=decoding, render={"seed": 0})


def kv_snapshot(state):
    return [tuple(t.clone() for t in layer.view()) for layer in state.context.layers if layer.is_initialized]


def same_kv(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_redo_frame_5_of_12_keeps_0_to_4_bit_identical_and_the_later_sentences(engine, feats):
    record = make_record(engine, feats, SAMPLE)
    before = {j: (kv_snapshot(s), s.token_ids, s.last_features.clone()) for j, s in enumerate(record.states[:5])}
    frames_before = [f.clone() for f in record.frames]
    new = redo_frame(engine, record, 5, seed=1234, render=fake_render)
    assert new.steps == STEPS and len(new.frames) == STEPS + 1
    # frames 0-4 and the states before frame 5: the record's own objects, bit-identical, untouched by the redo
    for j in range(5):
        assert new.frames[j] is record.frames[j] and torch.equal(new.frames[j], frames_before[j])
        assert new.states[j] is record.states[j]
        kv, ids, last = before[j]
        assert same_kv(kv_snapshot(new.states[j]), kv) and new.states[j].token_ids == ids
        assert torch.equal(new.states[j].last_features, last)
    # ... and equal to a fresh run of the same story (they are what the story was, not just what the record kept)
    again = make_record(engine, feats, SAMPLE)
    for j in range(5):
        assert same_kv(kv_snapshot(again.states[j]), before[j][0]) and again.states[j].token_ids == before[j][1]
        assert torch.equal(again.frames[j], frames_before[j])
    # frame 5 is new (another seed), and the old record still holds its own frame 5
    assert not torch.equal(new.frames[5], frames_before[5])
    assert torch.equal(record.frames[5], frames_before[5])
    assert new.sentences[5] != record.sentences[5] or not torch.equal(new.frames[5], record.frames[5])
    # keep sentences: frames 6-11 are re-drawn (their context changed) with their sentences kept
    assert new.sentences[:5] == record.sentences[:5]
    assert new.sentences[6:] == record.sentences[6:]
    assert all(not torch.equal(new.frames[j], record.frames[j]) for j in range(6, STEPS + 1))
    assert new.decoding.seed == 1234 and new.render == {"seed": 1234}
    assert record.decoding.seed == SAMPLE.seed and record.render == {"seed": 0}


def test_redo_with_a_new_sentence_draws_it_and_keeps_it_in_the_plan(engine, feats):
    record = make_record(engine, feats, GREEDY, steps=6)
    new = redo_frame(engine, record, 3, seed=0, sentence="  The dog ran to the red ball.  ", render=fake_render)
    assert new.sentences[3] == "The dog ran to the red ball." != record.sentences[3]
    assert new.texts[2] == "The dog ran to the red ball." and record.texts[2] == ""
    assert new.sentences[4:] == record.sentences[4:]
    assert not torch.equal(new.frames[3], record.frames[3])


def test_continue_with_the_same_seed_reproduces_the_story_and_a_new_seed_changes_it_from_k(engine, feats):
    record = make_record(engine, feats, SAMPLE, steps=8)
    same = redo_frame(engine, record, 4, seed=SAMPLE.seed, after="continue", render=fake_render)
    assert [s.token_ids for s in same.states] == [s.token_ids for s in record.states]
    assert all(torch.equal(a, b) for a, b in zip(same.frames, record.frames))
    other = redo_frame(engine, record, 4, seed=99, after="continue", render=fake_render)
    assert [s.token_ids for s in other.states[:4]] == [s.token_ids for s in record.states[:4]]
    assert other.states[4].token_ids != record.states[4].token_ids
    # continued freely: the later sentences are the model's again, not the recorded ones
    assert other.sentences[5:] != record.sentences[5:]


def test_visualization_story_redo_keeps_the_captions(engine, feats):
    captions = ["The sun came up.", "Tom woke.", "He ate fish.", "He slept."]
    record = make_record(engine, feats, GREEDY, steps=4, mode="visualization", texts=captions)
    new = redo_frame(engine, record, 2, seed=5, sentence="Tom jumped high.", render=fake_render, after="continue")
    assert list(new.sentences[1:]) == ["The sun came up.", "Tom jumped high.", "He ate fish.", "He slept."]


def test_redo_refusals_say_what_to_give(engine, feats):
    record = make_record(engine, feats, GREEDY, steps=3)
    with pytest.raises(ValueError, match="frame 0 is the start picture"):
        redo_frame(engine, record, 0, seed=1, render=fake_render)
    with pytest.raises(ValueError, match="this story has frames 0 to 3; pick a frame from 1 to 3"):
        redo_frame(engine, record, 4, seed=1, render=fake_render)
    with pytest.raises(ValueError, match="frame must be an integer"):
        redo_frame(engine, record, "2", seed=1, render=fake_render)
    with pytest.raises(ValueError, match="after must be one of"):
        redo_frame(engine, record, 2, seed=1, render=fake_render, after="sideways")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        redo_frame(engine, record, 2, seed=-1, render=fake_render)
    other = StoryEngine(_agent(7), default_tiny_tokenizer(1000))
    with pytest.raises(ValueError, match="different SEED-Story model"):
        redo_frame(other, record, 2, seed=1, render=fake_render)
    with pytest.raises(ValueError, match="N \\+ 1 states and frames"):
        dataclasses.replace(record, frames=record.frames[:-1])


def test_record_memory_is_shared_until_the_policy_evicts(engine, feats):
    """Dense: every state is a view of the final state's buffers (the record costs the small per-state tensors only).
    Windowed: each eviction writes a new buffer, which the record keeps (about one window-sized cache per frame)."""
    dense = make_record(engine, feats, GREEDY, steps=6, kind="dense")
    final_kv = dense.final_state.context.nbytes(used_only=False)
    tensors = [t for s in dense.states for t in (s.last_features, s.next_logits) if t is not None]
    small = sum(t.numel() * t.element_size() for t in tensors)
    assert final_kv < dense.nbytes() <= final_kv + small
    windowed = make_record(engine, feats, GREEDY, steps=6, window_images=2)
    evicting = windowed.final_state.context.meta.evictions
    assert evicting >= 3
    assert windowed.nbytes() > windowed.final_state.context.nbytes(used_only=False) * evicting
    assert windowed.get_ram_usage() > windowed.nbytes()


# ------------------------------------------------------------------------------------ the consistency retry in a redo
RETRY_CAPTIONS = ["Ann came to the garden.", "Tom and Ann played.", "Ann slept.", "Tom ran home."]


def seeded_render(i, result, seed=0):
    """A stand-in de-tokenizer whose drawing depends on the seed: the features plus seeded noise."""
    gen = torch.Generator().manual_seed(int(seed) * 1000 + i)
    return result.features.detach() + 0.8 * torch.randn(result.features.shape, generator=gen)


def identity_encode(picture):
    return picture  # the stand-in pictures are feature tensors already


def make_retry_record(engine, feats, settings):
    """A visualization story drawn as Generate Story draws it with the retry: references = the opening picture, then
    each character's first kept drawing; the record keeps the settings and per-frame costs."""

    start = engine.start("Tom the cat sat in the garden.", features=feats, settings=StorySettings())
    retry = StoryRetry(settings, identity_encode)
    retry.observe(start.sentences[0], start.last_features)
    frames, costs = [feats.clone()], []

    def on_frame(i, _total, result):
        outcome = retry.draw(result.sentence, lambda s, _r: seeded_render(i, result, seed=s), 7)
        frames.append(outcome.picture)
        costs.append(RetryReport.frame_entry(outcome))

    _, results = engine.run(
        start, len(RETRY_CAPTIONS), texts=RETRY_CAPTIONS, mode="visualization", decoding=GREEDY, on_frame=on_frame
    )
    record = StoryRecord.from_run(
        start,
        results,
        frames,
        mode="visualization",
        texts=RETRY_CAPTIONS,
        decoding=GREEDY,
        render={"seed": 7},
        retry=settings,
        retry_frames=costs,
    )
    return record, retry.report


def test_a_redo_applies_the_storys_retry_with_the_references_it_had(engine, feats):
    settings = RetrySettings(threshold=0.99, max_redraws=2)  # every checked frame is redrawn
    record, report = make_retry_record(engine, feats, settings)
    kept, ran = record.retry_report().to_dict(), report.to_dict()
    assert kept.pop("seconds") == pytest.approx(ran.pop("seconds"), abs=0.01) and kept == ran
    # frame 1 brings Ann in (no reference yet: drawn once, nothing checked); frames 2-4 are checked and redrawn twice
    assert report.scores[0] is None and report.frames_checked == 3 and report.redraws == 6
    # redo frame 3 ("Ann slept.") with the story's own seed: Ann's reference is her kept drawing in frame 1, rebuilt
    # from the record, so the retry makes the same choices and the same pictures
    same = redo_frame(engine, record, 3, seed=7, render=seeded_render, encode=identity_encode)
    for j in range(3, 5):
        assert torch.equal(same.frames[j], record.frames[j])
        assert same.retry_frames[j - 1]["score"] == record.retry_frames[j - 1]["score"]
        assert same.retry_frames[j - 1]["seed"] == record.retry_frames[j - 1]["seed"]
    assert same.retry_frames[:2] == record.retry_frames[:2] and same.retry == settings
    # a new seed: frames 3-4 are redrawn under the retry (their costs are new), 1-2 keep theirs
    other = redo_frame(engine, record, 3, seed=8, render=seeded_render, encode=identity_encode)
    assert other.retry_frames[:2] == record.retry_frames[:2]
    assert all(e["redraws"] == 2 and e["score"] is not None and e["seed"] != 8 for e in other.retry_frames[2:])
    assert not torch.equal(other.frames[3], record.frames[3])
    assert other.retry_report().to_dict()["frames"] == 4
    # without a visual tokenizer's encode the new frames are drawn once and carry no retry cost
    calls = []

    def once(i, result, seed=None):
        calls.append((i, seed))
        return seeded_render(i, result, seed=8)

    plain = redo_frame(engine, record, 3, seed=8, render=once)
    assert calls == [(3, None), (4, None)]  # one drawing per frame, with the caller's seed
    assert plain.retry_frames[2:] == (None, None) and plain.retry_report().to_dict()["frames"] == 2


def test_retry_costs_must_cover_every_step():
    engine_ = StoryEngine(_agent(0), default_tiny_tokenizer(1000))
    torch.manual_seed(1)
    record, _ = make_retry_record(engine_, torch.randn(1, 64, 256), RetrySettings(threshold=0.99, max_redraws=1))
    with pytest.raises(ValueError, match="no retry costs or one per step; got 2"):
        dataclasses.replace(record, retry_frames=record.retry_frames[:2])
    assert dataclasses.replace(record, retry_frames=()).retry_report() is None
