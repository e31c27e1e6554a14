"""Stand-ins for ComfyUI (``comfy.*``, ``folder_paths``, ``server``) and helpers to run the pack's node functions
without ComfyUI: the one place the node unit tests (tests/nodes/, and the node cases of tests/core/test_bad_inputs.py)
take them from.

* :func:`make_stubs` builds the stand-in modules; the ``comfy`` fixture (tests/conftest.py) puts them into
  ``sys.modules`` for one test and yields the :class:`Recorder` of the calls they received.
* :func:`run` calls a node's function under ``torch.inference_mode`` as ComfyUI does; :func:`tiny` loads the random
  tiny model through the Tiny Model Loader node; :func:`start_image` is a ComfyUI IMAGE ``[1, H, W, C]`` float32 in
  [0, 1]; ``STEP`` holds the Story Step widget values the tests share.
* :func:`write_component_folders` lays a random tiny bundle out in ``models/seed_story/...`` as a user would;
  :func:`make_mini` writes a 2-story StoryStream-mini folder (the Adapt De-tokenizer's input; the ``adapt_env``
  fixture in tests/conftest.py puts one into the stand-in input folder).

Importing this module imports the pack (tests/support/pack_loader.py) under the name ``PACK``.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import torch

from seedstory_core.data.mini import generate_dataset
from seedstory_core.tiny import random_tiny_bundle

from tests.support.pack_loader import PACK, load_pack

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS
glue = sys.modules[f"{PACK}.nodes.comfy_glue"]
models = sys.modules[f"{PACK}.nodes.models"]
InputError = models.SeedStoryInputError


class Interrupted(Exception):
    """The stand-in for ``comfy.model_management.InterruptProcessingException``."""


class Recorder:
    """What the stand-ins were asked to do: ``calls`` (tuples, in order), ``interrupt_after``/``checks`` (the
    interrupt probe); the ``comfy`` fixture adds ``tmp`` and ``folder_paths``."""

    def __init__(self):
        self.calls = []


def make_stubs(tmp: Path):
    """``({module name: stand-in module}, Recorder)``: ``comfy``, ``comfy.model_management`` (CPU devices, the
    interrupt probe), ``comfy.model_patcher``, ``comfy.utils`` (ProgressBar), ``folder_paths`` (model folders and
    the output folder under ``tmp``) and ``server`` (``PromptServer.instance``)."""
    rec = Recorder()
    rec.interrupt_after = None  # raise on the n-th interrupt check
    rec.checks = 0

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = Interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.should_use_fp16 = lambda device=None, **kw: False
    mm.should_use_bf16 = lambda device=None, **kw: False

    def load_models_gpu(
        models_, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
    ):
        rec.calls.append(("load_models_gpu", len(models_), force_full_load))

    def throw():
        rec.checks += 1
        if rec.interrupt_after is not None and rec.checks >= rec.interrupt_after:
            raise Interrupted("interrupted")

    mm.load_models_gpu = load_models_gpu
    mm.unload_all_models = lambda: rec.calls.append(("unload_all_models",))
    mm.soft_empty_cache = lambda force=False: rec.calls.append(("soft_empty_cache",))
    mm.throw_exception_if_processing_interrupted = throw

    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            assert isinstance(model, torch.nn.Module)
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            model.device = offload_device  # what the real one does; must not hit a read-only property
            assert size > 0 and not list(model.children())  # our modules are hidden from the module walk
            rec.calls.append(("ModelPatcher", sorted(model.hidden)))

    mp.ModelPatcher = ModelPatcher

    ut = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total
            rec.calls.append(("ProgressBar", total))

        def update_absolute(self, value, total=None, preview=None):
            rec.calls.append(("progress", value, total))

    ut.ProgressBar = ProgressBar

    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    comfy.model_management, comfy.model_patcher, comfy.utils = mm, mp, ut

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp / "models")
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {
        "checkpoints": ([str(tmp / "models" / "checkpoints")], set(fp.supported_pt_extensions)),
        "diffusers": ([str(tmp / "models" / "diffusers")], {"folder"}),
        # what a user's extra_model_paths.yaml could have added before the pack loads
        "seed_story_agent": ([str(tmp / "elsewhere" / "agents")], {".safetensors"}),
    }

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_filename_list(name):
        dirs, exts = fp.folder_names_and_paths[name]
        out = []
        for d in dirs:
            for root, _ds, files in os.walk(d):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.append(os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/"))
        return sorted(out)

    fp.get_folder_paths, fp.get_filename_list = get_folder_paths, get_filename_list
    fp.get_output_directory = lambda: str(tmp / "output")

    srv = types.ModuleType("server")

    class Queue:
        def set_flag(self, name, value):
            rec.calls.append(("set_flag", name, value))

    class PromptServer:
        instance = None

        def __init__(self):
            self.client_id = "client-1"
            self.prompt_queue = Queue()

        def send_progress_text(self, text, node_id, sid=None):
            rec.calls.append(("text", node_id, text, sid))

    PromptServer.instance = PromptServer()
    srv.PromptServer = PromptServer
    mods = {
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.model_patcher": mp,
        "comfy.utils": ut,
        "folder_paths": fp,
        "server": srv,
    }
    return mods, rec


def run(node_id, fn_kwargs):
    cls = NODES[node_id]
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**fn_kwargs)


def tiny(comfy_rec=None):
    return run("SeedStoryTinyModelLoader", {"random_seed": 0, "precision": "auto", "device": "auto"})


def start_image(h=80, w=96, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, c, generator=g)


STEP = dict(
    mode="generation",
    decoding="greedy",
    temperature=0.7,
    top_p=0.9,
    top_k=0,
    repetition_penalty=1.0,
    max_sentence_tokens=6,
    seed=0,
)


def detokenize_inputs(detokenizer, features, **overrides) -> dict:
    """De-tokenize's inputs: one euler step at guidance 2.0, seed 0, frame 0, native size; ``overrides`` win."""
    inputs = dict(
        detokenizer=detokenizer,
        features=features,
        steps=1,
        guidance_scale=2.0,
        scheduler="euler",
        seed=0,
        frame_index=0,
        same_noise=False,
        width=0,
        height=0,
    )
    inputs.update(overrides)
    return inputs


def generate_inputs(agent, visual_tokenizer, detokenizer, **overrides) -> dict:
    """Generate Story's inputs for the tiny model: :data:`STEP` decoding, 2 steps of one diffusion step each from
    :func:`start_image` and "Hi."; ``overrides`` win."""
    inputs = dict(
        agent=agent,
        visual_tokenizer=visual_tokenizer,
        detokenizer=detokenizer,
        start_image=start_image(),
        opening_text="Hi.",
        story_steps=2,
        **STEP,
        diffusion_steps=1,
        guidance_scale=2.0,
        scheduler="euler",
        width=0,
        height=0,
        same_noise=False,
        captions="",
    )
    inputs.update(overrides)
    return inputs


def write_component_folders(root: Path):
    """The tiny bundle saved, then laid out like a user would in models/seed_story/... (configs next to files)."""
    with torch.inference_mode(False):
        bundle = random_tiny_bundle(3)
        saved = bundle.save(root / "bundle")
    ss = root / "models" / "seed_story"
    (ss / "visual_tokenizer" / "tiny").mkdir(parents=True)
    shutil.copy(saved / "visual_tokenizer" / "model.safetensors", ss / "visual_tokenizer" / "tiny" / "vit.safetensors")
    shutil.copy(saved / "seedstory_config.json", ss / "visual_tokenizer" / "tiny")
    shutil.copytree(saved / "agent", ss / "agent" / "tiny")
    shutil.copytree(saved / "tokenizer", ss / "tokenizer" / "tiny")
    (ss / "detokenizer" / "tiny").mkdir(parents=True)
    shutil.copy(saved / "detokenizer" / "adapter.safetensors", ss / "detokenizer" / "tiny")
    shutil.copy(saved / "seedstory_config.json", ss / "detokenizer" / "tiny")
    shutil.copytree(saved / "detokenizer" / "sdxl", ss / "sdxl" / "tiny-sdxl")
    # a file of the wrong kind: the ViT weights where the agent belongs
    shutil.copy(saved / "visual_tokenizer" / "model.safetensors", ss / "agent" / "oops_vit.safetensors")
    return bundle


def make_mini(folder: Path, seed: int = 0) -> Path:
    """A 2-story StoryStream-mini set (64 px, 6 frames, chunks of 3) written to ``folder``; returns ``folder``."""
    generate_dataset(folder, seed=seed, stories=2, size=64, frames=6, chunk_len=3)
    return folder
