"""Shared machinery of the SEED-Story training stages (docs/reference.md §6 "Common setup"), built on HuggingFace
accelerate.

One loop (:func:`run_training`) drives every stage; a stage is a :class:`StageTask` that builds its models, draws
micro-batches and computes the loss. The loop provides:

* ``accelerate.Accelerator``: devices / DDP / DeepSpeed / FSDP from ``accelerate launch --config_file``, mixed
  precision (``--mixed-precision no|bf16|fp16``), gradient accumulation (``accelerator.accumulate``), grad-norm
  clipping (1.0, ``accelerator.clip_grad_norm_``), ``save_state`` / ``load_state`` checkpoints;
* AdamW + the official linear-warmup cosine schedule WITH A FLOOR (:func:`cosine_with_floor`, a ``LambdaLR``;
  transformers' ``get_cosine_schedule_with_warmup`` decays to 0 and has no floor, so it does not match);
  the scheduler is stepped once per optimizer step by us (not ``prepare``-d: accelerate would step a prepared
  scheduler ``num_processes`` times per step) and checkpointed with ``register_for_checkpointing``;
* resumable checkpoints ``OUT/checkpoints/step-N`` written atomically (``.tmp-step-N`` then ``os.replace``),
  ``--resume auto`` picks the newest complete one; the data order does not depend on the process history:
  every micro-batch is drawn from a ``random.Random`` keyed by (seed, step, micro-step), and the torch RNG
  is re-seeded from the same key before every micro-step (noise, timesteps, dropout), so N steps straight and
  N/2 + resume + N/2 give the same weights;
* deterministic data sharding over processes (DDP / FSDP, ``accelerate launch --num_processes N``): a task that
  sets ``shards_global_batch`` draws the GLOBAL micro-batch (``--batch-size`` x N samples, with its noise) from
  the rank-independent key and keeps rank r's contiguous slice ``[r*B, (r+1)*B)``, so the union of the ranks'
  micro-batches is exactly the micro-batch one process draws with ``--batch-size`` B x N (same seed, same steps).
  Losses that are means over a varying number of elements (stage 2's token CE) are re-weighted per rank
  (:func:`rank_weight`) so that the DDP gradient average equals the gradient of the global-batch mean. Dropout
  masks are seeded per rank (different ranks must not share masks);
* tqdm progress with the loss, a CSV log ``OUT/train_log.csv`` (step, loss, lm_loss, rec_loss, lr, grad_norm,
  seconds; losses are the global-batch values: the per-rank values are ``gather``-ed and averaged; written by
  the main process only) and TensorBoard through accelerate's tracker when the ``tensorboard`` package is
  installed;
* the final model as a :class:`~seedstory_core.bundle.SeedStoryBundle` folder ``OUT/model`` (what the loaders
  and the ComfyUI nodes read); a progress callback and a cancel check for in-process use.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data.storystream import image_candidates
from seedstory_core.tiny import random_tiny_bundle

__all__ = [
    "cosine_with_floor",
    "make_lr_lambda",
    "base_parser",
    "resolve_args",
    "ImageSource",
    "FeatureCache",
    "load_init_bundle",
    "StageTask",
    "run_training",
    "latest_checkpoint",
    "micro_rng",
    "rank_weight",
    "check_distributed_request",
]

CSV_FIELDS = ("step", "loss", "lm_loss", "rec_loss", "lr", "grad_norm", "seconds")
STATE_FILE = "trainer_state.json"


# ---------------------------------------------------------------------------------------------- schedule
def cosine_with_floor(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """LR multiplier of the official schedule (docs/reference.md §6): linear warmup ``step / warmup``, then
    ``0.5 * ((1 + m) + (1 - m) * cos(pi * progress))`` with ``progress = (step - warmup) / (total - warmup)``
    (clamped to [0, 1]) and ``m = min_lr_ratio``: it decays from 1 to the floor ``m`` (never to 0)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = min(1.0, float(step - warmup) / float(max(1, total - warmup)))
    m = float(min_lr_ratio)
    return 0.5 * ((1.0 + m) + (1.0 - m) * math.cos(math.pi * progress))


def make_lr_lambda(warmup: int, total: int, min_lr_ratio: float) -> Callable[[int], float]:
    return lambda step: cosine_with_floor(step, warmup, total, min_lr_ratio)


# ---------------------------------------------------------------------------------------------- arguments
def base_parser(prog: str, description: str, defaults: Mapping[str, Any]) -> argparse.ArgumentParser:
    """The arguments every stage shares; ``defaults`` gives the stage's official values (docs/reference.md §6)."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data / model / output")
    g.add_argument(
        "--data",
        default=None,
        help="StoryStream-format data: a folder (chunks10.jsonl, else stories.jsonl, else the only *.jsonl; "
        "image paths relative to the folder or its images/) or a .jsonl file",
    )
    g.add_argument(
        "--image-root", default=None, help="folder the record image paths are relative to (default: next to the jsonl)"
    )
    g.add_argument(
        "--init",
        default="tiny",
        help="'tiny' (random tiny model, seeded by --seed) or 'bundle:PATH' / PATH (a SeedStoryBundle folder)",
    )
    g.add_argument("--out", default=None, help="output folder: checkpoints/, train_log.csv, model/ (a SeedStoryBundle)")
    g.add_argument("--max-records", type=int, default=0, help="use only the first N records (0 = all)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--max-steps", type=int, default=defaults.get("max_steps", 100), help="optimizer steps")
    o.add_argument(
        "--batch-size", type=int, default=defaults.get("batch_size", 4), help="samples per micro-batch per process"
    )
    o.add_argument(
        "--grad-accum", type=int, default=defaults.get("grad_accum", 1), help="gradient accumulation micro-steps"
    )
    o.add_argument("--lr", type=float, default=defaults.get("lr", 1e-4))
    o.add_argument("--weight-decay", type=float, default=defaults.get("weight_decay", 0.0))
    o.add_argument("--beta1", type=float, default=defaults.get("beta1", 0.9))
    o.add_argument("--beta2", type=float, default=defaults.get("beta2", 0.999))
    o.add_argument("--eps", type=float, default=defaults.get("eps", 1e-8))
    o.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 0))
    o.add_argument("--min-lr-ratio", type=float, default=defaults.get("min_lr_ratio", 0.0))
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default=None,
        help="autocast precision (official: bf16); trainable weights stay fp32. Default: the accelerate "
        "launch config's value, else 'no'",
    )
    o.add_argument("--gradient-checkpointing", action="store_true")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument(
        "--torch-threads",
        type=int,
        default=-1,
        help="intra-op CPU threads while training: -1 = 1 on the CPU (tiny models; OpenMP spinning makes >1 "
        "thread many times slower on a busy shared machine), 0 = leave torch's setting, N = N",
    )
    c = p.add_argument_group("checkpoints / logging")
    c.add_argument(
        "--save-every",
        type=int,
        default=defaults.get("save_every", 0),
        help="checkpoint every N steps (0: only at the end)",
    )
    c.add_argument("--keep-checkpoints", type=int, default=2, help="keep the newest N step-* folders (0 = all)")
    c.add_argument(
        "--resume", default="auto", help="'auto' (newest OUT/checkpoints/step-N), 'none', or a checkpoint folder"
    )
    c.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop (with a checkpoint, without exporting) after this many steps of this run; 0 = off. "
        "For interruption tests and time-boxed runs",
    )
    c.add_argument("--no-export", action="store_true", help="do not write OUT/model at the end")
    c.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    c.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="recompute frozen ViT features every time (default: cache in RAM)",
    )
    return p


def resolve_args(
    parser: argparse.ArgumentParser, args: Union[None, Sequence[str], Mapping[str, Any], argparse.Namespace]
) -> argparse.Namespace:
    """CLI list, dict (``{'max_steps': 4}`` or ``{'max-steps': 4}``) or Namespace -> a complete Namespace."""
    if args is None or isinstance(args, (list, tuple)):
        return parser.parse_args(list(args) if args is not None else None)
    ns = parser.parse_args([])
    items = vars(args).items() if isinstance(args, argparse.Namespace) else dict(args).items()
    known = set(vars(ns))
    for key, value in items:
        name = key.replace("-", "_")
        if name not in known and name != "records":
            raise ValueError(f"unknown training argument {key!r}; known: {sorted(known)}")
        setattr(ns, name, value)
    return ns


# ---------------------------------------------------------------------------------------------- data
class ImageSource:
    """Opens record frames (PIL, RGB) and names them with a stable key for the caches."""

    def __init__(self, records: List[dict], root: Optional[Path]):
        self.records = records
        self.root = root

    def key(self, r: int, f: int) -> str:
        item = self.records[r]["images"][f]
        return str(item) if isinstance(item, (str, os.PathLike)) else f"mem:{self.records[r]['id']}:{r}:{f}"

    def cast_key(self, r: int, name: str) -> str:
        """The cache key of the cast-sheet picture of ``name`` in record ``r`` (``record["cast"]``)."""
        item = self._cast_item(r, name)
        return str(item) if isinstance(item, (str, os.PathLike)) else f"mem:{self.records[r]['id']}:{r}:cast:{name}"

    def _cast_item(self, r: int, name: str):
        for entry in self.records[r].get("cast") or []:
            if entry.get("name") == name:
                return entry["image"]
        raise KeyError(f"record {self.records[r].get('id')} has no cast picture of {name!r}")

    def open_cast(self, r: int, name: str):
        """The cast-sheet picture of ``name`` in record ``r`` (PIL, RGB). Raises KeyError / FileNotFoundError."""
        return self._open_item(self._cast_item(r, name), r)

    def open(self, r: int, f: int):
        return self._open_item(self.records[r]["images"][f], r)

    def _open_item(self, item, r: int):
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        candidates = image_candidates(self.root, item)
        for c in candidates:
            if c.is_file():
                with Image.open(c) as img:
                    return img.convert("RGB")
        raise FileNotFoundError(
            f"image {item!r} of record {self.records[r]['id']} not found (tried {[str(c) for c in candidates]})"
        )


class FeatureCache:
    """RAM cache for frozen per-image results (ViT features, VAE targets); ``enabled=False`` disables it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._data: Dict[Any, Any] = {}

    def get(self, key, compute: Callable[[], Any]):
        if not self.enabled:
            return compute()
        if key not in self._data:
            self._data[key] = compute()
        return self._data[key]


def micro_rng(seed: int, step: int, micro: int, rank: int) -> random.Random:
    """The data RNG of one micro-step; independent of everything that happened before (resume-safe).

    Sharding tasks (``StageTask.shards_global_batch``) always pass ``rank=0``: every process draws the same global
    micro-batch and keeps its own slice. Other tasks get a per-rank stream (``rank`` = process index)."""
    return random.Random(f"seedstory-{seed}-{step}-{micro}-{rank}")


def rank_weight(local_count, global_count: int, world: int) -> float:
    """Weight that turns a per-rank MEAN into this rank's share of the global-batch mean under DDP averaging.

    A loss that is a mean over ``local_count`` elements (e.g. label tokens) on each of ``world`` ranks, whose
    gradients DDP averages, gives the gradient of the global mean over ``global_count`` elements when each rank's
    loss is multiplied by ``local_count * world / global_count``. Exactly 1.0 in a single process. Returns 0.0 when
    ``global_count`` is 0. Counts are plain ints (or 0-dim integer tensors)."""
    local_count, global_count = int(local_count), int(global_count)
    if global_count <= 0:
        return 0.0
    if world == 1 and local_count == global_count:
        return 1.0
    return float(local_count * int(world)) / float(global_count)


def load_init_bundle(init, seed: int = 0):
    """The model a stage starts from: ``'tiny'`` -> a random tiny bundle seeded by ``seed``; ``'bundle:PATH'`` or
    ``PATH`` -> ``SeedStoryBundle.load``; a :class:`~seedstory_core.bundle.SeedStoryBundle` object -> itself (an
    in-memory model, e.g. the ComfyUI node's loaded models: see :func:`frozen_module`).

    Raises:
        FileNotFoundError: ``PATH`` is not a complete bundle folder.
    """
    if isinstance(init, SeedStoryBundle):
        return init
    if init == "tiny":
        return random_tiny_bundle(seed)
    path = init[len("bundle:") :] if init.startswith("bundle:") else init
    return SeedStoryBundle.load(path)


def frozen_module(module: nn.Module, device, dtype: torch.dtype, *, borrowed: bool) -> nn.Module:
    """``module`` frozen for training: eval mode, no gradients, on ``device`` in ``dtype`` (floating tensors).

    A *borrowed* module (one of an in-memory bundle given by the caller, e.g. ComfyUI's loaded agent) is never moved
    or cast in place: when it is not already on ``device`` in ``dtype``, a copy is made and frozen instead, so the
    caller's model keeps its device and weights. A module the stage loaded itself is moved in place.
    """
    device = torch.device(device)
    elsewhere = any(
        p.device.type != device.type
        or (device.index is not None and p.device.index != device.index)
        or (p.is_floating_point() and p.dtype != dtype)
        for p in module.parameters()
    )
    if borrowed and elsewhere:
        module = copy.deepcopy(module)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def frozen_dtype(accelerator) -> torch.dtype:
    """dtype for frozen networks: the autocast dtype on GPUs (official: frozen ViT in bf16), fp32 on the CPU."""
    if accelerator.device.type == "cpu" or accelerator.mixed_precision == "no":
        return torch.float32
    return torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16


# ---------------------------------------------------------------------------------------------- task API
class StageTask:
    """One training stage. Subclasses set ``name``, ``self.model`` (the nn.Module given to
    ``accelerator.prepare``; its ``forward(**batch)`` returns a dict with ``loss``), and implement
    :meth:`batch` and :meth:`export`. ``trainable_names()`` lists the trained state-dict names in the exported
    component's naming (for tests / reports)."""

    name = "stage"
    model: nn.Module
    #: True when :meth:`batch` draws the global micro-batch and returns this rank's slice (see the module doc);
    #: the loop then keys the data RNG without the rank. False: every rank draws its own ``--batch-size`` samples
    #: from a per-rank stream (e.g. ``training.vae``).
    shards_global_batch = False

    def __init__(self, args, accelerator):
        self.args = args
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world = int(accelerator.num_processes)

    @property
    def global_batch_size(self) -> int:
        """Samples per micro-step over all processes: ``--batch-size`` x number of processes."""
        return int(self.args.batch_size) * self.world

    @property
    def local_slice(self) -> slice:
        """This rank's samples within the global micro-batch: ``[rank*B, (rank+1)*B)``."""
        b = int(self.args.batch_size)
        return slice(self.rank * b, (self.rank + 1) * b)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_names(self) -> List[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def batch(self, rng: random.Random, generator: torch.Generator) -> Dict[str, Any]:
        raise NotImplementedError

    def export(self, folder: Path, state_dict: Optional[Mapping[str, torch.Tensor]]) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out: Path) -> Optional[Path]:
    """Newest complete ``OUT/checkpoints/step-N`` (one holding ``trainer_state.json``), else None."""
    ckpts = Path(out) / "checkpoints"
    if not ckpts.is_dir():
        return None
    best = None
    for d in ckpts.iterdir():
        if d.is_dir() and d.name.startswith("step-") and d.name[5:].isdigit() and (d / STATE_FILE).is_file():
            if best is None or int(d.name[5:]) > int(best.name[5:]):
                best = d
    return best


def _json_value(value) -> str:
    """How a checkpoint records an argument JSON cannot hold: an in-memory init bundle by its kind (not by its
    repr, which lists every module), anything else (paths ...) as text."""
    return "<in-memory SeedStoryBundle>" if isinstance(value, SeedStoryBundle) else str(value)


def _save_checkpoint(accelerator, out: Path, step: int, args, keep: int) -> Path:
    ckpts = out / "checkpoints"
    final = ckpts / f"step-{step}"
    tmp = ckpts / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        ckpts.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "args": {k: v for k, v in vars(args).items() if k != "records"}}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, default=_json_value))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep > 0:
            old = sorted(
                (d for d in ckpts.iterdir() if d.is_dir() and d.name.startswith("step-") and d.name[5:].isdigit()),
                key=lambda d: int(d.name[5:]),
            )
            for d in old[:-keep]:
                shutil.rmtree(d, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _reset_accelerate_state() -> None:
    """Allow another Accelerator (other settings) later in the same process (ComfyUI, tests)."""
    try:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    except Exception:  # pragma: no cover - best effort, private API
        pass


def _make_accelerator(args):
    out = Path(args.out)
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None

    def make(cpu: bool):
        return Accelerator(
            cpu=cpu,
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=int(args.grad_accum),
            log_with=trackers,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            # frozen copies inside the trained module (peft original_module, pos_embed) get no gradient under DDP
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    accelerator = make(False)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and accelerator.num_processes == 1:
        # `accelerate launch` (torchrun) started several processes but found no GPU/XPU/...: accelerate then falls back
        # to one independent process per rank (each would train the whole batch alone). On the CPU the processes
        # form a gloo process group only with cpu=True (accelerate's MULTI_CPU): training/configs/cpu_ddp.yaml.
        _reset_accelerate_state()
        accelerator = make(True)
    check_distributed_request(accelerator, launched)
    return accelerator, trackers


def check_distributed_request(accelerator, launched: int) -> None:
    """Refuse a launch whose requested backend accelerate did not set up (instead of silently running another one).

    Raises RuntimeError when ``accelerate launch`` asked for FSDP or DeepSpeed (``ACCELERATE_USE_FSDP`` /
    ``ACCELERATE_USE_DEEPSPEED``) but the Accelerator runs something else -- e.g. FSDP on the CPU, where accelerate
    (1.x) only enables FSDP for GPU-like devices and would run plain MULTI_CPU DDP -- or when the launcher started
    ``launched`` processes and the Accelerator sees a different number.

    Called by :func:`run_training` on every Accelerator it makes; ``accelerator`` needs only ``distributed_type``,
    ``num_processes`` and ``device`` (a stand-in object will do)."""
    dt = accelerator.distributed_type
    for env, want in (
        ("ACCELERATE_USE_FSDP", DistributedType.FSDP),
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED),
    ):
        if os.environ.get(env, "false").lower() == "true" and dt != want:
            raise RuntimeError(
                f"accelerate launch requested {want.value} ({env}=true) but the Accelerator runs {dt.value} on "
                f"{accelerator.device} (accelerate only enables {want.value} on GPU-like devices, not the CPU). "
                "On the CPU use DDP: accelerate launch --config_file training/configs/cpu_ddp.yaml ..."
            )
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE) but the Accelerator sees "
            f"{accelerator.num_processes}; check the accelerate config (distributed_type, use_cpu)."
        )


# ---------------------------------------------------------------------------------------------- the loop
def run_training(
    task_factory: Callable[[argparse.Namespace, Any], StageTask],
    args: argparse.Namespace,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Train one stage. Returns metrics: ``step`` (optimizer steps done), ``start_step``, ``max_steps``,
    ``loss`` (last), ``losses`` (per step of this run), ``seconds_per_step``, ``cancelled``, ``stopped``,
    ``checkpoint`` (path), ``model`` (exported bundle folder or None), ``trainable`` (names), ``dropped``."""
    if not args.out:
        raise ValueError("--out is required (checkpoints, logs and the trained model go there).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator, trackers = _make_accelerator(args)
    threads_before = torch.get_num_threads()
    threads = int(getattr(args, "torch_threads", -1))
    if threads < 0 and accelerator.device.type == "cpu":
        threads = 1
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _run(task_factory, args, accelerator, trackers, out, progress, cancel)
    finally:
        torch.set_num_threads(threads_before)
        try:
            accelerator.end_training()
        except Exception:  # pragma: no cover
            pass
        _reset_accelerate_state()


def _run(task_factory, args, accelerator, trackers, out: Path, progress, cancel) -> Dict[str, Any]:
    set_seed(int(args.seed))
    task = task_factory(args, accelerator)
    params = task.trainable_parameters()
    if not params:
        raise ValueError(f"{task.name}: no trainable parameters.")
    optimizer = torch.optim.AdamW(
        params, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, weight_decay=args.weight_decay
    )
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_lr_lambda(args.warmup_steps, args.max_steps, args.min_lr_ratio)
    )
    model, optimizer = accelerator.prepare(task.model, optimizer)
    accelerator.register_for_checkpointing(lr_sched)

    start = 0
    resume = str(args.resume or "none")
    ckpt = None
    if resume == "auto":
        ckpt = latest_checkpoint(out)
    elif resume != "none":
        ckpt = Path(resume)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start = int(json.loads((ckpt / STATE_FILE).read_text())["step"])
        accelerator.print(f"[{task.name}] resumed from {ckpt} at step {start}")

    log_path = out / "train_log.csv"
    if accelerator.is_main_process:
        rows = [r for r in _read_csv(log_path) if int(r["step"]) <= start] if start else []
        with log_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
    if trackers:
        accelerator.init_trackers(
            task.name, config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )

    rank = accelerator.process_index
    world = accelerator.num_processes
    data_rank = 0 if getattr(task, "shards_global_batch", False) else rank
    total = int(args.max_steps)
    bar = tqdm(
        total=total, initial=start, desc=task.name, disable=args.no_progress or not accelerator.is_local_main_process
    )
    losses: List[float] = []
    times: List[float] = []
    cancelled = stopped = False
    step = start
    last_ckpt = ckpt
    model.train()
    t_run = time.perf_counter()
    while step < total:
        t0 = time.perf_counter()
        sums: Dict[str, float] = {}
        grad_norm = None
        for micro in range(int(args.grad_accum)):
            rng = micro_rng(args.seed, step, micro, data_rank)
            seed = rng.getrandbits(62)
            # dropout etc. (all devices); per rank, so that ranks do not share dropout masks (rank 0 == 1 process)
            torch.manual_seed(seed + rank)
            # data noise: the same stream on every rank (sharding tasks draw global tensors and slice them)
            gen = torch.Generator(device="cpu").manual_seed(seed + 1)
            batch = task.batch(rng, gen)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    result = model(**batch)
                loss = result["loss"]
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                    gn = accelerator.clip_grad_norm_(params, args.max_grad_norm)
                    grad_norm = float(gn) if gn is not None else None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            keys = [k for k, v in result.items() if k.endswith("loss") and v is not None]
            vals = torch.stack([result[k].detach().float().reshape(()) for k in keys])
            if world > 1:  # the global-batch value: mean of the ranks' (re-weighted) losses
                vals = accelerator.gather(vals[None]).mean(dim=0)
            for k, v in zip(keys, vals.tolist()):
                sums[k] = sums.get(k, 0.0) + v / int(args.grad_accum)
        if not accelerator.sync_gradients:  # pragma: no cover - accumulate() syncs on the last micro-step
            raise RuntimeError("gradient accumulation out of sync")
        lr = lr_sched.get_last_lr()[0]
        lr_sched.step()
        step += 1
        dt = time.perf_counter() - t0
        times.append(dt)
        loss_val = sums.get("loss", float("nan"))
        losses.append(loss_val)
        row = {
            "step": step,
            "loss": loss_val,
            "lm_loss": sums.get("lm_loss", ""),
            "rec_loss": sums.get("rec_loss", ""),
            "lr": lr,
            "grad_norm": grad_norm if grad_norm is not None else "",
            "seconds": round(dt, 4),
        }
        if accelerator.is_main_process:
            with log_path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        if trackers:
            accelerator.log({k: v for k, v in row.items() if isinstance(v, float) and k != "step"}, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}")
        if progress is not None:
            progress(step, total, loss_val)
        if args.save_every and step % int(args.save_every) == 0 and step < total:
            last_ckpt = _save_checkpoint(accelerator, out, step, args, args.keep_checkpoints)
        if cancel is not None:
            flag = bool(cancel())
            if world > 1:  # every rank must leave the loop at the same step (collectives follow)
                flag = bool(
                    accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0
                )
            if flag:
                cancelled = True
                break
        if args.stop_after and step - start >= int(args.stop_after) and step < total:
            stopped = True
            break
    bar.close()
    if step > start or last_ckpt is None:
        if last_ckpt is None or Path(last_ckpt).name != f"step-{step}":
            last_ckpt = _save_checkpoint(accelerator, out, step, args, args.keep_checkpoints)

    model_dir = None
    if not stopped and not args.no_export:
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            model_dir = out / "model"
            tmp = out / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            task.export(tmp, state)
            shutil.rmtree(model_dir, ignore_errors=True)
            os.replace(tmp, model_dir)
        accelerator.wait_for_everyone()
    run_steps = step - start
    return {
        "stage": task.name,
        "step": step,
        "start_step": start,
        "max_steps": total,
        "loss": losses[-1] if losses else None,
        "losses": losses,
        "seconds_per_step": (sum(times[1:]) / max(1, len(times) - 1))
        if len(times) > 1
        else (times[0] if times else None),
        "seconds": time.perf_counter() - t_run,
        "steps_run": run_steps,
        "cancelled": cancelled,
        "stopped": stopped,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "model": str(model_dir) if model_dir else None,
        "trainable": task.trainable_names(),
        "dropped": getattr(task, "dropped", 0),
        "num_processes": int(world),
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": int(args.batch_size) * int(world),
    }


def entry_main(train: Callable[..., Dict[str, Any]], argv=None) -> int:
    """The command-line body shared by the stage modules: run ``train(argv)`` and print its metrics summary (on the
    main process only when launched with several processes)."""
    metrics = train(argv)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print({k: v for k, v in metrics.items() if k not in ("losses", "trainable")}, flush=True)
    return 0
