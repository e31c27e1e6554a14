"""Redo Frame: rebuild one frame of a finished story (Generate Story's ``story`` output) without re-running it.

The node checks its inputs and calls :func:`seedstory_core.redo.redo_frame`, which makes frame k again from the
state before it and then the frames after it (sentences kept, or the story continued); the frames before k are the
record's own. Rendering is Generate Story's (:func:`nodes.render.render_features`, the record's render options with
the new seed). A story drawn with the consistency retry is redone with the same retry (its references rebuilt from the
frames before k), which needs the ``visual_tokenizer`` input; the retry's cost is shown on the node and logged. The
storybook page's "redo" button (nodes/assets/redo.js) queues this node in place of the story's frames.
"""

from __future__ import annotations

import logging

import torch

from seedstory_core.redo import REDO_AFTER, StoryRecord, redo_frame
from seedstory_core.rules import check_feature_width

from . import comfy_glue as glue
from .inputs import choice_input, int_input, socket_input, text_input
from .models import AGENT, DETOKENIZER, VISUAL_TOKENIZER, SeedStoryInputError, check_text, require, require_model
from .render import render_features
from .settings import MAX_SEED
from .story import LIMIT_TIP, STORY, _one_line, _rules, _text_length, _validate_text

REDO_TOOLTIPS = {
    "story": "The story output of SeedStory Generate Story (or of another Redo Frame).",
    "frame": "The frame to redo: 1 is the first generated frame (frame 0 is the start picture). Frames before it "
    "stay exactly as they were.",
    "seed": "The new seed: the frame's sampling (with decoding = sample) and the render noise of this frame and the "
    "ones after it. With greedy decoding and no new sentence only the picture changes.",
    "after": "The frames after the redone one: keep_sentences = re-drawn with their sentences kept (visualization "
    "mode); continue = the story goes on from the new frame as it would have (its mode and captions).",
    "sentence": "Optional: a new sentence for the frame, drawn in visualization mode (empty = the frame is written "
    "again as before)." + LIMIT_TIP,
    "visual_tokenizer": "Optional: needed when the story was drawn with the consistency retry (Generate Story's "
    "consistency_retry > 0): the redone frames go through the same retry, which tokenizes each drawing to compare "
    "the characters with their references.",
}


class SeedStoryRedoFrame:
    NODE_ID = "SeedStoryRedoFrame"
    DISPLAY_NAME = "SeedStory Redo Frame"
    SEARCH_ALIASES = ["redo", "reroll", "regenerate frame", "retry frame", "fix frame", "edit story"]
    DESCRIPTION = (
        "Redo one frame of a finished story: frame k is made again from the story state before it with a new "
        "seed (and optionally a new sentence), then the frames after it are re-drawn with their sentences kept, "
        "or the story continues from the new frame. The frames before k stay bit-identical, and only frame k and "
        "the ones after it cost time. Outputs the frames, the sentences and the new story (redo again)."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "redo"
    RETURN_TYPES = ("IMAGE", "STRING", STORY)
    RETURN_NAMES = ("images", "sentences", "story")
    OUTPUT_TOOLTIPS = (
        "Frames: the story's frames, frame k and the ones after it new.",
        "The sentences, one per line.",
        "The new story (connect it to another Redo Frame to redo more).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        t = REDO_TOOLTIPS
        return {
            "required": {
                "agent": socket_input(AGENT, "The story agent that wrote the story."),
                "detokenizer": socket_input(DETOKENIZER, "Renders the new frames."),
                "story": socket_input(STORY, t["story"]),
                "frame": int_input(1, 1, 200, t["frame"]),
                "seed": int_input(1, 0, MAX_SEED, t["seed"], control_after_generate=True),
                "after": choice_input(REDO_AFTER, REDO_AFTER[0], t["after"]),
            },
            "optional": {
                "sentence": text_input(t["sentence"]),
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, t["visual_tokenizer"]),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, sentence=None):
        """Refuse a new sentence that is surely over the token limit or holds control characters before anything is
        queued (the exact token count is checked when the node runs)."""
        return _validate_text(cls.DISPLAY_NAME, "sentence", sentence, allow_empty=True)

    def redo(self, agent, detokenizer, story, frame=1, seed=1, after=REDO_AFTER[0], sentence="", visual_tokenizer=None):
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        detok = require_model(detokenizer, "detokenizer", node=node)
        record = require(
            story, StoryRecord, node=node, name="story", socket=STORY, hint="story output of SeedStory Generate Story"
        )
        sentence = check_text(sentence if sentence is not None else "", node=node, name="sentence", allow_empty=True)
        if sentence.strip():
            _text_length(node, agent, sentence.strip(), "sentence")
        _rules(node, check_feature_width, agent.feature_dim, detok.feature_dim)
        vit = _retry_tokenizer(node, record, visual_tokenizer)
        options = {**record.render, "seed": int(seed)}
        total = max(1, record.steps - int(frame) + 1) * int(options.get("steps", 1))
        progress = glue.Progress(total)

        drawn = set()  # frames drawn once already: their redraws do not move the bar

        def render(i: int, result, seed=None) -> torch.Tensor:
            done = (i - int(frame)) * int(options["steps"])
            first = i not in drawn
            drawn.add(i)
            image = render_features(
                detok,
                result.features,
                frame_index=i,
                on_step=(lambda s, _t: progress.set(done + s)) if first else None,
                node=node,
                **{**options, "seed": int(options["seed"] if seed is None else seed)},
            )
            agent.ensure_loaded(vit)
            return image

        def encode(picture: torch.Tensor) -> torch.Tensor:
            return vit.loaded().encode_images(picture)

        engine = agent.engine(policy=record.final_state.settings.policy)
        try:
            new = redo_frame(
                engine,
                record,
                int(frame),
                seed=int(seed),
                sentence=sentence,
                after=after,
                render=render,
                cancel=glue.cancel_callback,
                encode=encode if vit is not None else None,
            )
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: {err}") from err
        report = new.retry_report()
        if vit is not None and report is not None:
            line = f"frames {int(frame)}-{new.steps} redone; whole story {report.summary()}"
            logging.info("[SeedStory] %s: %s", node, line)
            stream = glue.text_streamer(None)
            if stream is not None:
                stream(line)
        images = torch.cat([f.to(new.frames[0].device) for f in new.frames], dim=0)
        return (images, "\n".join(_one_line(s) for s in new.sentences), new)


def _retry_tokenizer(node: str, record: StoryRecord, visual_tokenizer):
    """The visual tokenizer the redo's consistency retry uses: None when the story was drawn without the retry (the
    input is ignored then). Raises SeedStoryInputError when the story was drawn with the retry and none is
    connected."""
    if record.retry is None:
        return None
    if visual_tokenizer is None:
        raise SeedStoryInputError(
            f"{node}: this story was drawn with the consistency retry (up to {record.retry.max_redraws} redraws per "
            f"frame, threshold {record.retry.threshold:.2f}), and a redo draws its frames with the same retry, which "
            "tokenizes each drawing. Connect the visual_tokenizer output of the story's loader to Redo Frame's "
            "visual_tokenizer input. Nothing was redone; the story is unchanged."
        )
    return require_model(visual_tokenizer, "visual_tokenizer", node=node)
