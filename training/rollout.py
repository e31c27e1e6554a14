"""Free-running rollouts: the agent's own regressed features for every training frame (scheduled-sampling context).

    python -m training.rollout --model runs/tiny/stage2/model --data runs/tiny/data --out runs/tiny/rollout

At inference every context image after the first is the agent's own regressed features (the story engine stores
them, docs/reference.md §3); in instruction tuning (docs/reference.md §5) every context image is the visual
tokenizer's features of the TRUE frame. The gap is exposure bias: on held-out StoryStream-mini stories the tiny
model drew frames the judge agreed with 0.81 of the time when the true features were in the context (teacher
forcing) and 0.65 when its own were (seed 3000, 30 stories; docs/evaluation.md).

This module closes the loop the way DAgger / scheduled sampling do: it runs a trained agent over each training
story in visualization mode (the story's own captions given, the true first frame, multimodal attention sink with
the story's length as window) and records the regressed features of frames ``1..n-1``. Stages 2 and 3 can then put
these in place of the true context features (``--own-context FILE --own-context-prob P``,
:class:`training.stage2_instruction.StoryBatches`): the agent learns to continue from its own pictures, and the
de-tokenizer adapts to features regressed from such a context. Targets stay the true frames.

Output: ``OUT/own_context.safetensors`` — one tensor per record, key = the record's ``id``, shape
(n_frames - 1, T, D) float16 (frame ``f`` at row ``f - 1``), and ``OUT/meta.json`` (model path, records, seconds).
Regressed features do not depend on the de-tokenizer, so nothing is rendered.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.cache import CachePolicy
from seedstory_core.data.storystream import load_records
from seedstory_core.story import StorySettings

from .common import ImageSource

OWN_CONTEXT_FILE = "own_context.safetensors"


@torch.no_grad()
def rollout_record(bundle, captions: List[str], first_features: torch.Tensor) -> torch.Tensor:
    """The agent's free-running regressed features of frames 1..n-1 of one story.

    Args:
        bundle: a :class:`~seedstory_core.bundle.SeedStoryBundle` (agent in eval mode).
        captions: the story's n >= 2 captions (caption 0 opens the story, the others are drawn in turn).
        first_features: (1, T, D) visual-tokenizer features of the true first frame.

    Returns: (n - 1, T, D) float32 CPU tensor; row i holds frame i + 1, regressed with the agent's own earlier
    features in its context (visualization mode, greedy, multimodal attention sink with window n).

    Raises: ValueError for fewer than 2 captions.
    """
    if len(captions) < 2:
        raise ValueError(f"rollout_record: a story needs at least 2 captions, found {len(captions)}.")
    n = len(captions)
    settings = StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=n))
    engine = bundle.engine(settings.policy)
    state = engine.start(captions[0], features=first_features, settings=settings)
    _, results = engine.run(state, n - 1, texts=captions[1:], mode="visualization")
    return torch.cat([r.features.detach().float().cpu() for r in results], dim=0)


_WORKER: Dict[str, object] = {}


def _worker_init(model) -> None:
    torch.set_num_threads(1)
    bundle = SeedStoryBundle.load(Path(model))
    bundle.agent.eval()
    _WORKER["bundle"] = bundle


def _rollout_one(bundle, images, records, r: int) -> torch.Tensor:
    first = bundle.visual_tokenizer.encode_images([images.open(r, 0)], mode="squash")[:1].float()
    return rollout_record(bundle, records[r]["captions"], first).to(torch.float16).contiguous()


def _worker_chunk(job):
    records, root, indices = job
    images = ImageSource(records, root)
    return [(r, _rollout_one(_WORKER["bundle"], images, records, r)) for r in indices]


def rollout(
    model,
    data,
    out,
    *,
    records: Optional[List[dict]] = None,
    max_records: int = 0,
    workers: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, object]:
    """Roll the agent at ``model`` (bundle folder) out over every record of ``data`` and write ``out``.

    ``data``: a training-data folder or .jsonl, or ``records`` in memory
    (:func:`seedstory_core.data.storystream.load_records`, as the stages' ``--data`` / ``records=``); every record
    is keyed by its first frame's cache key. The first frame's features use the stage-2 transform (``squash``), as
    the training batches do. Returns the meta dict written to ``out/meta.json``. Raises ValueError /
    FileNotFoundError for missing data or model.

    ``workers``: processes (0 = one per CPU core, at most one per record). Every story is rolled out by one
    single-threaded process, so the features do not depend on the number of workers (stories are independent;
    ``tests/training/test_training.py`` checks 1 vs 2 workers bit for bit).
    """
    t0 = time.time()
    if not Path(model).is_dir():
        raise FileNotFoundError(f"rollout: model bundle folder not found: {model}")
    records, root = load_records(data, records, None, max_records)
    images = ImageSource(records, root)
    keys = [images.key(r, 0) for r in range(len(records))]
    if len(set(keys)) != len(keys):
        raise ValueError("rollout: two records start with the same frame; each story needs its own first frame.")
    n_workers = int(workers) if workers and workers > 0 else (os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, len(records)))
    done: Dict[int, torch.Tensor] = {}
    if n_workers == 1:
        threads = torch.get_num_threads()
        try:
            _worker_init(model)  # single-threaded, like every worker
            for r in range(len(records)):
                done[r] = _rollout_one(_WORKER["bundle"], images, records, r)
                if progress is not None:
                    progress(len(done), len(records))
        finally:
            _WORKER.clear()
            torch.set_num_threads(threads)
    else:
        size = max(1, min(8, len(records) // n_workers))
        chunks = [list(range(a, min(a + size, len(records)))) for a in range(0, len(records), size)]
        ctx = mp.get_context("spawn")  # no forked torch state
        with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_worker_init, initargs=(str(model),)) as ex:
            futures = [ex.submit(_worker_chunk, (records, root, c)) for c in chunks]
            for f in as_completed(futures):
                for r, t in f.result():
                    done[r] = t
                if progress is not None:
                    progress(len(done), len(records))
    tensors = {keys[r]: done[r] for r in range(len(records))}
    return write_own_context(out, tensors, model=model, data=data, workers=n_workers, seconds=time.time() - t0)


def write_own_context(out, tensors: Dict[str, torch.Tensor], *, model, data, seconds: float, **extra) -> Dict:
    """Write ``out/own_context.safetensors`` (``tensors``: record key -> (n - 1, T, D) float16) and ``out/meta.json``
    (model, data, records, ``extra``, seconds); returns the meta dict. Shared by the rollouts and
    :mod:`training.corrupt_context`, whose files stage 2 reads alike (``--own-context``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / OWN_CONTEXT_FILE))
    meta = {
        "model": str(model),
        "data": str(data) if data is not None else "records in memory",
        "records": len(tensors),
        **extra,
        "seconds": round(seconds, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


class OwnContext:
    """Reads an ``own_context.safetensors`` file: :meth:`get` gives the rolled-out features of one frame.

    Raises FileNotFoundError for a missing file (with the command that writes it) and KeyError, with the record id,
    for a record the file does not cover."""

    def __init__(self, path):
        path = Path(path)
        if path.is_dir():
            path = path / OWN_CONTEXT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"own-context file not found: {path}. Write it with `python -m training.rollout --model BUNDLE "
                "--data DATA --out DIR` and pass DIR or DIR/own_context.safetensors."
            )
        self.path = path
        self._tensors: Dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                self._tensors[key] = f.get_tensor(key)

    def get(self, record_id, frame: int) -> torch.Tensor:
        """(T, D) float32 features of ``frame`` (>= 1) of the record ``record_id``."""
        key = str(record_id)
        if key not in self._tensors:
            raise KeyError(f"{self.path} has no rollout for record {key!r}; roll out the same training data.")
        t = self._tensors[key]
        if not 1 <= frame <= t.shape[0]:
            raise KeyError(f"{self.path}: record {key!r} has frames 1..{t.shape[0]}, asked for {frame}.")
        return t[frame - 1].float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.rollout", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a trained bundle folder (e.g. runs/tiny/stage2/model)")
    p.add_argument("--data", required=True, help="training data folder or .jsonl (the stages' --data)")
    p.add_argument("--out", required=True, type=Path, help="folder for own_context.safetensors and meta.json")
    p.add_argument("--max-records", type=int, default=0, help="roll out only the first N records (0 = all)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per CPU core)")
    args = p.parse_args(argv)
    bar = tqdm(desc="rollout", unit="story")

    def progress(i, total):
        bar.total = total
        bar.update(1)

    meta = rollout(
        args.model, args.data, args.out, max_records=args.max_records, workers=args.workers, progress=progress
    )
    bar.close()
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
