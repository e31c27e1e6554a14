"""Story nodes: ViT Tokenize, Story Start, Story Step, Generate Story.

Each node checks its inputs, asks the core library (:mod:`seedstory_core.rules`, :mod:`seedstory_core.story`) to do
the work, and turns the library's errors into messages that name the node; the model's rules (sentence length,
caption count, feature width) live in :mod:`seedstory_core.rules`. The Story Settings node and the decoding inputs
are in :mod:`nodes.settings`.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional

import torch

from seedstory_core.consistency import DEFAULT_RETRY_THRESHOLD, MAX_REDRAWS, RetryReport, RetrySettings
from seedstory_core.detokenizer import SCHEDULER_NAMES
from seedstory_core.preprocess import RESIZE_MODES
from seedstory_core.rules import (
    STORY_MODES,
    StoryRuleError,
    check_clean_text,
    check_mode,
    check_story_run,
    check_feature_width,
    check_text_chars,
    check_text_length,
)
from seedstory_core.redo import StoryRecord
from seedstory_core.retry_render import StoryRetry, retry_settings
from seedstory_core.story import StoryState

from . import comfy_glue as glue
from .cast import CAST, CAST_INPUT_TOOLTIP, check_cast
from .inputs import bool_input, check_widgets, choice_input, float_input, int_input, socket_input, text_input
from .models import (
    AGENT,
    DETOKENIZER,
    FEATURES,
    SETTINGS,
    STATE,
    VISUAL_TOKENIZER,
    AgentModel,
    DetokenizerModel,
    SeedStoryInputError,
    check_features,
    check_image,
    check_text,
    image_to_rgb,
    require,
    require_model,
    resize_image,
)
from .render import RENDER_TOOLTIPS, check_render_values, render_features
from .settings import check_settings, decoding_inputs, make_decoding, no_repeat_input

#: Appended to every free-text tooltip (the rule: seedstory_core.rules.max_text_tokens).
LIMIT_TIP = (
    " At most max_position_embeddings / 8 - 66 tokens per sentence: 446 tokens (~1,500 characters) for the "
    "tiny and the official model."
)


def _rules(node: str, check: Callable, *args, **kwargs):
    """Run a :mod:`seedstory_core.rules` check; its :class:`StoryRuleError` becomes this node's input error."""
    try:
        return check(*args, **kwargs)
    except StoryRuleError as err:
        raise SeedStoryInputError(f"{node}: {err}") from None


def _text_length(node: str, agent: AgentModel, text: str, name: str) -> str:
    """A story text when the node runs: not over the bound in characters, clean, within the limit in tokens."""
    _rules(node, check_text_chars, text, name)
    _rules(node, check_clean_text, text, name)
    return _rules(node, check_text_length, agent.tokenizer, agent.config, text, name=name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _check_state(state, node):
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


def _validate_text(node: str, name: str, value, *, allow_empty: bool = False, lines: bool = False) -> object:
    """VALIDATE_INPUTS helper: True, or the message ComfyUI shows in node_errors. A story text must not be empty
    (unless ``allow_empty``), be surely over the token limit (:func:`seedstory_core.rules.check_text_chars`; the exact
    count needs the agent's tokenizer, at run time) or hold lone surrogates or control characters
    (:func:`seedstory_core.rules.check_clean_text`); with ``lines`` each line is one sentence (captions)."""
    if value is None:  # linked input: checked at run time
        return True
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        return (
            f"{node}: '{name}' is empty. Type the sentence that goes with the start image "
            "(e.g. 'George walked to the park.')."
        )
    parts = [(f"{name} (line {k + 1})", line) for k, line in enumerate(value.splitlines())] if lines else []
    try:
        for part, text in parts or [(name, value)]:
            check_text_chars(text, part)
            check_clean_text(text, part)
    except StoryRuleError as err:
        return f"{node}: {err}"
    return True


def _validate_all(node_cls, texts: dict, widgets: dict) -> object:
    """VALIDATE_INPUTS of the story nodes: the story texts (``{name: (value, options of _validate_text)}``) first,
    then the numeric widgets (:func:`nodes.inputs.check_widgets`: NaN, infinity, range, multiples)."""
    for name, (value, options) in texts.items():
        verdict = _validate_text(node_cls.DISPLAY_NAME, name, value, **options)
        if verdict is not True:
            return verdict
    return check_widgets(node_cls, **widgets)


# ---------------------------------------------------------------------------------------------- consistency retry
RETRY_TOOLTIPS = {
    "consistency_retry": "Consistency retry: redraw a frame up to N times (other de-tokenizer seeds) while a "
    "character its sentence names does not look like its reference; the best drawing is kept. 0 = off. Each redraw "
    "costs one more render and one visual-tokenizer pass; the story's sentences and context do not change.",
    "retry_threshold": "Look similarity (-1..1: for each token of the reference picture the best cosine similarity "
    "to a token of the frame, averaged, in visual-tokenizer features) below which a frame is redrawn.",
}
#: What each node compares a frame with (appended to the consistency_retry tooltip).
RETRY_REFERENCES = {
    "generate": " References: the cast sheet's pictures when a cast is connected, else each character's first "
    "appearance in this story (the start picture for the characters of the opening sentence).",
    "step": " References: the cast sheet in the state (a Story Cast connected to the Story Start or Generate Story "
    "that began the story; without one the retry is refused). Needs detokenizer and visual_tokenizer.",
}


def retry_inputs(node: str) -> dict:
    """The optional ``consistency_retry`` (N redraws per frame, 0 = off) and ``retry_threshold`` widgets of Generate
    Story (``node`` "generate") and Story Step ("step")."""
    return {
        "consistency_retry": int_input(0, 0, MAX_REDRAWS, RETRY_TOOLTIPS["consistency_retry"] + RETRY_REFERENCES[node]),
        "retry_threshold": float_input(DEFAULT_RETRY_THRESHOLD, -1.0, 1.0, 0.01, RETRY_TOOLTIPS["retry_threshold"]),
    }


def _retry(node: str, consistency_retry, retry_threshold) -> Optional[RetrySettings]:
    """The retry settings of the node's inputs (None: retry off). Raises SeedStoryInputError for a bad value."""
    try:
        return retry_settings(consistency_retry, retry_threshold)
    except ValueError as err:
        raise SeedStoryInputError(
            f"{node}: consistency retry: {err}. Set consistency_retry to 0..{MAX_REDRAWS} (0 = off) and "
            f"retry_threshold to a number in [-1, 1] (default {DEFAULT_RETRY_THRESHOLD})."
        ) from None


def _output_linked(prompt, unique_id, slot: int) -> Optional[bool]:
    """Whether output ``slot`` of node ``unique_id`` feeds another node of the API ``prompt`` (ComfyUI's hidden
    PROMPT input; the id of the executing node); None when unknown (outside ComfyUI)."""
    if not isinstance(prompt, dict) or unique_id is None:
        return None
    link = [str(unique_id), int(slot)]
    for entry in prompt.values():
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        for value in (inputs or {}).values():
            if isinstance(value, (list, tuple)) and len(value) == 2 and [str(value[0]), value[1]] == link:
                return True
    return False


# ---------------------------------------------------------------------------------------------- ViT tokenize
class SeedStoryViTTokenize:
    NODE_ID = "SeedStoryViTTokenize"
    DISPLAY_NAME = "SeedStory ViT Tokenize"
    SEARCH_ALIASES = ["encode image", "image features", "clip vision encode"]
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
        return {
            "required": {
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, "The visual tokenizer (from a SeedStory loader)."),
                "image": socket_input("IMAGE", "One or more pictures; any size, RGB/RGBA/grayscale."),
                "resize_mode": choice_input(
                    RESIZE_MODES,
                    "squash",
                    "squash = resize to a square ignoring the aspect ratio (official inference); "
                    "keep_ratio = resize the short side and centre-crop (official stage-3 training).",
                ),
            }
        }

    def encode(self, visual_tokenizer, image, resize_mode="squash"):
        node = self.DISPLAY_NAME
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        img = check_image(image, node=node, name="image")
        module = vit.loaded()
        try:
            feats = module.encode_images(img, mode=resize_mode)
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        return (_features_out(feats),)


# ---------------------------------------------------------------------------------------------- start
OPENING_TOOLTIP = "The opening sentence (caption of the start image)." + LIMIT_TIP


def opening_text_input() -> dict:
    """The ``opening_text`` box of Story Start and Generate Story."""
    placeholder = "The sentence that goes with the start image"
    return {"opening_text": text_input(OPENING_TOOLTIP, placeholder=placeholder)}


class SeedStoryStoryStart:
    NODE_ID = "SeedStoryStoryStart"
    DISPLAY_NAME = "SeedStory Story Start"
    SEARCH_ALIASES = ["story", "comic", "storyboard", "begin story", "first panel"]
    DESCRIPTION = (
        "Starts a story: the start picture (as features, or an IMAGE plus the visual tokenizer) and its "
        "sentence go into the agent's context ([BOS] sentence <img>...</img>; an optional cast sheet from Story "
        "Cast goes first, pinned). Returns the story state for Story Step nodes; a state can feed several Story "
        "Step nodes (independent branches), and the cast sheet travels in it."
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
                "agent": socket_input(AGENT, "The story agent (SeedStory Agent Loader or Tiny Model Loader)."),
                **opening_text_input(),
                "batch_index": int_input(0, 0, 4095, "Which image of the batch starts the story (0 = the first)."),
            },
            "optional": {
                "features": socket_input(
                    FEATURES, "Features of the start image (from ViT Tokenize). Give these OR image + visual_tokenizer."
                ),
                "image": socket_input("IMAGE", "The start picture (any size/mode); needs visual_tokenizer."),
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, "Encodes the image input."),
                "settings": socket_input(SETTINGS, "Cache policy and window (default: multimodal sink, W=8)."),
                "cast": socket_input(CAST, CAST_INPUT_TOOLTIP),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, opening_text=None):
        return _validate_text(cls.DISPLAY_NAME, "opening_text", opening_text)

    def start(
        self,
        agent,
        opening_text,
        batch_index=0,
        features=None,
        image=None,
        visual_tokenizer=None,
        settings=None,
        cast=None,
    ):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        text = _text_length(node, agent, check_text(opening_text, node=node, name="opening_text"), "opening_text")
        story_settings = check_settings(settings, node)
        cast = check_cast(node, cast, agent.feature_dim)
        feats = _start_features(node, agent, features, image, visual_tokenizer, int(batch_index))
        engine = agent.engine(policy=story_settings.policy)
        try:
            state = engine.start(text, features=feats, settings=story_settings, cast=cast)
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
STEP_TOOLTIPS = {
    "mode": "generation = the agent writes the sentence (your text, if any, is its beginning); "
    "visualization = your text is the sentence and the agent only draws it.",
    "text": "Your text for this step: the start of the sentence (generation) or "
    "the whole sentence (visualization, required). Empty = none." + LIMIT_TIP,
    "context_features": "Optional: features to store for the previous image instead of its regressed "
    "features (e.g. ViT Tokenize of the rendered frame).",
    "detokenizer": "Optional: renders this step's frame into the image output (at the model's native size with "
    "euler and the noise of (seed, story step): the picture Generate Story draws for this frame with the same "
    "settings; for other render settings use De-tokenize on the features output), and redraws it for the "
    "consistency retry.",
    "visual_tokenizer": "Optional: tokenizes the rendered frame for the consistency retry's look check (the "
    "visual tokenizer of the story's model; needed only when consistency_retry > 0).",
}

#: Story Step's optional picture inputs (:class:`StepPicture`), taken by its ``step`` as keyword arguments.
STEP_PICTURE_INPUTS = (
    "detokenizer",
    "visual_tokenizer",
    "diffusion_steps",
    "guidance_scale",
    "consistency_retry",
    "retry_threshold",
    "prompt",
)
#: The slot of Story Step's ``image`` output (appended last, so workflows saved before it keep their links).
STEP_IMAGE_SLOT = 3


class StepPicture:
    """Story Step's picture: the step's frame rendered with the de-tokenizer (frame index = the story step, as in
    Generate Story), redrawn by the consistency retry against the state's cast sheet when ``consistency_retry`` > 0.

    Made by :meth:`from_inputs` before the step runs (so a refusal wastes no step), drawn by :meth:`draw` after it.
    """

    def __init__(self, node: str, detok: DetokenizerModel, vit, render: dict, retry: Optional[RetrySettings], stream):
        self.node, self.detok, self.vit, self.render, self.retry, self.stream = node, detok, vit, render, retry, stream

    @classmethod
    def from_inputs(
        cls, node: str, agent: AgentModel, state: StoryState, seed, inputs: dict
    ) -> Optional["StepPicture"]:
        """The picture Story Step draws for ``inputs`` (its picture inputs, :data:`STEP_PICTURE_INPUTS`), or None
        when no de-tokenizer is connected (the ``image`` output is then None).

        Raises:
            SeedStoryInputError: an unknown input; ``consistency_retry`` > 0 without a cast sheet in the state or
                without detokenizer / visual_tokenizer; the ``image`` output connected without a de-tokenizer; a
                de-tokenizer of another width; a bad render value.
        """
        unknown = sorted(set(inputs) - set(STEP_PICTURE_INPUTS))
        if unknown:
            raise SeedStoryInputError(f"{node}: unknown input(s) {unknown}; known: {list(STEP_PICTURE_INPUTS)}.")
        get = inputs.get
        retry = _retry(node, get("consistency_retry", 0), get("retry_threshold", DEFAULT_RETRY_THRESHOLD))
        detok, vit = get("detokenizer"), get("visual_tokenizer")
        if retry is not None and state.cast is None:
            raise SeedStoryInputError(
                f"{node}: consistency_retry is {retry.max_redraws}, but this story has no cast sheet to compare the "
                "frame with. Connect a SeedStory Story Cast node to the cast input of the Story Start (or Generate "
                "Story) that began the story, or use Generate Story, whose retry also compares each character with "
                "its first appearance. Or set consistency_retry to 0. Nothing was generated."
            )
        if retry is not None and (detok is None or vit is None):
            missing = [n for n, v in (("detokenizer", detok), ("visual_tokenizer", vit)) if v is None]
            raise SeedStoryInputError(
                f"{node}: consistency_retry is {retry.max_redraws}, but {' and '.join(map(repr, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} not connected: the retry renders the frame and tokenizes the "
                "picture. Connect the detokenizer and visual_tokenizer outputs of the story's loader, or set "
                "consistency_retry to 0. Nothing was generated."
            )
        if detok is None:
            if _output_linked(get("prompt"), glue.executing_node_id(), STEP_IMAGE_SLOT):
                raise SeedStoryInputError(
                    f"{node}: the image output is connected, but no 'detokenizer' is: connect the detokenizer output "
                    "of the story's loader (or render the features output with De-tokenize). Nothing was generated."
                )
            return None
        detok = require_model(detok, "detokenizer", node=node)
        vit = require_model(vit, "visual_tokenizer", node=node) if vit is not None else None
        _rules(node, check_feature_width, agent.feature_dim, detok.feature_dim)
        steps, guidance = get("diffusion_steps", 30), get("guidance_scale", 7.5)
        render = render_options(detok, steps, guidance, "euler", seed, False, 0, 0)  # Generate Story's defaults
        check_render_values(
            node, detok, guidance_scale=render["guidance_scale"], width=render["width"], height=render["height"]
        )
        return cls(node, detok, vit, render, retry, glue.text_streamer(None))

    def encode(self, picture: torch.Tensor) -> torch.Tensor:
        """(1, T, D) visual-tokenizer features of a rendered picture."""
        return self.vit.loaded().encode_images(picture)

    def draw(self, agent: AgentModel, result) -> torch.Tensor:
        """The frame of the step ``result`` (IMAGE [1, H, W, 3]); with the retry, the best of up to N + 1 drawings."""
        frame = int(result.state.step)
        progress = glue.Progress(int(self.render["steps"]))

        def draw(seed: int, redraw: int) -> torch.Tensor:
            if redraw and self.stream is not None:
                self.stream(f"redraw {redraw} of at most {self.retry.max_redraws} (seed {seed})")
            on_step = (lambda s, _t: progress.set(s)) if redraw == 0 else None
            options = {**self.render, "seed": seed}
            return render_features(
                self.detok, result.features, frame_index=frame, on_step=on_step, node=self.node, **options
            )

        if self.retry is None:
            image = draw(self.render["seed"], 0)
        else:
            retry = StoryRetry(self.retry, self.encode, cast=result.state.cast)
            outcome = retry.draw(result.sentence, draw, self.render["seed"])
            image = outcome.picture
            if outcome.score is None:
                look = "the sentence names nobody on the cast sheet: nothing to check"
            else:
                look = f"look {outcome.score:.2f} (threshold {self.retry.threshold:.2f})"
            note = f"{look}; {retry.report.summary()}"
            logging.info("[SeedStory] %s: %s", self.node, note)
            if self.stream is not None:
                self.stream(note)
        agent.ensure_loaded()
        return image


def _context_features(node: str, agent: AgentModel, context_features) -> Optional[torch.Tensor]:
    """Story Step's optional ``context_features``: one image's features of the agent's width, or None."""
    if context_features is None:
        return None
    ctx = check_features(context_features, node=node, name="context_features", dim=agent.feature_dim)
    if ctx.shape[0] != 1:
        raise SeedStoryInputError(
            f"{node}: 'context_features' holds features of {ctx.shape[0]} images, but they replace the one "
            "previous image of this story. Encode a single picture (e.g. ImageFromBatch before ViT Tokenize)."
        )
    return ctx


class SeedStoryStoryStep:
    NODE_ID = "SeedStoryStoryStep"
    DISPLAY_NAME = "SeedStory Story Step"
    SEARCH_ALIASES = ["story", "comic", "storyboard", "next panel", "continue story", "branch"]
    DESCRIPTION = (
        "One story step: the agent writes the next sentence (or takes yours in visualization mode) and "
        "regresses the next image's features. Chain steps to continue the story (the attention-sink KV "
        "cache travels in the state, no re-encoding); feed one state to two steps for two independent "
        "branches (a cast sheet travels in the state). Render the features with De-tokenize, or connect a "
        "detokenizer for the image output; consistency_retry redraws that picture until the characters look like "
        "the story's cast sheet."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "step"
    RETURN_TYPES = (STATE, "STRING", FEATURES, "IMAGE")
    RETURN_NAMES = ("state", "sentence", "features", "image")
    OUTPUT_TOOLTIPS = (
        "The story state after this step (the input state is unchanged).",
        "The sentence of this step.",
        "Features of this step's image (1, 64, D), for De-tokenize.",
        "This step's frame [1, H, W, 3] rendered by the connected detokenizer (the kept drawing when the "
        "consistency retry is on); None without a detokenizer (connecting this output then needs one).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent": socket_input(AGENT, "The same agent that started the story."),
                "state": socket_input(STATE, "The story so far (Story Start, Story Step or Generate Story)."),
                "mode": choice_input(STORY_MODES, "generation", STEP_TOOLTIPS["mode"]),
                **decoding_inputs(),
            },
            "optional": {
                "text": text_input(STEP_TOOLTIPS["text"]),
                "context_features": socket_input(FEATURES, STEP_TOOLTIPS["context_features"]),
                **no_repeat_input(),
                "detokenizer": socket_input(DETOKENIZER, STEP_TOOLTIPS["detokenizer"]),
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, STEP_TOOLTIPS["visual_tokenizer"]),
                **{k: v for k, v in render_inputs().items() if k in ("diffusion_steps", "guidance_scale")},
                **retry_inputs("step"),
            },
            # PROMPT: is the image output linked (refused without a detokenizer)? No UNIQUE_ID: it would tie ComfyUI's
            # cache to the node id; the executing node's id comes from ComfyUI's execution context
            "hidden": {"prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        text=None,
        temperature=None,
        top_p=None,
        repetition_penalty=None,
        guidance_scale=None,
        retry_threshold=None,
    ):
        # naming the FLOAT inputs skips ComfyUI's own min/max check for them: check_widgets redoes it
        widgets = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
        widgets.update(guidance_scale=guidance_scale, retry_threshold=retry_threshold)
        return _validate_all(cls, {"text": (text, {"allow_empty": True})}, widgets)

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
        **picture,
    ):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        state = _check_state(state, node)
        text = check_text(text if text is not None else "", node=node, name="text", allow_empty=True)
        _text_length(node, agent, text, "text")
        _rules(node, check_mode, mode)
        if mode == "visualization" and not text.strip():
            raise SeedStoryInputError(
                f"{node}: visualization mode draws your sentence, but 'text' is empty. Type "
                "the sentence for this frame or switch mode to generation."
            )
        ctx = _context_features(node, agent, context_features)
        dec = make_decoding(
            decoding,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            max_sentence_tokens,
            seed,
            node,
            no_repeat_sentences,
        )
        frame = StepPicture.from_inputs(node, agent, state, seed, picture)  # the picture inputs: STEP_PICTURE_INPUTS
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
        image = frame.draw(agent, result) if frame is not None else None
        return (result.state, _one_line(result.sentence), _features_out(result.features), image)


# ---------------------------------------------------------------------------------------------- generate
#: The socket type of Generate Story's ``story`` output: the finished story as a redo needs it
#: (:class:`seedstory_core.redo.StoryRecord`), the input of SeedStory Redo Frame (nodes/redo.py).
STORY = "SEEDSTORY_STORY"

GENERATE_TOOLTIPS = {
    "start_image": "The first picture of the story: one image (a batch is refused; pick one with ImageFromBatch).",
    "story_steps": "How many new frames (sentence + image) to generate.",
    "mode": "generation = the agent writes the story (captions, if given, start each sentence); "
    "visualization = the agent draws your captions (one per line, one per step).",
    "captions": "One line per step. visualization: the sentences to draw (at least "
    "story_steps lines); generation: optional beginnings (empty line = free)." + LIMIT_TIP,
}


def render_inputs() -> dict:
    """Generate Story's de-tokenizer inputs (the same widgets as De-tokenize's)."""
    t = RENDER_TOOLTIPS
    return {
        "diffusion_steps": int_input(30, 1, 200, t["steps"]),
        "guidance_scale": float_input(7.5, 0.0, 30.0, 0.1, t["guidance_scale"]),
        "scheduler": choice_input(SCHEDULER_NAMES, "euler", t["scheduler"]),
        "width": int_input(0, 0, 4096, t["width"], step=8),
        "height": int_input(0, 0, 4096, t["height"], step=8),
        "same_noise": bool_input(False, t["same_noise"]),
    }


def render_options(detok: DetokenizerModel, steps, guidance_scale, scheduler, seed, same_noise, width, height) -> dict:
    """Generate Story's render inputs as :func:`nodes.render.render_features` keywords (size 0 = the model's)."""
    return dict(
        steps=int(steps),
        guidance_scale=float(guidance_scale),
        scheduler=scheduler,
        seed=int(seed),
        same_noise=bool(same_noise),
        width=int(width) or detok.native_size,
        height=int(height) or detok.native_size,
    )


class StoryFrames:
    """What Generate Story collects while the story loop runs: the sentences (shown on the node as they are
    written), the rendered frames ([1, H, W, 3] float each) and the progress over every frame's diffusion steps.

    :meth:`on_frame` is the loop's per-frame callback (:meth:`seedstory_core.story.StoryEngine.run`): it renders the
    frame's regressed features with the de-tokenizer (noise of (seed, frame)), then reloads the agent, which the
    render may have offloaded. With ``retry`` (:class:`seedstory_core.consistency.RetrySettings`) every frame goes
    through the consistency retry (:class:`seedstory_core.retry_render.StoryRetry`: the references are the story's
    cast sheet, else each character's first appearance); the progress bar counts the first drawing of each frame,
    redraws are shown as text, and the cost ends the node's text.
    """

    def __init__(
        self,
        node: str,
        agent,
        vit,
        detok: DetokenizerModel,
        render: dict,
        steps: int,
        stream=None,
        retry: Optional[RetrySettings] = None,
    ):
        self.node, self.agent, self.vit, self.detok = node, agent, vit, detok
        self.render = render  # render_features keyword arguments except features, frame_index, on_step, node
        self.stream = stream
        self.progress = glue.Progress(steps * int(render["steps"]))
        self.sentences: List[str] = []
        self.frames: List[torch.Tensor] = []
        self.results: list = []  # every step's StepResult (its state is the state before the next frame)
        self.settings = retry
        self.retry: Optional[StoryRetry] = None  # made by begin() when the retry is on
        self.retry_frames: list = []  # per generated frame: RetryReport.frame_entry (the story record keeps them)

    def begin(self, engine, opening_text: str, start_image: torch.Tensor, settings, cast=None) -> StoryState:
        """Start the story from the picture (encoded by the engine's visual tokenizer), its sentence and the cast
        sheet (None: none); the start picture, resized to the render size, is frame 0."""
        try:
            features = engine.visual_tokenizer.encode_images(start_image)
            state = engine.start(opening_text, features=features, settings=settings, cast=cast)
        except ValueError as err:
            raise SeedStoryInputError(f"{self.node}: {err}") from err
        if self.settings is not None:
            self.retry = StoryRetry(self.settings, self.encode, cast=state.cast)
            self.retry.observe(opening_text, state.last_features)  # the start picture: first appearances
        self.sentences.append(_one_line(opening_text))
        self.frames.append(resize_image(image_to_rgb(start_image), self.render["height"], self.render["width"]))
        self.show()
        return state

    def run(self, engine, state: StoryState, steps: int, texts: List[str], mode: str, decoding) -> StoryState:
        """The story loop (:meth:`seedstory_core.story.StoryEngine.run`), rendering every frame; Cancel stops it.

        Raises:
            SeedStoryInputError: a step refused its input (the message names the step).
        """
        glue.check_interrupted()
        try:
            state, _ = engine.run(
                state,
                steps,
                texts=texts,
                mode=mode,
                decoding=decoding,
                cancel=glue.cancel_callback,
                on_text=self.on_text if self.stream is not None else None,
                on_frame=self.on_frame,
            )
        except ValueError as err:
            raise SeedStoryInputError(f"{self.node}: step {len(self.sentences)}: {err}") from err
        if self.retry is not None:
            logging.info("[SeedStory] %s: %s", self.node, self.retry.report.summary())
            self.show(note=self.retry.report.summary())
        return state

    def show(self, partial: Optional[str] = None, note: Optional[str] = None) -> None:
        """Stream the sentences so far (and ``partial``, the sentence being written) to the node, ``note`` (the
        retry's) on a last line of its own."""
        if self.stream is None:
            return
        shown = list(self.sentences) + ([_one_line(partial)] if partial is not None else [])
        lines = [f"{i}. {s}" for i, s in enumerate(shown)] + ([note] if note else [])
        self.stream("\n".join(lines))

    def on_text(self, _frame: int, partial: str) -> None:
        self.show(partial)

    def on_frame(self, i: int, _total: int, result) -> None:
        self.results.append(result)
        self.sentences.append(_one_line(result.sentence))
        self.show()
        done = (i - 1) * int(self.render["steps"])

        def draw(seed: int, redraw: int) -> torch.Tensor:
            if redraw:  # redraws do not move the bar (it counts each frame's first drawing)
                self.show(note=f"frame {i}: redraw {redraw} of at most {self.settings.max_redraws}")
            return render_features(
                self.detok,
                result.features,
                frame_index=i,
                on_step=(lambda s, _t: self.progress.set(done + s)) if redraw == 0 else None,
                node=self.node,
                **{**self.render, "seed": seed},
            )

        if self.retry is None:
            image = draw(self.render["seed"], 0)
        else:
            outcome = self.retry.draw(result.sentence, draw, self.render["seed"])
            self.retry_frames.append(RetryReport.frame_entry(outcome))
            image = outcome.picture
        self.frames.append(image)
        self.agent.ensure_loaded(self.vit)
        return None  # the story keeps the regressed features: the retry changes only the picture

    def encode(self, picture: torch.Tensor) -> torch.Tensor:
        """(1, T, D) visual-tokenizer features of a rendered frame (the retry's look check)."""
        return self.vit.loaded().encode_images(picture)

    def images(self) -> torch.Tensor:
        return torch.cat([f.to(self.frames[0].device) for f in self.frames], dim=0)

    def outputs(self, start: StoryState, state: StoryState, mode: str, texts, decoding) -> tuple:
        """Generate Story's outputs: (frames IMAGE, sentences one per line, final state, StoryRecord)."""
        images = self.images()
        frames = images.split(1)  # views of the output: the record adds no copy of the pictures
        render = self.render
        record = StoryRecord.from_run(
            start,
            self.results,
            frames,
            mode=mode,
            texts=texts,
            decoding=decoding,
            render=render,
            retry=self.settings,
            retry_frames=self.retry_frames if self.retry is not None else (),
        )
        return (images, "\n".join(self.sentences), state, record)


class SeedStoryGenerateStory:
    NODE_ID = "SeedStoryGenerateStory"
    DISPLAY_NAME = "SeedStory Generate Story"
    SEARCH_ALIASES = [
        "story",
        "comic",
        "storyboard",
        "storybook",
        "picture book",
        "illustrated story",
        "narrative",
        "panels",
    ]
    DESCRIPTION = (
        "The whole story in one node: from a start picture and its sentence, the agent writes N more "
        "sentences and images (each new sentence appears on the node as it is written) and the "
        "de-tokenizer renders every frame. Outputs the frames (start + N), the sentences (one per line) "
        "and the final state (continue it with Story Step). Cancel stops it cleanly. The story output "
        "lets SeedStory Redo Frame redo one frame without re-running the story. An optional cast sheet (Story "
        "Cast) is pinned at the start of the context; consistency_retry redraws a frame whose characters do not "
        "look like their references (the cast sheet, else their first appearance) and reports the cost on the node."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "generate"
    RETURN_TYPES = ("IMAGE", "STRING", STATE, STORY)
    RETURN_NAMES = ("images", "sentences", "state", "story")
    OUTPUT_TOOLTIPS = (
        "Frames: the start image (resized to the render size) followed by the N generated frames.",
        "The opening sentence and the N generated sentences, one per line.",
        "The final story state.",
        "The finished story for SeedStory Redo Frame: the state before every frame, the sentences, the frames and "
        "the settings (redo one frame without re-running the story).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        t = GENERATE_TOOLTIPS
        return {
            "required": {
                "agent": socket_input(AGENT, "The story agent."),
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, "Encodes the start image."),
                "detokenizer": socket_input(DETOKENIZER, "Renders every frame."),
                "start_image": socket_input("IMAGE", t["start_image"]),
                **opening_text_input(),
                "story_steps": int_input(4, 1, 200, t["story_steps"]),
                "mode": choice_input(STORY_MODES, "generation", t["mode"]),
                **decoding_inputs(default_max_tokens=100),
                **render_inputs(),
            },
            "optional": {
                "captions": text_input(t["captions"]),
                "settings": socket_input(SETTINGS, "Cache policy and window (default: multimodal sink, W=8)."),
                **no_repeat_input(),
                "cast": socket_input(CAST, CAST_INPUT_TOOLTIP),
                **retry_inputs("generate"),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        opening_text=None,
        captions=None,
        temperature=None,
        top_p=None,
        repetition_penalty=None,
        guidance_scale=None,
        width=None,
        height=None,
        retry_threshold=None,
    ):
        # naming the FLOAT and size inputs skips ComfyUI's own min/max check for them: check_widgets redoes it
        texts = {"opening_text": (opening_text, {}), "captions": (captions, {"allow_empty": True, "lines": True})}
        widgets = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
        widgets.update(guidance_scale=guidance_scale, width=width, height=height, retry_threshold=retry_threshold)
        return _validate_all(cls, texts, widgets)

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
        cast=None,
        consistency_retry=0,
        retry_threshold=DEFAULT_RETRY_THRESHOLD,
        unique_id=None,
    ):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        detok = require_model(detokenizer, "detokenizer", node=node)
        img = _one_start_image(node, start_image)
        text = check_text(opening_text, node=node, name="opening_text")
        story_settings = check_settings(settings, node)
        cast = check_cast(node, cast, agent.feature_dim)
        retry = _retry(node, consistency_retry, retry_threshold)
        n = int(story_steps)
        run = _check_run(node, agent, detok, text, n, mode, captions)
        dec = make_decoding(
            decoding,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            max_sentence_tokens,
            seed,
            node,
            no_repeat_sentences,
        )
        render = render_options(detok, diffusion_steps, guidance_scale, scheduler, seed, same_noise, width, height)
        check_render_values(node, detok, guidance_scale=guidance_scale, width=render["width"], height=render["height"])
        story = StoryFrames(node, agent, vit, detok, render, n, stream=glue.text_streamer(unique_id), retry=retry)
        engine = agent.engine(vit, policy=story_settings.policy)
        start = story.begin(engine, text, img, story_settings, cast)
        state = story.run(engine, start, n, run.texts, mode, dec)
        return story.outputs(start, state, mode, run.texts, dec)


def _check_run(node: str, agent: AgentModel, detok: DetokenizerModel, text: str, steps: int, mode, captions):
    """The model's rules for Generate Story's run (:func:`seedstory_core.rules.check_story_run`): the opening text's
    and every caption line's length, the caption count in visualization mode, the de-tokenizer's feature width."""
    lines = str(captions or "").splitlines()
    return _rules(
        node,
        check_story_run,
        agent.tokenizer,
        agent.config,
        opening_text=text,
        steps=steps,
        mode=mode,
        captions=lines,
        detokenizer_width=detok.feature_dim,
    )


def _one_start_image(node: str, start_image) -> torch.Tensor:
    """Generate Story's start picture: exactly one IMAGE."""
    img = check_image(start_image, node=node, name="start_image")
    if img.shape[0] != 1:
        raise SeedStoryInputError(
            f"{node}: 'start_image' is a batch of {img.shape[0]} images, but Generate Story tells one story from "
            "one start picture (its state output carries one story). Pick the picture with ComfyUI's "
            "ImageFromBatch node (batch_index, length 1), or queue one prompt per picture (seedstory-batch does "
            "that from a JSONL file). Nothing was generated."
        )
    return img
