"""``python -m seedstory_core.tell``: tell a story from a picture and a sentence, without ComfyUI.

    python -m seedstory_core.tell --model models/seedstory-tiny --image start.png \
        --text "Max and Zoe are at the beach." --frames 4 --out my_story

Loads a model folder (a :class:`~seedstory_core.bundle.SeedStoryBundle`), runs the story loop
(:meth:`seedstory_core.story.StoryEngine.run`), renders every frame with the de-tokenizer and writes a storybook
(:func:`seedstory_core.storybook.write_storybook`) to ``--out``: ``index.html``, ``story.json`` and one PNG per
frame. ``--captions FILE`` gives one line per frame: the sentences to draw (``--mode visualization``) or the
beginnings of the sentences (generation; an empty line leaves a sentence free). Prints the sentences as they are
written and, last, the path of ``index.html``. Exit status 2 with a message on bad input.

Decoding defaults are the pack's (greedy, repetition penalty :data:`~seedstory_core.story.DEFAULT_REPETITION_PENALTY`,
no sentence copied from earlier in the story; ``--allow-repeats`` turns that rule off);
the cache policy defaults to the pack's default (:func:`~seedstory_core.story.default_policy`). The device is the
first CUDA device when there is one, else the CPU (``--device`` chooses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from PIL import Image

from .bundle import SeedStoryBundle
from .rules import STORY_MODES, check_story_run, story_texts
from .story import (
    DEFAULT_MAX_SINK_IMAGES,
    DEFAULT_REPETITION_PENALTY,
    POLICY_CHOICES,
    DecodingSettings,
    StorySettings,
)
from .storybook import write_storybook


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m seedstory_core.tell", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model folder (e.g. models/seedstory-tiny)")
    p.add_argument("--image", required=True, help="the start picture (PNG/JPEG/WebP)")
    p.add_argument("--text", required=True, help="the opening sentence (what the start picture shows)")
    p.add_argument("--frames", type=int, default=4, help="frames to add after the start picture (default 4)")
    p.add_argument("--out", required=True, help="storybook folder to write (created; files in it are replaced)")
    p.add_argument("--title", default="A SEED-Story story", help="storybook title")
    p.add_argument(
        "--mode",
        choices=STORY_MODES,
        default="generation",
        help="generation: the agent writes the sentences; visualization: it draws --captions",
    )
    p.add_argument("--captions", help="text file, one line per frame (see above)")
    p.add_argument("--policy", choices=POLICY_CHOICES, default=POLICY_CHOICES[0], help="cache policy")
    p.add_argument("--window-images", type=int, default=8, help="W: images kept in full (default 8)")
    p.add_argument(
        "--max-sink-images",
        type=int,
        default=DEFAULT_MAX_SINK_IMAGES,
        help=f"multimodal sink: evicted images whose sink tokens are kept (default {DEFAULT_MAX_SINK_IMAGES}; "
        "0 = all, the paper's rule)",
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=DEFAULT_REPETITION_PENALTY)
    p.add_argument(
        "--allow-repeats",
        action="store_true",
        help="turn off the pack's rule that a sentence never copies an earlier one of the story (official decoding)",
    )
    p.add_argument("--max-sentence-tokens", type=int, default=100)
    p.add_argument("--diffusion-steps", type=int, default=30, help="de-tokenizer denoising steps per frame")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0, help="sampling seed; frame i is rendered with noise (seed, i)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return p


def _read_captions(path: Optional[str]) -> Optional[List[str]]:
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]


def tell(args: argparse.Namespace, *, log=print) -> Path:
    """Run the command for parsed ``args``; returns the storybook's ``index.html``.

    Raises:
        FileNotFoundError: a missing model folder, picture or captions file.
        ValueError: bad text, settings or captions: a model rule (:func:`seedstory_core.rules.check_story_run`:
            sentence length, fewer captions than frames in visualization mode), checked before the model runs.
    """
    captions = _read_captions(args.captions)
    story_texts(captions, args.frames, args.mode, captions_name="--captions", steps_name="--frames")  # before loading
    picture = Image.open(args.image)
    picture.load()
    picture = picture.convert("RGB")
    settings = StorySettings.for_choice(
        args.policy, window_images=args.window_images, max_sink_images=args.max_sink_images or None
    )
    decoding = DecodingSettings(
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        max_sentence_tokens=args.max_sentence_tokens,
        no_repeat_sentences=not args.allow_repeats,
    )
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = SeedStoryBundle.load(args.model, device=device)
    run = check_story_run(
        bundle.tokenizer,
        bundle.config.agent,
        opening_text=args.text,
        steps=args.frames,
        mode=args.mode,
        captions=captions,
        opening_name="--text",
        captions_name="--captions",
        steps_name="--frames",
    )
    engine = bundle.engine(settings.policy)
    state = engine.start(args.text, image=picture, settings=settings)
    log(f"0. {state.sentences[0]}")
    size = int(bundle.config.detokenizer.default_size)
    frames = [picture.resize((size, size))]

    def on_frame(i, _total, result):
        log(f"{i}. {result.sentence}")
        frames.append(
            bundle.render(
                result.features,
                frame_index=i,
                steps=args.diffusion_steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            )
        )
        return None

    state, _ = engine.run(state, args.frames, texts=run.texts, mode=args.mode, decoding=decoding, on_frame=on_frame)
    book = write_storybook(
        args.out,
        frames,
        list(state.sentences),
        title=args.title,
        state={"step": state.step, "policy": settings.policy.kind, "settings": settings.to_dict()},
    )
    return book.index


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        index = tell(args)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"python -m seedstory_core.tell: {err}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
