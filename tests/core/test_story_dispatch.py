"""PolicyEngines: one object runs the stories of every policy, each on the engine engine_for gives for it."""

import pytest
import torch

from seedstory_core.cache import CachePolicy
from seedstory_core.reencode import ReencodePolicy, ReencodeWindow
from seedstory_core.story import (
    DecodingSettings,
    PolicyEngines,
    ReencodeStoryEngine,
    StoryEngine,
    StorySettings,
    engine_for,
)
from seedstory_core.tiny import default_tiny_tokenizer
from tests.support.agents import lora_tiny_agent

FAST = DecodingSettings(max_sentence_tokens=5)
OPENING = "Tom the cat sat in the garden."
SETTINGS = {
    "multimodal_sink": StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=2)),
    "reencode_window": StorySettings(policy=ReencodePolicy(window_images=2)),
}


@pytest.fixture(scope="module")
def model():
    """(agent, tokenizer, start features) of a random tiny model whose LoRA adapters take part in every forward."""
    agent = lora_tiny_agent(0)
    return agent, default_tiny_tokenizer(1000), torch.randn(1, 64, 256, generator=torch.Generator().manual_seed(1))


def story(runner, settings, feats, steps=3):
    """The states of a story of ``steps`` steps started and stepped through ``runner``."""
    states = [runner.start(OPENING, features=feats, settings=settings)]
    for _ in range(steps):
        states.append(runner.step(states[-1], decoding=FAST).state)
    return states


def same_states(a, b):
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    assert [s.sentences for s in a] == [s.sentences for s in b]
    assert [s.kv_length for s in a] == [s.kv_length for s in b]
    assert all(torch.equal(x.last_features, y.last_features) for x, y in zip(a, b))


@pytest.mark.parametrize("choice", sorted(SETTINGS))
def test_a_story_through_the_dispatch_equals_its_own_engine(model, choice):
    """A KV-cache story and an official-loop story, both through one PolicyEngines, give the states of the engine
    engine_for makes for their policy."""
    agent, tokenizer, feats = model
    settings = SETTINGS[choice]
    engines = PolicyEngines(agent, tokenizer)
    own = engine_for(settings.policy, agent, tokenizer)
    same_states(story(engines, settings, feats), story(own, settings, feats))
    # run() goes to the same engine as step()
    start = engines.start(OPENING, features=feats, settings=settings)
    end, results = engines.run(start, 2, decoding=FAST)
    ref_end, ref_results = own.run(own.start(OPENING, features=feats, settings=settings), 2, decoding=FAST)
    assert end.token_ids == ref_end.token_ids and [r.sentence for r in results] == [r.sentence for r in ref_results]


def test_one_engine_per_policy_type_sharing_the_model(model):
    agent, tokenizer, feats = model
    engines = PolicyEngines(agent, tokenizer)
    kv = engines.engine(CachePolicy(kind="dense"))
    assert type(kv) is StoryEngine and engines.engine(CachePolicy(kind="window", window_images=3)) is kv
    reencode = engines.engine(ReencodePolicy())
    assert type(reencode) is ReencodeStoryEngine and reencode.agent is agent and reencode.tokenizer is tokenizer
    assert reencode.merge_lora == kv.merge_lora == engines.merge_lora  # auto decided once, by the first engine
    # the two kinds of story run side by side through the one object
    a = engines.start(OPENING, features=feats, settings=SETTINGS["multimodal_sink"])
    b = engines.start(OPENING, features=feats, settings=SETTINGS["reencode_window"])
    assert not isinstance(engines.step(a, decoding=FAST).state.context, ReencodeWindow)
    assert isinstance(engines.step(b, decoding=FAST).state.context, ReencodeWindow)


def test_an_unknown_policy_or_state_raises_type_error(model):
    agent, tokenizer, feats = model
    engines = PolicyEngines(agent, tokenizer)
    with pytest.raises(TypeError, match="CachePolicy or ReencodePolicy"):
        engines.engine("multimodal_sink")
    with pytest.raises(TypeError, match="CachePolicy or ReencodePolicy"):
        engines.start(OPENING, features=feats, settings=StorySettings(policy=object()))
    with pytest.raises(TypeError, match="StoryState"):
        engines.step("not a state", decoding=FAST)
