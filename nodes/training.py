"""Training nodes: stage 3 (de-tokenizer adaptation to the agent's regressed features) inside ComfyUI.

The node reads a StoryStream folder (:func:`seedstory_core.data.storystream.find_jsonl`, ``parse_line``,
``image_candidates``) confined to ComfyUI's input folder (nodes/paths.py), trains with
:func:`training.stage3_adaptation.run_stage3` and saves the adapter where the De-tokenizer Loader lists it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
from pathlib import Path
from typing import List

import torch
from PIL import Image, UnidentifiedImageError

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.config import SeedStoryConfig
from seedstory_core.data.storystream import MIN_FRAMES, StoryStreamError, find_jsonl, image_candidates, parse_line

from ..training.stage3_adaptation import run_stage3
from . import comfy_glue as glue
from .inputs import float_input, int_input, line_input, socket_input
from .models import (
    AGENT,
    DETOKENIZER,
    VISUAL_TOKENIZER,
    AgentModel,
    DetokenizerModel,
    SeedStoryInputError,
    VisualTokenizerModel,
    require_model,
)
from .paths import check_relative, resolve_inside

CATEGORY = "SEED-Story/training"
DATA_COMMAND = "python -m seedstory_core.data.mini --seed 0 --stories 8 --out ComfyUI/input/storystream_mini"
#: the official stage-3 schedule: 500 warmup steps of 1600 (scaled to the node's step count).
OFFICIAL_WARMUP, OFFICIAL_STEPS = 500, 1600
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$")

INPUT_FOLDER = "ComfyUI's input folder"
DATA_EXAMPLE = "storystream_mini"
IMAGE_EXAMPLE = "images/story_0/00.png"
#: Errors PIL raises for a file that is not a readable image (UnidentifiedImageError is an OSError).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the input folder, '/'-separated (for messages)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:
        return str(path)


def resolve_data_folder(data_folder: str, *, node: str) -> Path:
    """The StoryStream folder (or .jsonl file) named by ``data_folder``, inside ComfyUI's input folder.

    ``data_folder`` is relative to ComfyUI's input folder: absolute paths, ``~``, ``..`` and symbolic links that
    lead outside the input folder are refused (:func:`nodes.paths.resolve_inside`).

    Returns:
        pathlib.Path: the resolved folder (holding at least one non-empty .jsonl) or .jsonl file.

    Raises:
        SeedStoryInputError: empty, not confined to the input folder, not found, or no (non-empty) .jsonl.
        RuntimeError: outside ComfyUI.
    """
    if not isinstance(data_folder, str) or not data_folder.strip():
        raise SeedStoryInputError(
            f"{node}: input 'data_folder' is empty. Give a StoryStream-format folder (a .jsonl of stories + their "
            f"images) inside ComfyUI's input folder, e.g. make one with: {DATA_COMMAND}"
        )
    root = glue.input_directory(node)
    try:
        path = resolve_inside(
            root, data_folder, node=node, what="data_folder", example=DATA_EXAMPLE, folder=INPUT_FOLDER
        )
    except SeedStoryInputError as err:
        raise SeedStoryInputError(
            f"{err} The node reads training data only from ComfyUI's input folder ({root}): "
            f"copy or move the data there."
        ) from None
    shown = _rel(path, root)
    if path.is_file() and path.suffix == ".jsonl":
        if path.stat().st_size == 0:
            raise SeedStoryInputError(
                f"{node}: the data file {shown} (in ComfyUI's input folder) is empty. Expected "
                f"one JSON story per line; create a small set with: {DATA_COMMAND}"
            )
        return path
    if not path.is_dir():
        raise SeedStoryInputError(
            f"{node}: data folder {data_folder!r} not found (looked at {path}; relative paths are inside ComfyUI's "
            f"input folder). Create a small StoryStream-mini set with: {DATA_COMMAND}"
        )
    jsonls = sorted(p for p in path.glob("*.jsonl") if p.stat().st_size > 0)
    if not jsonls:
        raise SeedStoryInputError(
            f"{node}: data folder {shown} holds no (non-empty) .jsonl of stories. Expected the StoryStream layout "
            f"(chunks10.jsonl or stories.jsonl + images/); create one with: {DATA_COMMAND}"
        )
    return path


def _confined_image(root: Path, jsonl: Path, item, where: str, node: str) -> Path:
    """The image ``item`` of a record (relative to the .jsonl's folder or its images/ folder, see
    :func:`seedstory_core.data.storystream.image_candidates`), resolved and confined to the input folder."""
    what = f"image path in {where}"
    check_relative(item, node=node, what=what, example=IMAGE_EXAMPLE, folder=INPUT_FOLDER)
    candidates = image_candidates(jsonl.parent, item)
    for cand in candidates:
        if os.path.lexists(cand):
            found = resolve_inside(
                root, _rel(cand, root), node=node, what=what, example=IMAGE_EXAMPLE, folder=INPUT_FOLDER
            )
            if found.is_file():
                return found
    raise SeedStoryInputError(
        f"{node}: image {item!r} listed in {where} not found (looked for "
        f"{' and '.join(_rel(c, root) for c in candidates)} in ComfyUI's input folder). Expected "
        f"image paths relative to the .jsonl's folder or its images/ folder; add the image or fix "
        f"the path."
    )


def _verify_image(found: Path, root: Path, where: str, jsonl_rel: str, node: str) -> None:
    """Open ``found`` with PIL's ``verify()``; a file that is not a readable image is refused, named relative to the
    input folder."""
    try:
        with Image.open(found) as im:
            im.verify()
    except (UnidentifiedImageError, *_IMAGE_ERRORS) as err:
        shown = _rel(found, root)
        detail = str(err).replace(str(found), shown)
        raise SeedStoryInputError(
            f"{node}: image {shown} (in ComfyUI's input folder, listed in {where}) is "
            f"not a readable image ({type(err).__name__}: {detail}). Expected a PNG/JPEG/WebP picture; "
            f"replace the file or remove its story from {jsonl_rel}."
        ) from None


def load_data_records(data: Path, *, node: str) -> List[dict]:
    """The training records of ``data`` with every image path confined to ComfyUI's input folder and checked.

    Reads the .jsonl the training picks (:func:`seedstory_core.data.storystream.find_jsonl`; the file itself when
    ``data`` is one) line by line (:func:`seedstory_core.data.storystream.parse_line`). Image paths are relative to
    the .jsonl's folder or its ``images/`` sub-folder (as the training reads them); absolute paths, ``~``, ``..``
    and symlinks leading outside the input folder are refused. Every image is opened and verified with PIL, so a
    corrupt file is reported before training.

    Returns:
        list[dict]: ``{"id", "images": [absolute resolved paths], "captions": [str]}`` for every story with at least
        :data:`~seedstory_core.data.storystream.MIN_FRAMES` frames (shorter ones are skipped, as the training does).

    Raises:
        SeedStoryInputError: malformed line (file and line number), an image path that is not confined, a missing
            or unreadable image (named relative to the input folder), or no usable story.
    """
    root = glue.input_directory(node)
    try:
        jsonl = data if data.is_file() else find_jsonl(data)
    except FileNotFoundError as err:
        raise SeedStoryInputError(
            f"{node}: {err}. Keep one story file in the folder (or name the .jsonl file in data_folder)."
        ) from None
    jsonl_rel = _rel(jsonl, root)
    records, checked = [], set()
    with open(jsonl, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            where = f"{jsonl_rel} line {lineno}"
            try:
                rec = parse_line(line, where=where)
            except StoryStreamError as err:
                raise SeedStoryInputError(
                    f"{node}: the training data is malformed: {err}. Expected one JSON object per line "
                    f'{{"images": [relative paths], "captions": [texts]}}; fix or remove that line.'
                ) from None
            if rec is None or len(rec["images"]) < MIN_FRAMES:
                continue
            images = []
            for item in rec["images"]:
                found = _confined_image(root, jsonl, item, where, node)
                if found not in checked:
                    _verify_image(found, root, where, jsonl_rel, node)
                    checked.add(found)
                images.append(str(found))
            records.append({"id": rec.get("id", len(records)), "images": images, "captions": list(rec["captions"])})
    if not records:
        raise SeedStoryInputError(
            f"{node}: {jsonl_rel} holds no story with at least 2 frames and as many captions. "
            f"Create a small StoryStream-mini set with: {DATA_COMMAND}"
        )
    return records


def _is_image_error(err: BaseException) -> bool:
    """True for errors PIL raises while decoding a damaged image (not for disk or memory errors)."""
    if isinstance(err, (UnidentifiedImageError, SyntaxError, struct.error, Image.DecompressionBombError)):
        return True
    text = str(err).lower()
    return isinstance(err, OSError) and any(
        k in text for k in ("image file", "broken data stream", "truncated", "cannot identify", "decoder")
    )


def _find_undecodable(records: List[dict]):
    """The first image path of ``records`` that PIL cannot fully decode, or None (only run after a failure)."""
    for rec in records:
        for path in rec["images"]:
            try:
                with Image.open(path) as im:
                    im.load()
            except Exception:  # noqa: BLE001 - any decoding failure marks the culprit
                return path
    return None


def _check_output_name(name: str, *, node: str) -> str:
    name = (name or "").strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or not _NAME_OK.match(name) or ".." in name:
        raise SeedStoryInputError(
            f"{node}: input 'output_name' must be a plain file name (letters, digits, space, '.', '_', '-'), found "
            f"{name!r}. The adapter is saved as models/seed_story/detokenizer/<output_name>.safetensors."
        )
    return name


def adapter_directory() -> Path:
    """models/seed_story/detokenizer (the first folder registered for the de-tokenizer loader)."""
    dirs = glue.folder_dirs("seed_story_detokenizer")
    if not dirs:
        raise RuntimeError(
            "ComfyUI's folder_paths is not available: SeedStory Adapt De-tokenizer must run inside ComfyUI."
        )
    return Path(dirs[0])


def _run_directory(output_name: str) -> Path:
    """Where the run's checkpoints and train_log.csv go: ComfyUI's temp folder (cleared when ComfyUI starts)."""
    return Path(glue.temp_directory()) / "seedstory_adapt" / output_name


def _training_bundle(agent: AgentModel, vit: VisualTokenizerModel, detok: DetokenizerModel, node: str):
    """The loaded models as one in-memory SeedStoryBundle for stage 3: the agent and visual tokenizer as they are
    (frozen, never changed in place), and an fp32 COPY of the de-tokenizer, which stage 3 trains in place (the input
    de-tokenizer stays as it was; trainable weights are kept in fp32 as in the training stages).

    Raises:
        SeedStoryInputError: the three models do not belong to one model (their configurations disagree).
    """
    config = SeedStoryConfig(
        name=f"comfyui ({detok.source})", visual_tokenizer=vit.config, agent=agent.config, detokenizer=detok.config
    )
    try:
        config.validate()
    except ValueError as err:
        raise SeedStoryInputError(
            f"{node}: the agent, visual tokenizer and de-tokenizer do not belong to one model "
            f"({err}). Connect the three outputs of the same model (e.g. all from the Tiny Model Loader)."
        ) from err
    return SeedStoryBundle(
        config,
        agent.tokenizer,
        vit.module,
        agent.module,
        _trainable_copy(detok.module),
        uncond_features=detok.uncond_features,
    )


def _trainable_copy(module: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of ``module`` that can be trained. Call it outside inference mode: ComfyUI loads models under
    ``torch.inference_mode()``, an inference tensor can never require grad, and a deep copy made outside inference
    mode holds normal tensors."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("_trainable_copy must be called outside torch.inference_mode()")
    return copy.deepcopy(module).float()


def _like_input(trained: torch.nn.Module, original: torch.nn.Module) -> torch.nn.Module:
    """The trained copy with every parameter back in the input de-tokenizer's dtype (it trained in fp32)."""
    dtypes = {name: p.dtype for name, p in original.named_parameters()}
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])
    return trained.requires_grad_(False)


def _save_adapter(module: torch.nn.Module, name: str) -> Path:
    """Write ``models/seed_story/detokenizer/<name>.safetensors`` atomically (a temporary file, then a rename)."""
    target = adapter_directory() / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_name(f".{name}.tmp.safetensors")
    module.save_adapter(tmp_target)
    os.replace(tmp_target, target)
    return target


def _undecodable_image_error(node: str, records: List[dict], err: BaseException) -> SeedStoryInputError:
    """The message for an image that passed PIL's verify() but failed to decode during training."""
    culprit = _find_undecodable(records)
    named = (
        f"image {_rel(Path(culprit), glue.input_directory(node))} (in ComfyUI's input folder)"
        if culprit
        else "an image of the training data"
    )
    return SeedStoryInputError(
        f"{node}: {named} could not be decoded during training ({type(err).__name__}: {err}). "
        f"Expected complete PNG/JPEG/WebP pictures; re-export the damaged image (e.g. a truncated "
        f"download) or remove its story from the .jsonl."
    )


def _adapted_model(detok: DetokenizerModel, module: torch.nn.Module, source: str) -> DetokenizerModel:
    """The adapted de-tokenizer socket value: the trained module on the input de-tokenizer's devices."""
    if detok.patcher is not None:
        load_device, offload_device = detok.patcher.load_device, detok.patcher.offload_device
    else:
        load_device = offload_device = torch.device("cpu")
    return DetokenizerModel.wrap(
        module.eval(), detok.config, detok.uncond_features, source, load_device, offload_device
    )


def _summary(metrics: dict, data: Path, target: Path) -> str:
    """The text the node shows after training: steps, first and final loss, where the adapter was saved."""
    loss = metrics.get("loss")
    first = metrics["losses"][0] if metrics.get("losses") else None
    return (
        f"adapted for {metrics['steps_run']} steps on {data.name}: final loss {loss:.4f}"
        + (f" (first {first:.4f})" if first is not None else "")
        + f"\nsaved {target}"
    )


ADAPT_TOOLTIPS = {
    "agent": "The trained story agent (stage 2); frozen, it gives the regressed image "
    "features the de-tokenizer learns to render.",
    "visual_tokenizer": "The visual tokenizer of the same model (frozen; encodes the story frames for the agent).",
    "detokenizer": "The de-tokenizer to adapt (stage 1 result); copied, the input is never changed.",
    "data_folder": "StoryStream-format training data inside ComfyUI's input folder: a folder with "
    "chunks10.jsonl / stories.jsonl (or a single .jsonl) and its images, or a .jsonl file, "
    "given relative to the input folder. Only the input folder is read: absolute paths, '~', "
    "'..' and symbolic links leading outside it are refused, also for the image paths in the "
    ".jsonl (relative to its folder or its images/ folder). Every image is checked before "
    "training. Make a small set with: " + DATA_COMMAND,
    "steps": "Optimizer steps (official 1600; a few are enough to try the tiny model). "
    "Warmup and cosine decay follow the official schedule scaled to this count.",
    "learning_rate": "AdamW learning rate (official 1e-4, weight decay 0.03).",
    "batch_size": "Story samples per optimizer step (official: 4 per GPU x 4 gradient "
    "accumulation; larger needs more memory).",
    "seed": "Seed of the data order and the diffusion noise (same seed + data = same run).",
    "output_name": "File name of the adapter in models/seed_story/detokenizer "
    "(.safetensors is added; an existing file of that name is replaced).",
}


class SeedStoryAdaptDetokenizer:
    NODE_ID = "SeedStoryAdaptDetokenizer"
    DISPLAY_NAME = "SeedStory Adapt De-tokenizer"
    SEARCH_ALIASES = ["train", "fine-tune", "finetune", "training", "adapt"]
    DESCRIPTION = (
        "Stage 3 of SEED-Story training inside ComfyUI: adapts the de-tokenizer (resampler + UNet "
        "to_k/to_v) to the image features the frozen agent REGRESSES, so frames rendered from story "
        "features look like the training pictures. Trains on a StoryStream-format folder in ComfyUI's "
        "input folder (a .jsonl of stories + images; nothing outside the input folder is read; make a "
        "small one with " + DATA_COMMAND + "), shows a progress bar over the "
        "steps, stops cleanly on Cancel (a resumable checkpoint stays in ComfyUI's temp folder), saves "
        "the adapter to models/seed_story/detokenizer/<output_name>.safetensors (listed by the "
        "De-tokenizer Loader) and outputs the adapted de-tokenizer. The input models are not changed."
    )
    CATEGORY = CATEGORY
    FUNCTION = "adapt"
    OUTPUT_NODE = True
    RETURN_TYPES = (DETOKENIZER, "STRING")
    RETURN_NAMES = ("detokenizer", "adapter_path")
    OUTPUT_TOOLTIPS = (
        "The adapted de-tokenizer (a copy; the input one is unchanged), for De-tokenize / Generate Story.",
        "Absolute path of the saved adapter (.safetensors, resampler.* + unet.*to_k/to_v, the official layout).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        t = ADAPT_TOOLTIPS
        return {
            "required": {
                "agent": socket_input(AGENT, t["agent"]),
                "visual_tokenizer": socket_input(VISUAL_TOKENIZER, t["visual_tokenizer"]),
                "detokenizer": socket_input(DETOKENIZER, t["detokenizer"]),
                "data_folder": line_input(DATA_EXAMPLE, t["data_folder"]),
                "steps": int_input(20, 1, 100000, t["steps"]),
                "learning_rate": float_input(1e-4, 0.0, 1.0, 0.00001, t["learning_rate"]),
                "batch_size": int_input(4, 1, 256, t["batch_size"]),
                "seed": int_input(0, 0, 2**31 - 1, t["seed"], control_after_generate=True),
                "output_name": line_input("seedstory_adapted", t["output_name"]),
            }
        }

    @classmethod
    def IS_CHANGED(cls, data_folder="", **_kwargs):
        # re-train when the data changes (same inputs otherwise = ComfyUI's cached result)
        try:
            path = resolve_data_folder(data_folder, node=cls.DISPLAY_NAME)
        except Exception:
            return ""
        files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
        return "|".join(f"{f}:{f.stat().st_mtime_ns}:{f.stat().st_size}" for f in files)

    def adapt(
        self,
        agent,
        visual_tokenizer,
        detokenizer,
        data_folder="storystream_mini",
        steps=20,
        learning_rate=1e-4,
        batch_size=4,
        seed=0,
        output_name="seedstory_adapted",
    ):
        """Run stage 3 on ``data_folder`` and save the adapter; returns (adapted de-tokenizer, adapter path).

        Reads only from ComfyUI's input folder: ``data_folder`` and every image path in its .jsonl must resolve
        inside it (:func:`resolve_data_folder`, :func:`load_data_records`; no absolute paths, ``~``, ``..`` or
        symlinks leading out). Writes only models/seed_story/detokenizer/<output_name>.safetensors and its run
        folder in ComfyUI's temp folder.

        Raises:
            SeedStoryInputError: bad inputs, data outside the input folder, malformed .jsonl, missing or corrupt
                images (named relative to the input folder); the input models are never changed.
            InterruptProcessingException: Cancel pressed (a resumable checkpoint stays in the temp folder).
        """
        node = self.DISPLAY_NAME
        agent = require_model(agent, "agent", node=node)
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        detok = require_model(detokenizer, "detokenizer", node=node)
        data = resolve_data_folder(data_folder, node=node)
        name = _check_output_name(output_name, node=node)
        records = load_data_records(data, node=node)
        steps, batch_size = int(steps), int(batch_size)
        if steps < 1 or batch_size < 1:
            raise SeedStoryInputError(f"{node}: steps and batch_size must be >= 1, found {steps} and {batch_size}.")
        glue.check_interrupted()
        options = dict(
            data=str(data),
            records=records,
            out=str(_run_directory(name)),
            max_steps=steps,
            batch_size=batch_size,
            grad_accum=1,
            lr=float(learning_rate),
            seed=int(seed),
            resume="none",
            save_every=0,
            keep_checkpoints=1,
            no_export=True,
            warmup_steps=min(OFFICIAL_WARMUP, steps * OFFICIAL_WARMUP // OFFICIAL_STEPS),
        )
        bundle, metrics = self._train(node, agent, vit, detok, options)
        module = _like_input(bundle.detokenizer, detok.module)  # the trained copy
        target = _save_adapter(module, name)
        out = _adapted_model(detok, module, f"{name}.safetensors")
        summary = _summary(metrics, data, target)
        return {"ui": {"text": [summary]}, "result": (out, str(target))}

    @staticmethod
    def _train(node: str, agent, vit, detok, options: dict):
        """Stage 3 on a trainable copy of the de-tokenizer, with the node's progress bar, streamed losses and
        Cancel; returns (the bundle holding the trained copy, the run's metrics).

        Raises:
            SeedStoryInputError: the data or an image fails during training.
            InterruptProcessingException: Cancel pressed (the run's checkpoint stays in ComfyUI's temp folder).
        """
        progress = glue.Progress(options["max_steps"])
        stream = glue.text_streamer(None)
        cancel, seen = glue.interrupt_probe()

        def on_step(step, total, loss):
            progress.set(step)
            if stream is not None:
                stream(f"step {step}/{total}  loss {loss:.4f}")

        run_dir = Path(options["out"])
        if run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        # ComfyUI runs nodes under torch.inference_mode(): training needs autograd and normal tensors.
        with torch.inference_mode(False), torch.enable_grad():
            bundle = _training_bundle(agent, vit, detok, node)
            try:
                metrics = run_stage3(init=bundle, progress=on_step, cancel=cancel, **options)
            except (FileNotFoundError, ValueError) as err:
                raise SeedStoryInputError(f"{node}: training on {options['data']} failed: {err}") from err
            except _IMAGE_ERRORS as err:  # an image that passed PIL's verify() but does not decode
                if not _is_image_error(err):
                    raise
                raise _undecodable_image_error(node, options["records"], err) from err
        if metrics.get("cancelled"):
            steps = options["max_steps"]
            print(
                f"[seedstory] {node}: cancelled at step {metrics['step']}/{steps}; checkpoint {metrics['checkpoint']}"
            )
            glue.raise_interrupted(seen, node)
        return bundle, metrics
