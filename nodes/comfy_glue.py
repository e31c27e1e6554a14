"""The pack's one door to ComfyUI: every contact with ComfyUI goes through this module.

``comfy``, ``comfy_execution``, ``folder_paths``, ``server`` and ``aiohttp`` (ComfyUI's web server) are imported
lazily, inside the functions below, and only here: the pack imports (and its node tests run) without ComfyUI.
What the rest of the pack uses:

* folders: :func:`register_folders`, :func:`folder_dirs`, :func:`list_files`, :func:`list_subfolders`,
  :func:`full_path` (model folders), :func:`in_comfyui`, :func:`input_directory`, :func:`output_directory`,
  :func:`temp_directory`;
* devices and models: :func:`resolve_device`, :func:`resolve_dtype`, :func:`intermediate_device`,
  :func:`make_patcher`, :func:`load_models`, :func:`unload_all_models`, :func:`request_cache_reset`;
* progress and interruption: :class:`Progress`, :func:`check_interrupted`, :func:`cancel_callback`,
  :func:`interrupt_probe`, :func:`raise_interrupted`, :func:`text_streamer`;
* the web server: :func:`register_get_route`, :func:`http_text`, :func:`http_file`.

Outside ComfyUI (plain pytest) the helpers degrade gracefully: no progress hook, no interruption, no model
management, no routes; tests put stand-ins for ``comfy.*`` / ``folder_paths`` / ``server`` into ``sys.modules`` when
they want to check the calls.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from seedstory_core import quant

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The bundled tiny model (written by the training issue); the tiny loader falls back to random weights.
TINY_BUNDLE_DIR = os.path.join(PACK_ROOT, "models", "seedstory-tiny")

WEIGHT_EXTS = {".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"}
#: folder_paths name -> (sub-folder of models/seed_story, extension set). Folders are listed separately.
FOLDERS: Dict[str, Tuple[str, set]] = {
    "seed_story_visual_tokenizer": ("visual_tokenizer", WEIGHT_EXTS),
    "seed_story_agent": ("agent", WEIGHT_EXTS | {".json"}),
    "seed_story_tokenizer": ("tokenizer", {".model", ".json"}),
    "seed_story_llm": ("llm", WEIGHT_EXTS | {".json"}),
    "seed_story_detokenizer": ("detokenizer", WEIGHT_EXTS),
    "seed_story_sdxl": ("sdxl", WEIGHT_EXTS | {".json"}),
}

DEVICES = ("auto", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICE_TOOLTIP = (
    "Where the model runs. auto = ComfyUI's main device (GPU when there is one, else CPU; honours "
    "--cpu / --lowvram). cpu = always on the CPU (slow but no VRAM)."
)
PRECISION_TOOLTIP = (
    "Weight precision. auto = fp16 or bf16 when ComfyUI says the device supports it, else fp32. "
    "fp16/bf16 halve memory (the official SEED-Story-George agent needs ~14 GB in fp16, ~28 GB in "
    "fp32); fp16/bf16 on a CPU is slow or unsupported."
)


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def model_management():
    """``comfy.model_management`` or None outside ComfyUI."""
    return _optional("comfy.model_management")


def in_comfyui() -> bool:
    """True when ComfyUI's ``folder_paths`` can be imported (the pack runs inside a ComfyUI server)."""
    return _optional("folder_paths") is not None


# ---------------------------------------------------------------------------------------------- folders
_REGISTERED = False


def register_folders() -> None:
    """Merge our model folders into ``folder_paths.folder_names_and_paths`` (idempotent).

    Keeps any entries the user's extra_model_paths.yaml already added under the same names and sets explicit
    extension sets (an empty set would mean "no filtering" to ComfyUI's folder_paths).
    """
    global _REGISTERED
    fp = _optional("folder_paths")
    if fp is None or _REGISTERED:
        return
    base = os.path.join(fp.models_dir, "seed_story")
    for name, (sub, exts) in FOLDERS.items():
        d = os.path.join(base, sub)
        if name in fp.folder_names_and_paths:
            paths, old_exts = fp.folder_names_and_paths[name]
            paths = list(paths)
            if d not in paths:
                paths.append(d)
            fp.folder_names_and_paths[name] = (paths, set(old_exts) | set(exts))
        else:
            fp.folder_names_and_paths[name] = ([d], set(exts))
    _REGISTERED = True


def folder_dirs(name: str) -> List[str]:
    """The directories registered under ``name`` (our folders, 'checkpoints', 'diffusers', ...)."""
    register_folders()
    fp = _optional("folder_paths")
    if fp is None:
        return []
    try:
        return list(fp.get_folder_paths(name))
    except Exception:  # unknown name
        return []


def list_files(name: str, *, weights_only: bool = True) -> List[str]:
    """Files under the registered folder ``name`` (relative, '/'-separated), weights and shard indexes only."""
    register_folders()
    fp = _optional("folder_paths")
    if fp is None:
        return []
    try:
        files = fp.get_filename_list(name)
    except Exception:
        return []
    out = []
    for f in files:
        low = f.lower()
        if low.endswith(".json"):
            if weights_only and not low.endswith(".index.json"):
                continue
        elif "-of-0" in low:  # a shard of a sharded checkpoint: pick its index JSON instead
            continue
        out.append(f)
    return out


def list_subfolders(name: str, *, depth: int = 2) -> List[str]:
    """Sub-folders (relative, '/'-separated, up to ``depth`` levels) of every directory registered as ``name``."""
    out = set()
    for root in folder_dirs(name):
        if not os.path.isdir(root):
            continue
        for cur, dirs, _files in os.walk(root, followlinks=True):
            rel = os.path.relpath(cur, root)
            level = 0 if rel == "." else rel.count(os.sep) + 1
            if level >= depth:
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in dirs:
                out.add(os.path.join(rel, d).replace(os.sep, "/") if rel != "." else d)
    return sorted(out)


def full_path(name: str, relative: str, *, folder: bool = False) -> str:
    """Absolute path of ``relative`` in the folders registered as ``name``; FileNotFoundError says where we looked."""
    dirs = folder_dirs(name)
    for root in dirs:
        p = os.path.join(root, relative)
        if os.path.isdir(p) if folder else os.path.isfile(p):
            return p
    kind = "folder" if folder else "file"
    raise FileNotFoundError(
        f"{kind} {relative!r} not found in the '{name}' model folders {dirs or '(none registered)'}. Put it there "
        "(see the node's description for the expected files) and press R in ComfyUI to refresh the lists."
    )


# ---------------------------------------------------------------------------------------------- devices
def resolve_device(choice: str) -> Tuple[torch.device, torch.device]:
    """(load device, offload device) for a device choice (``auto`` / ``cpu``)."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, found {choice!r}.")
    mm = model_management()
    cpu = torch.device("cpu")
    if choice == "cpu" or mm is None:
        return cpu, cpu
    return mm.get_torch_device(), mm.unet_offload_device()


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """torch dtype for a precision choice; ``auto`` asks ComfyUI (fp16, then bf16, else fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, found {precision!r}.")
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    mm = model_management()
    if mm is None or device.type == "cpu":
        return torch.float32
    if mm.should_use_fp16(device=device, prioritize_performance=True):
        return torch.float16
    if mm.should_use_bf16(device=device):
        return torch.bfloat16
    return torch.float32


def intermediate_device() -> torch.device:
    mm = model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


class ModuleHolder(torch.nn.Module):
    """What our ModelPatchers wrap: a plain ``nn.Module`` whose ``.to()`` moves our modules (and extra ones such as
    the de-tokenizer's VAE, which is not a submodule of it) but which does NOT register them as children.

    ModelPatcher walks ``model.modules()`` and sets/deletes bookkeeping attributes on every module; peft's
    ``ModulesToSaveWrapper`` forwards attribute lookups to its inner module, so ``del m.comfy_patched_weights``
    raised inside ``unload_all_models`` and killed ComfyUI's prompt worker thread (seen with POST /free). So
    ``named_modules()`` shows ComfyUI only the *leaf* modules that hold tensors (never a wrapper), under their
    ``<kind>.<path>`` names, and attribute lookups reach the hidden modules by those names (ComfyUI's
    ``get_key_weight``). ComfyUI's partial loading (``ModelPatcher.load`` with a memory budget) then moves the leaves
    that fit; the cast layers of :mod:`seedstory_core.quant` (``comfy_cast_weights``) may stay on the offload
    device, and :func:`make_patcher` moves everything else (buffers, other leaves, tensors of non-leaf modules) to
    the load device after each load. The size is passed explicitly. Our modules also expose read-only ``device``
    properties that ModelPatcher would try to overwrite, which is why they are never its attributes.
    """

    def __init__(self, **modules: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "hidden", {k: m for k, m in modules.items() if m is not None})

    def __getattr__(self, name: str):
        hidden = self.__dict__.get("hidden", {})
        if name in hidden:
            return hidden[name]
        return super().__getattr__(name)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        seen = set()
        for kind, module in self.hidden.items():
            for name, m in module.named_modules(prefix=f"{prefix}.{kind}" if prefix else kind):
                if next(m.children(), None) is not None or id(m) in seen:
                    continue
                if next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None:
                    continue
                seen.add(id(m))
                yield name, m

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for m in self.hidden.values():
            m._apply(fn, recurse)
        return self

    def nbytes(self) -> int:
        return quant.module_bytes(*self.hidden.values())

    def finish_load(self, device: torch.device) -> int:
        """Move every tensor ComfyUI's (partial) load left behind to ``device``, except the weights of cast layers
        (``comfy_cast_weights``), which run from wherever they are. Returns the number of tensors moved."""
        moved = 0
        for module in self.hidden.values():
            for m in module.modules():
                cast = hasattr(m, "comfy_cast_weights")
                for name, p in list(m.named_parameters(recurse=False)):
                    if not cast and p.device != device:
                        p.data = p.data.to(device)
                        moved += 1
                for name, b in list(m.named_buffers(recurse=False)):
                    if not cast and b.device != device:
                        m._buffers[name] = b.to(device)
                        moved += 1
        return moved


def _finish_load(patcher, device_to, *_args) -> None:
    if device_to is not None and isinstance(patcher.model, ModuleHolder):
        patcher.model.finish_load(torch.device(device_to))


def make_patcher(load_device: torch.device, offload_device: torch.device, **modules: torch.nn.Module):
    """A ``comfy.model_patcher.ModelPatcher`` over ``modules`` (None outside ComfyUI), ready for ComfyUI's partial
    loading: the weight blocks of each module (:func:`seedstory_core.quant.weight_blocks`) become cast layers,
    and an ``ON_LOAD`` callback completes every load (:meth:`ModuleHolder.finish_load`)."""
    mp = _optional("comfy.model_patcher")
    if mp is None:
        return None
    for module in modules.values():
        if module is not None:
            try:
                quant.make_blocks_castable(module)
            except TypeError:  # not one of our three models (e.g. the VAE): always loaded whole
                pass
    holder = ModuleHolder(**modules)
    size = max(holder.nbytes(), 1)
    patcher = mp.ModelPatcher(holder, load_device=load_device, offload_device=offload_device, size=size)
    ext = _optional("comfy.patcher_extension")
    if ext is not None and hasattr(patcher, "add_callback"):
        patcher.add_callback(ext.CallbacksMP.ON_LOAD, _finish_load)
    return patcher


def load_models(patchers: Iterable[Any]) -> None:
    """Ask ComfyUI to put the models on their load device: fully when they fit, partially (the cast layers of the
    weight blocks left on the offload device) under ``--lowvram`` / ``--novram`` or when VRAM is short."""
    mm = model_management()
    ps = [p for p in patchers if p is not None]
    if mm is None or not ps:
        return
    mm.load_models_gpu(ps)


def loaded_state(patcher) -> Optional[Dict[str, Any]]:
    """What ComfyUI's model management says about ``patcher`` now: ``{'loaded': bool (in its loaded-models list),
    'lowvram': bool (partially loaded), 'loaded_bytes': int, 'total_bytes': int}``; None outside ComfyUI."""
    mm = model_management()
    if mm is None or patcher is None:
        return None
    loaded = any(m is patcher for m in mm.loaded_models())
    return {
        "loaded": loaded,
        "lowvram": bool(getattr(patcher.model, "model_lowvram", False)),
        "loaded_bytes": int(patcher.loaded_size()),
        "total_bytes": int(patcher.model_size()),
    }


def unload_all_models() -> bool:
    """Unload every model from ComfyUI's model management and empty the device cache; False outside ComfyUI."""
    mm = model_management()
    if mm is None:
        return False
    mm.unload_all_models()
    mm.soft_empty_cache()
    return True


def request_cache_reset() -> bool:
    """Ask ComfyUI to unload models and drop its node output caches once the current prompt ends (what
    POST /free {"unload_models": true, "free_memory": true} does). Returns False outside ComfyUI."""
    srv = _optional("server")
    inst = getattr(getattr(srv, "PromptServer", None), "instance", None)
    queue = getattr(inst, "prompt_queue", None)
    if queue is None or not hasattr(queue, "set_flag"):
        return False
    queue.set_flag("unload_models", True)
    queue.set_flag("free_memory", True)
    return True


# ---------------------------------------------------------------------------------------------- progress
def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel (POST /interrupt)."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def cancel_callback() -> bool:
    """For ``StoryEngine(cancel=...)``: raises ComfyUI's interrupt exception itself, otherwise returns False."""
    check_interrupted()
    return False


def interrupt_probe() -> Tuple[Callable[[], bool], List[BaseException]]:
    """A cancel check that does not raise: ``(cancel, seen)``; ``cancel()`` returns True once the user pressed
    Cancel (for loops that must stop cleanly, e.g. training, which then saves a checkpoint). On an older ComfyUI
    without ``processing_interrupted`` the throwing check is used and the exception it consumed lands in ``seen``,
    for :func:`raise_interrupted`. Outside ComfyUI ``cancel()`` is always False."""
    seen: List[BaseException] = []

    def cancel() -> bool:
        mm = model_management()
        if mm is None:
            return False
        probe = getattr(mm, "processing_interrupted", None)
        if probe is not None:
            return bool(probe())
        try:  # older ComfyUI: the throwing check (clears the flag, so keep the exception)
            mm.throw_exception_if_processing_interrupted()
        except Exception as err:  # InterruptProcessingException
            seen.append(err)
            return True
        return False

    return cancel, seen


def raise_interrupted(seen: List[BaseException], node: str) -> None:
    """Raise ComfyUI's InterruptProcessingException after :func:`interrupt_probe` said True (clearing the flag),
    or the one the probe consumed; a RuntimeError naming ``node`` outside ComfyUI."""
    check_interrupted()  # raises InterruptProcessingException and clears the flag
    if seen:
        raise seen[0]
    mm = model_management()
    exc = getattr(mm, "InterruptProcessingException", None) if mm is not None else None
    raise (exc() if exc is not None else RuntimeError(f"{node}: interrupted"))


class Progress:
    """``comfy.utils.ProgressBar`` when available (no-op outside ComfyUI)."""

    def __init__(self, total: int):
        utils = _optional("comfy.utils")
        self.total = max(int(total), 1)
        self.value = 0
        self.bar = utils.ProgressBar(self.total) if utils is not None else None

    def set(self, value: int) -> None:
        self.value = min(int(value), self.total)
        if self.bar is not None:
            self.bar.update_absolute(self.value, self.total)

    def advance(self, n: int = 1) -> None:
        self.set(self.value + n)


def executing_node_id() -> Optional[str]:
    """Id of the node being executed (ComfyUI's execution context), or None."""
    ctx_mod = _optional("comfy_execution.utils")
    if ctx_mod is None or not hasattr(ctx_mod, "get_executing_context"):
        return None
    ctx = ctx_mod.get_executing_context()
    return getattr(ctx, "node_id", None) if ctx is not None else None


def text_streamer(node_id: Optional[str]) -> Optional[Callable[[str], None]]:
    """A function that shows text on the node (``PromptServer.send_progress_text``), or None outside ComfyUI."""
    srv = _optional("server")
    inst = getattr(getattr(srv, "PromptServer", None), "instance", None)
    if inst is None or not hasattr(inst, "send_progress_text"):
        return None
    node = node_id if node_id is not None else executing_node_id()
    if node is None:
        return None

    def send(text: str) -> None:
        inst.send_progress_text(text, str(node), getattr(inst, "client_id", None))

    return send


# ---------------------------------------------------------------------------------------------- user folders
def output_directory() -> str:
    """ComfyUI's output folder (``folder_paths.get_output_directory()``).

    Raises:
        RuntimeError: outside ComfyUI (Save Story writes only there).
    """
    fp = _optional("folder_paths")
    if fp is None:
        raise RuntimeError("ComfyUI's folder_paths is not available: SeedStory Save Story must run inside ComfyUI.")
    return fp.get_output_directory()


def input_directory(node: str) -> Path:
    """ComfyUI's input folder, resolved (``folder_paths.get_input_directory()``).

    Raises:
        RuntimeError: outside ComfyUI (no ``folder_paths``): ``node`` reads only from that folder.
    """
    fp = _optional("folder_paths")
    if fp is None or not hasattr(fp, "get_input_directory"):
        raise RuntimeError(
            f"{node}: ComfyUI's folder_paths is not available; the node reads its training data "
            "only from ComfyUI's input folder and must run inside ComfyUI."
        )
    return Path(os.path.realpath(fp.get_input_directory()))


def temp_directory() -> str:
    """ComfyUI's temp folder (cleared when ComfyUI starts), or the system's temp folder outside ComfyUI."""
    fp = _optional("folder_paths")
    if fp is not None and hasattr(fp, "get_temp_directory"):
        return fp.get_temp_directory()
    return tempfile.gettempdir()


# ---------------------------------------------------------------------------------------------- web server
def register_get_route(pattern: str, handler: Callable[[Any], Awaitable[Any]]) -> bool:
    """Add ``GET pattern`` (an aiohttp route pattern, e.g. ``/seedstory/storybook/{path:.+}``) to ComfyUI's server;
    ComfyUI also mounts it under ``/api``. ``handler(request)`` is an aiohttp handler that answers with
    :func:`http_text` / :func:`http_file`. Returns False when ComfyUI's server is not there (tests, scripts)."""
    srv = _optional("server")
    instance = getattr(getattr(srv, "PromptServer", None), "instance", None)
    if instance is None:
        return False
    instance.routes.get(pattern)(handler)
    return True


def http_text(status: int, text: str):
    """An aiohttp text answer (for a route handler)."""
    from aiohttp import web

    return web.Response(status=status, text=text)


def http_file(path, headers: Dict[str, str]):
    """An aiohttp answer that streams the file at ``path`` with ``headers`` (for a route handler)."""
    from aiohttp import web

    return web.FileResponse(path, headers=headers)
