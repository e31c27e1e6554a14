"""Story nodes: ViT Tokenize, Story Settings, Story Start, Story Step, Generate Story."""

from __future__ import annotations

from typing import List, Optional

import torch

from . import comfy_glue as glue
from .models import (
    AGENT,
    DETOKENIZER,
    FEATURES,
    SETTINGS,
    STATE,
    VISUAL_TOKENIZER,
    AgentModel,
    SeedStoryInputError,
    check_features,
    check_image,
    check_text,
    image_to_rgb,
    require,
    require_model,
    resize_image,
)
from .render import RENDER_TOOLTIPS, render_features

DECODING_CHOICES = ("greedy", "sample")
MAX_SEED = 2**63 - 1

#: Appended to every free-text tooltip (the rule: max_text_tokens).
LIMIT_TIP = (
    " At most max_position_embeddings / 8 - 66 tokens per sentence: 446 tokens (~1,500 characters) for the "
    "tiny and the official model."
)

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


def decoding_inputs(default_max_tokens: int = 100):
    from seedstory_core.story import DEFAULT_REPETITION_PENALTY

    t = DECODING_TOOLTIPS
    return {
        "decoding": (list(DECODING_CHOICES), {"default": "greedy", "tooltip": t["decoding"]}),
        "temperature": ("FLOAT", {"default": 0.7, "min": 0.01, "max": 5.0, "step": 0.01, "tooltip": t["temperature"]}),
        "top_p": ("FLOAT", {"default": 0.9, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": t["top_p"]}),
        "top_k": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": t["top_k"]}),
        "repetition_penalty": (
            "FLOAT",
            {
                "default": DEFAULT_REPETITION_PENALTY,
                "min": 0.5,
                "max": 3.0,
                "step": 0.01,
                "tooltip": t["repetition_penalty"],
            },
        ),
        "max_sentence_tokens": (
            "INT",
            {"default": default_max_tokens, "min": 1, "max": 1024, "tooltip": t["max_sentence_tokens"]},
        ),
        "seed": (
            "INT",
            {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": t["seed"]},
        ),
    }


def no_repeat_input():
    """The optional ``no_repeat_sentences`` toggle (optional, so workflows and API jobs saved before it still load;
    missing = the pack's default, :data:`seedstory_core.story.DEFAULT_NO_REPEAT_SENTENCES`)."""
    from seedstory_core.story import DEFAULT_NO_REPEAT_SENTENCES

    return {
        "no_repeat_sentences": (
            "BOOLEAN",
            {"default": DEFAULT_NO_REPEAT_SENTENCES, "tooltip": DECODING_TOOLTIPS["no_repeat_sentences"]},
        )
    }


def make_decoding(
    decoding, temperature, top_p, top_k, repetition_penalty, max_sentence_tokens, seed, node, no_repeat_sentences=None
):
    """DecodingSettings from a node's decoding inputs (``repetition_penalty`` / ``no_repeat_sentences`` None: the
    pack's defaults). Raises SeedStoryInputError for a bad value."""
    from seedstory_core.story import DEFAULT_NO_REPEAT_SENTENCES, DEFAULT_REPETITION_PENALTY, DecodingSettings

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


def story_modes():
    """The step modes, defined by the core library (seedstory_core.story.STORY_MODES; imported when needed so
    that loading the pack stays light)."""
    from seedstory_core.story import STORY_MODES

    return STORY_MODES


def _check_mode(mode, node: str) -> None:
    if mode not in story_modes():
        raise SeedStoryInputError(f"{node}: mode must be one of {story_modes()}, found {mode!r}.")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_state(state, node):
    from seedstory_core.story import StoryState

    return require(
        state,
        StoryState,
        node=node,
        name="state",
        socket=STATE,
        hint="state output of SeedStory Story Start, Story Step or Generate Story",
    )


def _on_device(state, engine):
    """The state with its tensors on the agent's device (a copy only when they are elsewhere)."""
    if state.last_features.device != engine.device:
        return state.to(engine.device)
    return state


def _features_out(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(glue.intermediate_device(), torch.float32)


# ---------------------------------------------------------------------------------------------- ViT tokenize
class SeedStoryViTTokenize:
    DESCRIPTION = (
        "Encodes pictures with the visual tokenizer into SEED-Story image features (64 vectors per image, "
        "the space the agent reads and writes). A batch of images gives a batch of features."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "encode"
    RETURN_TYPES = (FEATURES,)
    RETURN_NAMES = ("features",)
    OUTPUT_TOOLTIPS = ("Image features (B, 64, D), one row block per input image.",)

    @classmethod
    def INPUT_TYPES(cls):
        from seedstory_core.preprocess import RESIZE_MODES

        return {
            "required": {
                "visual_tokenizer": (VISUAL_TOKENIZER, {"tooltip": "The visual tokenizer (from a SeedStory loader)."}),
                "image": ("IMAGE", {"tooltip": "One or more pictures; any size, RGB/RGBA/grayscale."}),
                "resize_mode": (
                    list(RESIZE_MODES),
                    {
                        "default": "squash",
                        "tooltip": "squash = resize to a square ignoring the aspect ratio (official inference); "
                        "keep_ratio = resize the short side and centre-crop (official stage-3 training).",
                    },
                ),
            }
        }

    def encode(self, visual_tokenizer, image, resize_mode="squash"):
        node = "SeedStory ViT Tokenize"
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        img = check_image(image, node=node, name="image")
        module = vit.loaded()
        try:
            feats = module.encode_images(img, mode=resize_mode)
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        return (_features_out(feats),)


# ---------------------------------------------------------------------------------------------- settings
class SeedStoryStorySettings:
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
        from seedstory_core.cache import POSITION_MODES
        from seedstory_core.story import DEFAULT_MAX_SINK_IMAGES, POLICY_CHOICES

        return {
            "required": {
                "cache_policy": (
                    list(POLICY_CHOICES),
                    {
                        "default": "multimodal_sink",
                        "tooltip": "multimodal_sink = paper default; sink = first tokens + window (StreamingLLM); "
                        "window = last W images only; dense = keep everything (memory grows); "
                        "reencode_window = official baseline, re-encode the window every step.",
                    },
                ),
                "window_images": (
                    "INT",
                    {
                        "default": 8,
                        "min": 1,
                        "max": 256,
                        "tooltip": "W: how many recent images (with their sentences) stay fully in the cache.",
                    },
                ),
                "n_start": (
                    "INT",
                    {
                        "default": 4,
                        "min": 0,
                        "max": 256,
                        "tooltip": "Tokens always kept from the very start of the story (sink policies).",
                    },
                ),
                "boi_before": (
                    "INT",
                    {
                        "default": 4,
                        "min": 0,
                        "max": 64,
                        "tooltip": "multimodal_sink: tokens kept before each evicted image's BOI.",
                    },
                ),
                "boi_after": (
                    "INT",
                    {
                        "default": 8,
                        "min": 0,
                        "max": 64,
                        "tooltip": "multimodal_sink: tokens kept from each evicted image's BOI on.",
                    },
                ),
                "eoi_before": (
                    "INT",
                    {
                        "default": 8,
                        "min": 0,
                        "max": 64,
                        "tooltip": "multimodal_sink: tokens kept up to each evicted image's EOI.",
                    },
                ),
                "eoi_after": (
                    "INT",
                    {
                        "default": 4,
                        "min": 0,
                        "max": 64,
                        "tooltip": "multimodal_sink: tokens kept after each evicted image's EOI.",
                    },
                ),
                "max_sink_images": (
                    "INT",
                    {
                        "default": DEFAULT_MAX_SINK_IMAGES,
                        "min": 0,
                        "max": 4096,
                        "tooltip": "multimodal_sink: keep the sink tokens of at most this many evicted images "
                        f"(default {DEFAULT_MAX_SINK_IMAGES} = the pack's bounded default, "
                        "seedstory_core.story.DEFAULT_MAX_SINK_IMAGES, chosen by the long-story "
                        "ablation in docs/benchmarks.md; 0 = all, the paper's unbounded rule).",
                    },
                ),
                "positions": (
                    list(POSITION_MODES),
                    {
                        "default": "rerotate",
                        "tooltip": "rerotate = kept keys are re-rotated to consecutive positions "
                        "(like transformers' SinkCache); original = keep their original positions.",
                    },
                ),
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
        from seedstory_core.story import DEFAULT_MAX_SINK_IMAGES, StorySettings

        node = "SeedStory Story Settings"
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
            raise SeedStoryInputError(f"{node}: {err}") from err


def _check_settings(settings, node):
    from seedstory_core.story import StorySettings

    if settings is None:
        return StorySettings()
    return require(
        settings, StorySettings, node=node, name="settings", socket=SETTINGS, hint="SeedStory Story Settings output"
    )


def _validate_text(node: str, name: str, value) -> object:
    """VALIDATE_INPUTS helper: True, or the message ComfyUI shows in node_errors."""
    if value is None:  # linked input: checked at run time
        return True
    if not isinstance(value, str) or not value.strip():
        return (
            f"{node}: '{name}' is empty. Type the sentence that goes with the start image "
            "(e.g. 'George walked to the park.')."
        )
    return True


def max_text_tokens(config) -> int:
    """The longest sentence (opening text, a caption, a Story Step text) a SeedStory node accepts, in tokens.

    Rule: ``max_position_embeddings // 8 - (num_img_tokens + 2)``. The agent's cache holds a window of 8 frames by
    default (Story Settings), each one sentence plus the image's ``num_img_tokens + 2`` tokens (BOI, IMG x n, EOI),
    so one frame may use an eighth of the position range the model was built for. Both the bundled tiny model and
    SEED-Story-George have ``max_position_embeddings = 4096`` and 64 image tokens: 446 tokens (the official
    training stories average ~60 text tokens per frame: max_length 1280 for 10 frames of 66 image tokens + text).

    Args: config: the agent's ``AgentConfig`` (``llm.max_position_embeddings``, ``image_tokens.num_img_tokens``).
    Returns: the limit in tokens of the agent's tokenizer (>= 16 for any config).
    """
    positions = int(config.llm.max_position_embeddings)
    return max(16, positions // 8 - (int(config.image_tokens.num_img_tokens) + 2))


def check_text_length(agent: AgentModel, text: str, *, node: str, name: str) -> str:
    """Raise SeedStoryInputError when ``text`` is longer than :func:`max_text_tokens` of ``agent``; returns it.

    Counted with the agent's own tokenizer on the stripped text (what the engine feeds the model)."""
    text = str(text)
    if not text.strip():
        return text
    limit = max_text_tokens(agent.config)
    n = len(agent.tokenizer.encode(text.strip()))
    if n > limit:
        per_token = len(text.strip()) / n
        raise SeedStoryInputError(
            f"{node}: '{name}' is {n} tokens long ({len(text.strip())} characters), but this model takes at most "
            f"{limit} tokens per sentence (max_position_embeddings {agent.config.llm.max_position_embeddings} / 8 - "
            f"{int(agent.config.image_tokens.num_img_tokens) + 2} image tokens). Shorten it to about "
            f"{int(limit * per_token)} characters; a story is told one sentence per frame, so put the rest in the "
            "following steps (captions, or the text of Story Step)."
        )
    return text


# ---------------------------------------------------------------------------------------------- start
class SeedStoryStoryStart:
    DESCRIPTION = (
        "Starts a story: the start picture (as features, or an IMAGE plus the visual tokenizer) and its "
        "sentence go into the agent's context ([BOS] sentence <img>...</img>). Returns the story state "
        "for Story Step nodes; a state can feed several Story Step nodes (independent branches)."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "start"
    RETURN_TYPES = (STATE, FEATURES)
    RETURN_NAMES = ("state", "start_features")
    OUTPUT_TOOLTIPS = (
        "The story state after the opening (immutable; branch it freely).",
        "Features of the start image (1, 64, D).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent": (AGENT, {"tooltip": "The story agent (SeedStory Agent Loader or Tiny Model Loader)."}),
                "opening_text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "placeholder": "The sentence that goes with the start image",
                        "tooltip": "The opening sentence (caption of the start image)." + LIMIT_TIP,
                    },
                ),
                "batch_index": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 4095,
                        "tooltip": "Which image of the batch starts the story (0 = the first).",
                    },
                ),
            },
            "optional": {
                "features": (
                    FEATURES,
                    {
                        "tooltip": "Features of the start image (from ViT Tokenize). "
                        "Give these OR image + visual_tokenizer."
                    },
                ),
                "image": ("IMAGE", {"tooltip": "The start picture (any size/mode); needs visual_tokenizer."}),
                "visual_tokenizer": (VISUAL_TOKENIZER, {"tooltip": "Encodes the image input."}),
                "settings": (SETTINGS, {"tooltip": "Cache policy and window (default: multimodal sink, W=8)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, opening_text=None):
        return _validate_text("SeedStory Story Start", "opening_text", opening_text)

    def start(
        self, agent, opening_text, batch_index=0, features=None, image=None, visual_tokenizer=None, settings=None
    ):
        node = "SeedStory Story Start"
        agent = require_model(agent, "agent", node=node)
        text = check_text_length(
            agent, check_text(opening_text, node=node, name="opening_text"), node=node, name="opening_text"
        )
        story_settings = _check_settings(settings, node)
        feats = _start_features(node, agent, features, image, visual_tokenizer, int(batch_index))
        engine = agent.engine(policy=story_settings.policy)
        try:
            state = engine.start(text, features=feats, settings=story_settings)
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        return (state, _features_out(state.last_features))


def _start_features(node, agent: AgentModel, features, image, visual_tokenizer, batch_index: int) -> torch.Tensor:
    if features is not None and image is not None:
        raise SeedStoryInputError(f"{node}: connect either 'features' or 'image' (+ visual_tokenizer), not both.")
    if features is not None:
        feats = check_features(features, node=node, name="features", dim=agent.feature_dim)
    elif image is not None:
        img = check_image(image, node=node, name="image")
        if visual_tokenizer is None:
            raise SeedStoryInputError(
                f"{node}: an 'image' was connected but no 'visual_tokenizer'; connect the "
                "visual_tokenizer output of the loader so the picture can be encoded."
            )
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        if batch_index >= img.shape[0]:
            raise SeedStoryInputError(
                f"{node}: batch_index {batch_index} but the image batch has {img.shape[0]} image(s)."
            )
        img = img[batch_index : batch_index + 1]
        batch_index = 0
        try:
            feats = vit.loaded().encode_images(img)
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        feats = check_features(feats, node=node, name="image", dim=agent.feature_dim)
    else:
        raise SeedStoryInputError(
            f"{node}: no start image. Connect 'features' (from ViT Tokenize) or 'image' plus 'visual_tokenizer'."
        )
    if batch_index >= feats.shape[0]:
        raise SeedStoryInputError(f"{node}: batch_index {batch_index} but the features hold {feats.shape[0]} image(s).")
    return feats[batch_index : batch_index + 1]


# ---------------------------------------------------------------------------------------------- step
class SeedStoryStoryStep:
    DESCRIPTION = (
        "One story step: the agent writes the next sentence (or takes yours in visualization mode) and "
        "regresses the next image's features. Chain steps to continue the story (the attention-sink KV "
        "cache travels in the state, no re-encoding); feed one state to two steps for two independent "
        "branches. Render the features with De-tokenize."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "step"
    RETURN_TYPES = (STATE, "STRING", FEATURES)
    RETURN_NAMES = ("state", "sentence", "features")
    OUTPUT_TOOLTIPS = (
        "The story state after this step (the input state is unchanged).",
        "The sentence of this step.",
        "Features of this step's image (1, 64, D), for De-tokenize.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent": (AGENT, {"tooltip": "The same agent that started the story."}),
                "state": (STATE, {"tooltip": "The story so far (Story Start, Story Step or Generate Story)."}),
                "mode": (
                    list(story_modes()),
                    {
                        "default": "generation",
                        "tooltip": "generation = the agent writes the sentence (your text, if any, is its beginning); "
                        "visualization = your text is the sentence and the agent only draws it.",
                    },
                ),
                **decoding_inputs(),
            },
            "optional": {
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "Your text for this step: the start of the sentence (generation) or "
                        "the whole sentence (visualization, required). Empty = none." + LIMIT_TIP,
                    },
                ),
                "context_features": (
                    FEATURES,
                    {
                        "tooltip": "Optional: features to store for the previous image instead of its regressed "
                        "features (e.g. ViT Tokenize of the rendered frame)."
                    },
                ),
                **no_repeat_input(),
            },
        }

    def step(
        self,
        agent,
        state,
        mode="generation",
        decoding="greedy",
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        repetition_penalty=None,
        max_sentence_tokens=100,
        seed=0,
        text="",
        context_features=None,
        no_repeat_sentences=None,
    ):
        node = "SeedStory Story Step"
        agent = require_model(agent, "agent", node=node)
        state = _check_state(state, node)
        text = check_text(text if text is not None else "", node=node, name="text", allow_empty=True)
        check_text_length(agent, text, node=node, name="text")
        _check_mode(mode, node)
        if mode == "visualization" and not text.strip():
            raise SeedStoryInputError(
                f"{node}: visualization mode draws your sentence, but 'text' is empty. Type "
                "the sentence for this frame or switch mode to generation."
            )
        ctx = None
        if context_features is not None:
            ctx = check_features(context_features, node=node, name="context_features", dim=agent.feature_dim)
            if ctx.shape[0] != 1:
                raise SeedStoryInputError(
                    f"{node}: 'context_features' holds features of {ctx.shape[0]} images, but they replace the one "
                    "previous image of this story. Encode a single picture (e.g. ImageFromBatch before ViT Tokenize)."
                )
        dec = make_decoding(
            decoding,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            max_sentence_tokens,
            seed,
            node,
            no_repeat_sentences=no_repeat_sentences,
        )
        engine = agent.engine(policy=state.settings.policy)
        try:
            result = engine.step(
                _on_device(state, engine),
                text=text.strip() or None,
                mode=mode,
                decoding=dec,
                context_features=ctx,
                cancel=glue.cancel_callback,
            )
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        return (result.state, _one_line(result.sentence), _features_out(result.features))


# ---------------------------------------------------------------------------------------------- generate
class SeedStoryGenerateStory:
    DESCRIPTION = (
        "The whole story in one node: from a start picture and its sentence, the agent writes N more "
        "sentences and images (each new sentence appears on the node as it is written) and the "
        "de-tokenizer renders every frame. Outputs the frames (start + N), the sentences (one per line) "
        "and the final state (continue it with Story Step). Cancel stops it cleanly."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING", STATE)
    RETURN_NAMES = ("images", "sentences", "state")
    OUTPUT_TOOLTIPS = (
        "Frames: the start image (resized to the render size) followed by the N generated frames.",
        "The opening sentence and the N generated sentences, one per line.",
        "The final story state.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        dec = decoding_inputs(default_max_tokens=100)
        return {
            "required": {
                "agent": (AGENT, {"tooltip": "The story agent."}),
                "visual_tokenizer": (VISUAL_TOKENIZER, {"tooltip": "Encodes the start image."}),
                "detokenizer": (DETOKENIZER, {"tooltip": "Renders every frame."}),
                "start_image": (
                    "IMAGE",
                    {
                        "tooltip": "The first picture of the story: one image (a batch is refused; "
                        "pick one with ImageFromBatch)."
                    },
                ),
                "opening_text": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "placeholder": "The sentence that goes with the start image",
                        "tooltip": "The opening sentence (caption of the start image)." + LIMIT_TIP,
                    },
                ),
                "story_steps": (
                    "INT",
                    {
                        "default": 4,
                        "min": 1,
                        "max": 200,
                        "tooltip": "How many new frames (sentence + image) to generate.",
                    },
                ),
                "mode": (
                    list(story_modes()),
                    {
                        "default": "generation",
                        "tooltip": "generation = the agent writes the story (captions, if given, start each sentence); "
                        "visualization = the agent draws your captions (one per line, one per step).",
                    },
                ),
                **dec,
                "diffusion_steps": ("INT", {"default": 30, "min": 1, "max": 200, "tooltip": RENDER_TOOLTIPS["steps"]}),
                "guidance_scale": (
                    "FLOAT",
                    {
                        "default": 7.5,
                        "min": 0.0,
                        "max": 30.0,
                        "step": 0.1,
                        "tooltip": RENDER_TOOLTIPS["guidance_scale"],
                    },
                ),
                "scheduler": (list(_scheduler_names()), {"default": "euler", "tooltip": RENDER_TOOLTIPS["scheduler"]}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": RENDER_TOOLTIPS["width"]}),
                "height": (
                    "INT",
                    {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": RENDER_TOOLTIPS["height"]},
                ),
                "same_noise": ("BOOLEAN", {"default": False, "tooltip": RENDER_TOOLTIPS["same_noise"]}),
            },
            "optional": {
                "captions": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "One line per step. visualization: the sentences to draw (at least "
                        "story_steps lines); generation: optional beginnings (empty line = free)." + LIMIT_TIP,
                    },
                ),
                "settings": (SETTINGS, {"tooltip": "Cache policy and window (default: multimodal sink, W=8)."}),
                **no_repeat_input(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, opening_text=None):
        return _validate_text("SeedStory Generate Story", "opening_text", opening_text)

    def generate(
        self,
        agent,
        visual_tokenizer,
        detokenizer,
        start_image,
        opening_text,
        story_steps=4,
        mode="generation",
        decoding="greedy",
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        repetition_penalty=None,
        max_sentence_tokens=100,
        seed=0,
        diffusion_steps=30,
        guidance_scale=7.5,
        scheduler="euler",
        width=0,
        height=0,
        same_noise=False,
        captions="",
        settings=None,
        no_repeat_sentences=None,
        unique_id=None,
    ):
        node = "SeedStory Generate Story"
        agent = require_model(agent, "agent", node=node)
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        detok = require_model(detokenizer, "detokenizer", node=node)
        img = check_image(start_image, node=node, name="start_image")
        if img.shape[0] != 1:
            raise SeedStoryInputError(
                f"{node}: 'start_image' is a batch of {img.shape[0]} images, but Generate Story tells one story from "
                "one start picture (its state output carries one story). Pick the picture with ComfyUI's "
                "ImageFromBatch node (batch_index, length 1), or queue one prompt per picture (seedstory-batch does "
                "that from a JSONL file). Nothing was generated."
            )
        text = check_text_length(
            agent, check_text(opening_text, node=node, name="opening_text"), node=node, name="opening_text"
        )
        story_settings = _check_settings(settings, node)
        n = int(story_steps)
        if n < 1:
            raise SeedStoryInputError(f"{node}: story_steps must be >= 1, found {n}.")
        _check_mode(mode, node)
        lines = [line.strip() for line in str(captions or "").splitlines()]
        for k, line in enumerate(lines):
            check_text_length(agent, line, node=node, name=f"captions (line {k + 1})")
        if mode == "visualization":
            lines = [line for line in lines if line]
            if len(lines) < n:
                raise SeedStoryInputError(
                    f"{node}: visualization mode needs one caption per step: story_steps={n} but 'captions' has "
                    f"{len(lines)} non-empty line(s). Add lines or lower story_steps."
                )
        dec = make_decoding(
            decoding,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            max_sentence_tokens,
            seed,
            node,
            no_repeat_sentences=no_repeat_sentences,
        )
        if detok.feature_dim != agent.feature_dim:
            raise SeedStoryInputError(
                f"{node}: the de-tokenizer takes features of width {detok.feature_dim} but the "
                f"agent makes {agent.feature_dim}; load both from the same model."
            )
        w = int(width) or detok.native_size
        h = int(height) or detok.native_size

        stream = glue.text_streamer(unique_id)
        progress = glue.Progress(n * int(diffusion_steps))
        engine = agent.engine(vit, policy=story_settings.policy)
        try:
            feats = vit.module.encode_images(img)
            state = engine.start(text, features=feats, settings=story_settings)
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        sentences: List[str] = [_one_line(text)]
        frames = [resize_image(image_to_rgb(img), h, w)]

        def show(partial: Optional[str] = None):
            if stream is None:
                return
            shown = list(sentences) + ([_one_line(partial)] if partial is not None else [])
            stream("\n".join(f"{i}. {s}" for i, s in enumerate(shown)))

        def on_frame(i: int, _total: int, result) -> None:
            """Render frame i (progress over the diffusion steps of every frame), then reload the agent, which the
            render may have offloaded."""
            sentences.append(_one_line(result.sentence))
            show()
            done = (i - 1) * int(diffusion_steps)
            frames.append(
                render_features(
                    detok,
                    result.features,
                    steps=int(diffusion_steps),
                    guidance_scale=float(guidance_scale),
                    scheduler=scheduler,
                    seed=int(seed),
                    frame_index=i,
                    same_noise=bool(same_noise),
                    width=w,
                    height=h,
                    on_step=lambda s, _t: progress.set(done + s),
                    node=node,
                )
            )
            agent.ensure_loaded(vit)
            return None

        show()
        glue.check_interrupted()
        try:
            state, _ = engine.run(
                state,
                n,
                texts=lines,
                mode=mode,
                decoding=dec,
                cancel=glue.cancel_callback,
                on_text=(lambda _i, partial: show(partial)) if stream is not None else None,
                on_frame=on_frame,
            )
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: step {len(sentences)}: {err}") from err
        images = torch.cat([f.to(frames[0].device) for f in frames], dim=0)
        return (images, "\n".join(sentences), state)


def _scheduler_names():
    from seedstory_core.detokenizer import SCHEDULER_NAMES

    return SCHEDULER_NAMES
