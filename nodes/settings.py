"""Settings nodes and inputs: the Story Settings node (cache policy, window, sink sizes) and the decoding inputs
that Story Step and Generate Story share (greedy/sampling, repetition penalty, the no-repeat rule, seed)."""

from __future__ import annotations

from typing import Optional

from seedstory_core.cache import POSITION_MODES
from seedstory_core.story import (
    DEFAULT_MAX_SINK_IMAGES,
    DEFAULT_NO_REPEAT_SENTENCES,
    DEFAULT_REPETITION_PENALTY,
    POLICY_CHOICES,
    DecodingSettings,
    StorySettings,
)

from .inputs import bool_input, choice_input, float_input, int_input, spec_problem
from .models import SETTINGS, SeedStoryInputError, require

DECODING_CHOICES = ("greedy", "sample")
MAX_SEED = 2**63 - 1

DECODING_TOOLTIPS = {
    "decoding": "greedy = always the most likely token (the official setting, deterministic); sample = draw tokens "
    "with temperature / top_p / top_k (varies with the seed).",
    "temperature": "Sampling only: <1 makes the text more predictable, >1 more surprising.",
    "top_p": "Sampling only: keep the smallest set of tokens whose probabilities add up to top_p (1 = off).",
    "top_k": "Sampling only: keep the k most likely tokens (0 = off).",
    "repetition_penalty": "Penalise tokens already used in the story (1 = off, the official setting; the default 1.2 "
    "keeps greedy stories from looping, see docs/evaluation.md).",
    "max_sentence_tokens": "Longest sentence in tokens; the image is started after this many text tokens.",
    "no_repeat_sentences": "On (the default): a sentence that comes out as a copy of an earlier sentence of the story "
    "is written again, starting with another word (at most 3 tries). Off = the official decoding. Your own text is "
    "kept as typed.",
    "seed": "Seed for sampling (text) and, in Generate Story, for the de-tokenizer noise (frame i uses (seed, i)).",
}


def decoding_inputs(default_max_tokens: int = 100) -> dict:
    """The required decoding inputs of Story Step and Generate Story (``INPUT_TYPES`` entries)."""
    t = DECODING_TOOLTIPS
    return {
        "decoding": choice_input(DECODING_CHOICES, "greedy", t["decoding"]),
        "temperature": float_input(0.7, 0.01, 5.0, 0.01, t["temperature"]),
        "top_p": float_input(0.9, 0.01, 1.0, 0.01, t["top_p"]),
        "top_k": int_input(0, 0, 1000, t["top_k"]),
        "repetition_penalty": float_input(DEFAULT_REPETITION_PENALTY, 0.5, 3.0, 0.01, t["repetition_penalty"]),
        "max_sentence_tokens": int_input(default_max_tokens, 1, 1024, t["max_sentence_tokens"]),
        "seed": int_input(0, 0, MAX_SEED, t["seed"], control_after_generate=True),
    }


def no_repeat_input() -> dict:
    """The optional ``no_repeat_sentences`` toggle (optional, so workflows and API jobs saved before it still load;
    missing = the pack's default, :data:`seedstory_core.story.DEFAULT_NO_REPEAT_SENTENCES`)."""
    return {"no_repeat_sentences": bool_input(DEFAULT_NO_REPEAT_SENTENCES, DECODING_TOOLTIPS["no_repeat_sentences"])}


def make_decoding(
    decoding, temperature, top_p, top_k, repetition_penalty, max_sentence_tokens, seed, node, no_repeat_sentences=None
) -> DecodingSettings:
    """DecodingSettings from a node's decoding inputs (``repetition_penalty`` / ``no_repeat_sentences`` None: the
    pack's defaults).

    Raises:
        SeedStoryInputError: a bad value (the message names ``node`` and the input): NaN, infinite or out of its
            widget's range included (a linked value skips ComfyUI's range check).
    """
    if repetition_penalty is None:
        repetition_penalty = DEFAULT_REPETITION_PENALTY
    if no_repeat_sentences is None:
        no_repeat_sentences = DEFAULT_NO_REPEAT_SENTENCES
    if not isinstance(no_repeat_sentences, bool):
        raise SeedStoryInputError(
            f"{node}: no_repeat_sentences must be true or false, found {no_repeat_sentences!r}. Tick or untick the "
            "toggle (API jobs: send a JSON boolean)."
        )
    if decoding not in DECODING_CHOICES:
        raise SeedStoryInputError(f"{node}: decoding must be one of {DECODING_CHOICES}, found {decoding!r}.")
    check_decoding_values(
        node, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, top_k=top_k
    )
    try:
        return DecodingSettings(
            do_sample=decoding == "sample",
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
            repetition_penalty=float(repetition_penalty),
            seed=int(seed),
            max_sentence_tokens=int(max_sentence_tokens),
            no_repeat_sentences=no_repeat_sentences,
        )
    except ValueError as err:
        raise SeedStoryInputError(f"{node}: {err}") from err


def decoding_problem(**values) -> Optional[str]:
    """The first decoding value (by input name: temperature, top_p, top_k, repetition_penalty, ...) outside its
    widget's spec (:func:`nodes.inputs.spec_problem`: NaN, infinity, out of range), or None. None values pass."""
    specs = decoding_inputs()
    for name, value in values.items():
        problem = spec_problem(specs.get(name), name, value)
        if problem is not None:
            return problem
    return None


def check_decoding_values(node: str, **values) -> None:
    """:func:`decoding_problem` as an error when a node runs.

    Raises:
        SeedStoryInputError: ``"<node>: <problem>"``.
    """
    problem = decoding_problem(**values)
    if problem is not None:
        raise SeedStoryInputError(f"{node}: {problem}")


def check_settings(settings, node: str) -> StorySettings:
    """The ``settings`` input of Story Start / Generate Story: the pack's defaults when not connected.

    Raises:
        SeedStoryInputError: something else than a Story Settings output is connected.
    """
    if settings is None:
        return StorySettings()
    return require(
        settings, StorySettings, node=node, name="settings", socket=SETTINGS, hint="SeedStory Story Settings output"
    )


SETTINGS_TOOLTIPS = {
    "cache_policy": "multimodal_sink = paper default; sink = first tokens + window (StreamingLLM); "
    "window = last W images only; dense = keep everything (memory grows); "
    "reencode_window = official baseline, re-encode the window every step.",
    "window_images": "W: how many recent images (with their sentences) stay fully in the cache.",
    "n_start": "Tokens always kept from the very start of the story (sink policies).",
    "boi_before": "multimodal_sink: tokens kept before each evicted image's BOI.",
    "boi_after": "multimodal_sink: tokens kept from each evicted image's BOI on.",
    "eoi_before": "multimodal_sink: tokens kept up to each evicted image's EOI.",
    "eoi_after": "multimodal_sink: tokens kept after each evicted image's EOI.",
    "max_sink_images": "multimodal_sink: keep the sink tokens of at most this many evicted images "
    f"(default {DEFAULT_MAX_SINK_IMAGES} = the pack's bounded default, "
    "seedstory_core.story.DEFAULT_MAX_SINK_IMAGES, chosen by the long-story "
    "ablation in docs/benchmarks.md; 0 = all, the paper's unbounded rule).",
    "positions": "rerotate = kept keys are re-rotated to consecutive positions "
    "(like transformers' SinkCache); original = keep their original positions.",
}


class SeedStoryStorySettings:
    NODE_ID = "SeedStoryStorySettings"
    DISPLAY_NAME = "SeedStory Story Settings"
    SEARCH_ALIASES = ["attention sink", "kv cache", "sliding window", "long story"]
    DESCRIPTION = (
        "Story-level settings for Story Start / Generate Story: how the agent's KV cache forgets old "
        "frames. multimodal_sink (the paper's attention sink, default) keeps the first tokens, a window "
        "of the last W images and the tokens around older images' BOI/EOI (by default of the most recent "
        "few, so the cache stays bounded; max_sink_images 0 = every one, the paper's rule); reencode_window is the "
        "official code's baseline (re-encodes the last W images every step, no KV reuse)."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "make"
    RETURN_TYPES = (SETTINGS,)
    RETURN_NAMES = ("settings",)
    OUTPUT_TOOLTIPS = ("Story settings, for the optional settings input of Story Start or Generate Story.",)

    @classmethod
    def INPUT_TYPES(cls):
        t = SETTINGS_TOOLTIPS
        return {
            "required": {
                "cache_policy": choice_input(POLICY_CHOICES, "multimodal_sink", t["cache_policy"]),
                "window_images": int_input(8, 1, 256, t["window_images"]),
                "n_start": int_input(4, 0, 256, t["n_start"]),
                "boi_before": int_input(4, 0, 64, t["boi_before"]),
                "boi_after": int_input(8, 0, 64, t["boi_after"]),
                "eoi_before": int_input(8, 0, 64, t["eoi_before"]),
                "eoi_after": int_input(4, 0, 64, t["eoi_after"]),
                "max_sink_images": int_input(DEFAULT_MAX_SINK_IMAGES, 0, 4096, t["max_sink_images"]),
                "positions": choice_input(POSITION_MODES, "rerotate", t["positions"]),
            }
        }

    def make(
        self,
        cache_policy="multimodal_sink",
        window_images=8,
        n_start=4,
        boi_before=4,
        boi_after=8,
        eoi_before=8,
        eoi_after=4,
        max_sink_images=None,
        positions="rerotate",
    ):
        if max_sink_images is None:
            max_sink_images = DEFAULT_MAX_SINK_IMAGES
        try:
            return (
                StorySettings.for_choice(
                    cache_policy,
                    window_images=int(window_images),
                    n_start=int(n_start),
                    boi_before=int(boi_before),
                    boi_after=int(boi_after),
                    eoi_before=int(eoi_before),
                    eoi_after=int(eoi_after),
                    max_sink_images=int(max_sink_images) or None,
                    positions=positions,
                ),
            )
        except ValueError as err:
            raise SeedStoryInputError(f"{self.DISPLAY_NAME}: {err}") from err
