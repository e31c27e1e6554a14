"""Story nodes: ViT Tokenize, Story Start, Story Step, Generate Story.

Each node checks its inputs, asks the core library (:mod:`seedstory_core.rules`, :mod:`seedstory_core.story`) to do
the work, and turns the library's errors into messages that name the node; the model's rules (sentence length,
caption count, feature width) live in :mod:`seedstory_core.rules`. The Story Settings node and the decoding inputs
are in :mod:`nodes.settings`.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from seedstory_core.detokenizer import SCHEDULER_NAMES
from seedstory_core.preprocess import RESIZE_MODES
from seedstory_core.rules import (
    STORY_MODES,
    StoryRuleError,
    check_clean_text,
    check_mode,
    check_story_run,
    check_text_chars,
    check_text_length,
)
from seedstory_core.redo import StoryRecord
from seedstory_core.story import StoryState

from . import comfy_glue as glue
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
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, opening_text=None):
        return _validate_text(cls.DISPLAY_NAME, "opening_text", opening_text)

    def start(
        self, agent, opening_text, batch_index=0, features=None, image=None, visual_tokenizer=None, settings=None
    ):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        text = _text_length(node, agent, check_text(opening_text, node=node, name="opening_text"), "opening_text")
        story_settings = check_settings(settings, node)
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
STEP_TOOLTIPS = {
    "mode": "generation = the agent writes the sentence (your text, if any, is its beginning); "
    "visualization = your text is the sentence and the agent only draws it.",
    "text": "Your text for this step: the start of the sentence (generation) or "
    "the whole sentence (visualization, required). Empty = none." + LIMIT_TIP,
    "context_features": "Optional: features to store for the previous image instead of its regressed "
    "features (e.g. ViT Tokenize of the rendered frame).",
}


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
                "agent": socket_input(AGENT, "The same agent that started the story."),
                "state": socket_input(STATE, "The story so far (Story Start, Story Step or Generate Story)."),
                "mode": choice_input(STORY_MODES, "generation", STEP_TOOLTIPS["mode"]),
                **decoding_inputs(),
            },
            "optional": {
                "text": text_input(STEP_TOOLTIPS["text"]),
                "context_features": socket_input(FEATURES, STEP_TOOLTIPS["context_features"]),
                **no_repeat_input(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text=None, temperature=None, top_p=None, repetition_penalty=None):
        # naming the FLOAT inputs skips ComfyUI's own min/max check for them: check_widgets redoes it
        widgets = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
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
    render may have offloaded.
    """

    def __init__(self, node: str, agent, vit, detok: DetokenizerModel, render: dict, steps: int, stream=None):
        self.node, self.agent, self.vit, self.detok = node, agent, vit, detok
        self.render = render  # render_features keyword arguments except features, frame_index, on_step, node
        self.stream = stream
        self.progress = glue.Progress(steps * int(render["steps"]))
        self.sentences: List[str] = []
        self.frames: List[torch.Tensor] = []
        self.results: list = []  # every step's StepResult (its state is the state before the next frame)

    def begin(self, engine, opening_text: str, start_image: torch.Tensor, settings) -> StoryState:
        """Start the story from the picture (encoded by the engine's visual tokenizer) and its sentence; the start
        picture, resized to the render size, is frame 0."""
        try:
            features = engine.visual_tokenizer.encode_images(start_image)
            state = engine.start(opening_text, features=features, settings=settings)
        except ValueError as err:
            raise SeedStoryInputError(f"{self.node}: {err}") from err
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
        return state

    def show(self, partial: Optional[str] = None) -> None:
        if self.stream is None:
            return
        shown = list(self.sentences) + ([_one_line(partial)] if partial is not None else [])
        self.stream("\n".join(f"{i}. {s}" for i, s in enumerate(shown)))

    def on_text(self, _frame: int, partial: str) -> None:
        self.show(partial)

    def on_frame(self, i: int, _total: int, result) -> None:
        self.results.append(result)
        self.sentences.append(_one_line(result.sentence))
        self.show()
        done = (i - 1) * int(self.render["steps"])
        image = render_features(
            self.detok,
            result.features,
            frame_index=i,
            on_step=lambda s, _t: self.progress.set(done + s),
            node=self.node,
            **self.render,
        )
        self.frames.append(image)
        self.agent.ensure_loaded(self.vit)
        return None

    def images(self) -> torch.Tensor:
        return torch.cat([f.to(self.frames[0].device) for f in self.frames], dim=0)


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
        "lets SeedStory Redo Frame redo one frame without re-running the story."
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
    ):
        # naming the FLOAT and size inputs skips ComfyUI's own min/max check for them: check_widgets redoes it
        texts = {"opening_text": (opening_text, {}), "captions": (captions, {"allow_empty": True, "lines": True})}
        widgets = dict(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
        widgets.update(guidance_scale=guidance_scale, width=width, height=height)
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
        unique_id=None,
    ):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        detok = require_model(detokenizer, "detokenizer", node=node)
        img = _one_start_image(node, start_image)
        text = check_text(opening_text, node=node, name="opening_text")
        story_settings = check_settings(settings, node)
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
        story = StoryFrames(node, agent, vit, detok, render, n, stream=glue.text_streamer(unique_id))
        engine = agent.engine(vit, policy=story_settings.policy)
        start = story.begin(engine, text, img, story_settings)
        state = story.run(engine, start, n, run.texts, mode, dec)
        images = story.images()
        frames = images.split(1)  # views of the output: the record adds no copy of the pictures
        record = StoryRecord.from_run(
            start, story.results, frames, mode=mode, texts=run.texts, decoding=dec, render=render
        )
        return (images, "\n".join(story.sentences), state, record)


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
