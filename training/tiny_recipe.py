"""One command that trains the bundled tiny SEED-Story model on StoryStream-mini (CPU, 2 cores; times: the model card).

    python -m training.tiny_recipe --out runs/tiny --export models/seedstory-tiny

Steps (each a normal training entry point, resumable; ``--scale`` multiplies every step count for smoke runs). After
stage 0 the recipe has two independent branches from stage 0's bundle: the de-tokenizer's (the VAE and stage 1) and
the agent's (stage 2, the scheduled-sampling phases and the cast-corrupted context they read, which needs only the
frozen visual tokenizer; none of them reads the de-tokenizer). With ``--jobs 2`` (the default) the first branch runs
in a second process beside the second, and ``assemble`` joins the two. Each process keeps torch's thread count, so
``--jobs 1`` (one step after the other) gives the same weights.

0. data   — StoryStream-mini, ``--stories`` stories of 30 frames (seed ``--data-seed``), chunked into 10-frame
            stories as the official data (docs/reference.md §5).
1. init   — a tokenizer trained on the data's captions (+ the 66 image tokens) and a seeded random tiny model.
1b. stage0 — the visual tokenizer is pretrained CLIP-style on the training frames and their attribute descriptions
            (``training.stage0_visual_tokenizer``); every later stage keeps it frozen, as the paper keeps its
            pretrained ViT frozen. A random ViT hardly separates the characters. Before/after feature measurements
            (cosine of consecutive frames with a different cast, a linear cast probe on held-out frames) are
            recorded in ``RUN/recipe.json``. Leave ``stage0`` out of ``--stages`` to train on the random ViT.
2. vae    — the tiny VAE learns to reconstruct frames (a random VAE has no usable latent space; SD-XL's is given);
            at export its latents are calibrated to unit variance (per-channel latents_mean/latents_std).
3. stage1 — de-tokenizer pretraining: ViT features -> ResamplerXLV2 -> UNet (full UNet: it starts random), with 10%
            condition dropout to the unconditional (all-zero image) features so classifier-free guidance works;
            12000 steps (it runs beside the agent's branch; 8000 before: the loss was still falling, and the longer run
            draws the cast, the looks and the object measurably better, docs/training.md "Tiny model recipe").
4. stage2 — instruction tuning on random-length story prefixes (CE + per-token cosine), base LLaMA trained too
            (``--train-base``: LoRA alone cannot teach a random LLaMA a language) and the text loss on every caption
            (``--text-loss all``: with the official last-caption-only loss the tiny model learned the marginal
            caption distribution and ignored the story context in 900 steps — every greedy sentence was the same).
4a. rollout — the stage-2 agent continues every training story in visualization mode from its true first frame;
            its regressed features of frames 1.. are saved (``training.rollout``). The next phase puts them in
            place of the true context images (scheduled sampling, :data:`OWN_CONTEXT`): at inference the context
            holds the agent's own features, and teacher-forced training alone left a large exposure bias.
4b. stage2b — a short second phase of stage 2 from the stage-2 model with the regression loss weighted x10
            (``--rec-loss-scale 10``, 300 steps, lr 2e-4, seed + 1), half of its samples with the rollout's
            context: once the LM loss has settled, the emphasis brings the regressed features closer to what the
            sentence says.
4c. rollout2, stage2c, rollout3, stage2d — the same again from the stage-2b and then the stage-2c agent (DAgger
            rounds 2 and 3: each agent's own features differ from its predecessor's; seeds + 2, + 3).
4d. corrupt, stage2e — in the agent's branch, just before stage 2e: :mod:`training.corrupt_context` re-draws every
            training story's context frames with one character's presence flipped (a character who enters later is
            removed; for 2/3 of the records the frames are first taken from another 10-frame window of the same
            story, :data:`CORRUPT_OTHER_WINDOW_PROB`), and a 300-step phase puts them in half of its samples:
            free-running, the agent lost characters that entered after the first frame, and once lost they stayed
            lost (seed + 4).
4e. stage2f, stage2g — two more phases with stage 2's own loss (regression x1, true contexts only) at lr 2e-4, 300
            steps each, the second from the first's bundle (seeds + 5, + 6): the regression-weighted phases leave the
            language under-trained, and free-running the agent wrote "Max and Max ..." in about a fifth of its
            sentences; after these phases about 1 in 70 (docs/training.md, "The language phases"). Stage 2g also
            regresses the last 8 context images of each sample, each from the prefix before it
            (``--context-targets 8``, :mod:`training.context_targets`; docs/training.md, "Context targets").
4f. assemble — the last agent step's bundle with stage 1's de-tokenizer (``RUN/assemble/model``).
5. stage3 — de-tokenizer adaptation on the frozen agent's regressed features (agent in eval mode; the same 10%
            condition dropout, so adaptation keeps the unconditional branch). NOT in the default ``--stages``: on
            this model it brought no gain (docs/training.md "Tiny model recipe"); add it to run it.
6. export — the assembled bundle (stage 3's when stage 3 was run) and a held-out demo start frame/sentence. No
            judge ships with a model: the evaluation (``python -m evaluation.evaluate``) uses its own fixed judge
            (``evaluation/judge``).

Wall-clock per stage and the final losses are written to ``RUN/recipe.json`` and the model card.

``--export DIR`` is built in a temporary folder next to DIR and swapped in only when complete. An existing DIR is
replaced only when it is empty or a previous export (its ``recipe.json`` records an ``export`` stage); files a
previous export did not write (e.g. a hand-written ``MODEL_CARD.md``) are carried over and listed. Any other
non-empty folder is refused unless ``--force`` (which replaces it entirely); DIR may never be, or contain, the run
folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

from seedstory_core.data import mini
from seedstory_core.tiny import build_tiny_tokenizer, random_tiny_bundle
from training.corrupt_context import corrupt_context
from training.rollout import OWN_CONTEXT_FILE, rollout
from training.stage0_visual_tokenizer import measure_bundles, train_stage0, training_frame_hashes
from training.stage1_detokenizer import train_stage1
from training.stage2_instruction import train_stage2
from training.stage3_adaptation import train_stage3
from training.vae import train_vae

#: (stage, extra CLI arguments) — step counts are scaled by --scale
STAGES = {
    "stage0": ["--max-steps", "500", "--batch-size", "128", "--lr", "1e-3", "--warmup-steps", "25"],
    "vae": ["--max-steps", "1400", "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "20"],
    "stage1": [
        "--unet-train",
        "full",
        "--max-steps",
        "12000",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "50",
        "--min-lr-ratio",
        "0.1",
        "--cond-dropout",
        "0.1",
    ],
    "stage2": [
        "--train-base",
        "--text-loss",
        "all",
        "--max-steps",
        "900",
        "--batch-size",
        "4",
        "--lr",
        "5e-4",
        "--warmup-steps",
        "50",
        "--cast-prob",
        "0.5",
    ],
    # continuations of stage 2 (same trainer) with the regression loss emphasised (and scheduled sampling, OWN_CONTEXT)
    "stage2b": [
        "--train-base",
        "--text-loss",
        "all",
        "--max-steps",
        "300",
        "--batch-size",
        "4",
        "--lr",
        "2e-4",
        "--warmup-steps",
        "10",
        "--rec-loss-scale",
        "10",
        "--cast-prob",
        "0.5",
    ],
    "stage3": [
        "--max-steps",
        "600",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--lr",
        "1e-4",
        "--warmup-steps",
        "50",
        "--cond-dropout",
        "0.1",
    ],
}
STAGES["stage2c"] = list(STAGES["stage2b"])  # scheduled-sampling rounds 2 and 3: the same phase, a new rollout
STAGES["stage2d"] = list(STAGES["stage2b"])
STAGES["stage2e"] = list(STAGES["stage2b"])  # the same phase on the cast-corrupted context (training.corrupt_context)
# the language phases, last: stage 2's own settings (regression loss x1, true contexts) at the later phases' lr, twice
# (the second from the first's bundle, a new seed); free-running, the agent still wrote "Max and Max ..."
# (docs/training.md, "The language phases")
_REC = STAGES["stage2b"].index("--rec-loss-scale")
STAGES["stage2f"] = STAGES["stage2b"][:_REC] + STAGES["stage2b"][_REC + 2 :]  # stage 2b without the x10 regression
# stage 2g also regresses the last 8 context images of each sample (training.context_targets): on seed 1000 it raised
# parse at 3x from 0.824 to 0.935 and the cast half with the sheet by 0.069 against a same-sample plain phase
# (docs/training.md, "Context targets")
STAGES["stage2g"] = list(STAGES["stage2f"]) + ["--context-targets", "8"]
#: training steps in order: (step name, entry function of the trainer module, seed offset)
TRAIN_STEPS = (
    ("stage0", train_stage0, 0),
    ("vae", train_vae, 0),
    ("stage1", train_stage1, 0),
    ("stage2", train_stage2, 0),
    ("rollout", rollout, 0),
    ("stage2b", train_stage2, 1),
    ("rollout2", rollout, 0),
    ("stage2c", train_stage2, 2),
    ("rollout3", rollout, 0),
    ("stage2d", train_stage2, 3),
    ("stage2e", train_stage2, 4),
    ("stage2f", train_stage2, 5),
    ("stage2g", train_stage2, 6),
    ("stage3", train_stage3, 0),
)
#: the agent's branch, in order (stage 2 and the scheduled-sampling rounds): it never reads the de-tokenizer, so it runs
#: beside stage 1 with ``--jobs 2`` (each process keeps torch's thread count, so the weights are the same as one after
#: the other; tested at 1% scale)
AGENT_STEPS = (
    "stage2",
    "rollout",
    "stage2b",
    "rollout2",
    "stage2c",
    "rollout3",
    "stage2d",
    "stage2e",
    "stage2f",
    "stage2g",
)
#: the second branch, in order: the VAE and the de-tokenizer (stage 1); neither reads the agent, and the agent's steps
#: never read them. The cast-corrupted context (``corrupt``, 30 s; it needs only stage 0's frozen visual tokenizer)
#: is made in the main process just before stage 2e, which reads it, so stage 2e never waits for stage 1.
DETOKENIZER_STEPS = ("vae", "stage1")
#: scheduled sampling: per step, (the rollout it reads, the probability that a sample's context images after the
#: first are the agent's own rolled-out features, ``training.rollout``, instead of the true frames'). Added only when
#: that rollout exists (leave the rollouts out of --stages to train on true contexts only). Probabilities chosen on
#: seed 1000: 0.5 drew better frames than 1.0 in the second round (docs/training.md).
OWN_CONTEXT = {
    "stage2b": ("rollout", "0.5"),
    "stage2c": ("rollout2", "0.5"),
    "stage2d": ("rollout3", "0.5"),
    "stage2e": ("corrupt", "0.5"),
}
#: the corrupted context (training.corrupt_context): share of records whose context frames come from another 10-frame
#: window of the same story before the cast is flipped (chosen on seed 1000: docs/training.md, "Characters who enter
#: later")
CORRUPT_OTHER_WINDOW_PROB = 0.667
HELD_OUT_SEED = 1000
#: What an export writes (top-level names); anything else in a previous export is the user's and is kept.
EXPORT_ENTRIES = (
    "seedstory_config.json",
    "tokenizer",
    "visual_tokenizer",
    "agent",
    "detokenizer",
    "demo_start.png",
    "demo_start.txt",
    "recipe.json",
)
#: What earlier versions of the export wrote and this one no longer does: dropped when a previous export is replaced
#: (``probe``: each model used to ship its own attribute probe; the evaluation now has one fixed judge).
LEGACY_EXPORT_ENTRIES = ("probe",)


class ExportRefused(RuntimeError):
    """--export points at a folder this recipe must not replace (see :func:`check_export_target`)."""


def is_previous_export(folder: Path) -> bool:
    """True when ``folder/recipe.json`` is a tiny_recipe record with an ``export`` stage (the export's marker)."""
    try:
        record = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("stages"), dict) and "export" in record["stages"]


def check_export_target(export: Path, run: Path, *, force: bool = False) -> List[str]:
    """Decide whether ``--export`` may replace ``export``; returns the names of user files to carry over.

    Allowed: a missing or empty folder; a previous export (:func:`is_previous_export`), whose entries not in
    :data:`EXPORT_ENTRIES` are returned (kept in the new export); anything with ``force``.

    Raises:
        ExportRefused: ``export`` is the run folder, lies inside it or contains it (even with ``force``: the export
            would delete the model it copies); it is a file; or it is a non-empty folder that is not a previous
            export and ``force`` is not set. The message lists what was found and what to do.
    """
    target, run_dir = export.resolve(), run.resolve()
    if target == run_dir or run_dir.is_relative_to(target) or target.is_relative_to(run_dir):
        if target == run_dir:
            where = "the run folder"
        elif target.is_relative_to(run_dir):
            where = "inside the run folder"
        else:
            where = "a folder that holds the run folder"
        raise ExportRefused(
            f"--export {export}: it is {where} "
            f"(--out {run}); replacing it would delete the trained model it copies. Export to a separate folder, "
            "e.g. models/seedstory-tiny."
        )
    if not export.exists():
        return []
    if not export.is_dir():
        raise ExportRefused(f"--export {export}: expected a folder (or nothing), found a file. Pick a folder name.")
    entries = sorted(p.name for p in export.iterdir())
    if not entries:
        return []
    if is_previous_export(export):
        return [name for name in entries if name not in EXPORT_ENTRIES + LEGACY_EXPORT_ENTRIES]
    if force:
        return []
    shown = ", ".join(entries[:8]) + (f" ... ({len(entries)} entries)" if len(entries) > 8 else "")
    raise ExportRefused(
        f"--export {export}: the folder is not empty and is not a previous tiny_recipe export (no recipe.json with "
        f"an 'export' stage); it holds: {shown}. Nothing was deleted. Export to a new or empty folder, or add "
        "--force to replace this folder and everything in it."
    )


def scaled_args(args: List[str], scale: float) -> List[str]:
    """A copy of the CLI arguments ``args`` (a :data:`STAGES` entry) with the values of ``--max-steps`` and
    ``--warmup-steps`` multiplied by ``scale`` (``--scale``) and rounded, at least 1."""
    out = list(args)
    for flag in ("--max-steps", "--warmup-steps"):
        if flag in out:
            i = out.index(flag) + 1
            out[i] = str(max(1, int(round(int(out[i]) * scale))))
    return out


def _train_step(name: str, run: Path, start_bundle: Path, seed: int, scale: float, measure_stories: int) -> Dict:
    """Run the training step ``name`` of :data:`TRAIN_STEPS` from ``start_bundle`` into ``run/name``; returns its
    ``recipe.json`` entry. Runs in the recipe's process or in the second one (``--jobs 2``): everything it needs is in
    its arguments and the run folder."""
    entry, seed_offset = next((e, o) for n, e, o in TRAIN_STEPS if n == name)
    out, data_dir = run / name, run / "data"
    t0 = time.time()
    cli = [
        "--data",
        str(data_dir),
        "--init",
        f"bundle:{start_bundle}",
        "--out",
        str(out),
        "--seed",
        str(seed + seed_offset),
        "--save-every",
        "200",
    ] + scaled_args(STAGES[name], scale)
    if name in OWN_CONTEXT:
        rollout_step, prob = OWN_CONTEXT[name]
        own = run / rollout_step / OWN_CONTEXT_FILE
        if own.is_file():
            cli += ["--own-context", str(own), "--own-context-prob", prob]
    metrics = entry(cli)
    extra = {}
    if name == "stage0" and measure_stories > 0:
        t_m = time.time()
        extra["features"] = measure_bundles(
            [str(start_bundle), str(out / "model")],
            exclude_hashes=training_frame_hashes(data_dir),
            stories=measure_stories,
        )
        extra["features"]["seconds"] = round(time.time() - t_m, 1)
    return {
        "seconds": round(time.time() - t0, 1),
        "args": cli,
        "losses": _last_losses(out),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        **extra,
    }


def _detokenizer_branch(run: Path, vit_bundle: Path, seed: int, scale: float, steps: List[str]) -> List:
    """The second branch (:data:`DETOKENIZER_STEPS` that are in ``steps``, in order): the VAE from ``vit_bundle``
    (stage 0's bundle), then stage 1 from the VAE's bundle. Returns ``[(name, recipe.json entry)]``.
    Runs in the recipe's process (``--jobs 1``) or in the second one (``--jobs 2``)."""
    entries = []
    base = vit_bundle
    for name in ("vae", "stage1"):
        if name in steps:
            entries.append((name, _train_step(name, run, base, seed, scale, 0)))
        folder = run / name / "model"
        base = folder if folder.is_dir() else base
    return entries


def _corrupt_step(run: Path, vit_bundle: Path, seed: int) -> Dict:
    """The cast-corrupted context of every training story (:mod:`training.corrupt_context`), encoded by
    ``vit_bundle``'s frozen visual tokenizer (stage 0's) into ``run/corrupt``; returns its ``recipe.json`` entry."""
    t0 = time.time()
    meta = corrupt_context(
        vit_bundle, run / "data", run / "corrupt", seed=seed, other_window_prob=CORRUPT_OTHER_WINDOW_PROB
    )
    return {"seconds": round(time.time() - t0, 1), **meta}


def assemble_bundle(agent_bundle: Path, detokenizer_bundle: Optional[Path], out: Path) -> Path:
    """Write ``out``: the bundle ``agent_bundle`` (agent, tokenizer, visual tokenizer, config) with the
    ``detokenizer/`` folder of ``detokenizer_bundle`` (unchanged when None). The agent's steps (stage 2, the
    rollouts, 2b-2d) never read the de-tokenizer and stage 1 never changes anything else, so the two branches are
    trained apart and joined here. Returns ``out``; an existing ``out`` is replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(agent_bundle, tmp)
    if detokenizer_bundle is not None and Path(detokenizer_bundle).resolve() != Path(agent_bundle).resolve():
        shutil.rmtree(tmp / "detokenizer")
        shutil.copytree(Path(detokenizer_bundle) / "detokenizer", tmp / "detokenizer")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _last_losses(run_dir: Path) -> Dict[str, float]:
    log = run_dir / "train_log.csv"
    if not log.is_file():
        return {}
    rows = list(csv.DictReader(log.open()))
    if not rows:
        return {}
    tail = rows[-min(20, len(rows)) :]
    out = {}
    for key in tail[0]:
        if "loss" in key:
            vals = [float(r[key]) for r in tail if r.get(key) not in (None, "")]
            if vals:
                out[key] = sum(vals) / len(vals)
    first = {k: float(v) for k, v in rows[0].items() if "loss" in k and v not in (None, "")}
    return {"final_mean_last20": out, "first": first, "steps": len(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tiny_recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (data, checkpoints, logs)")
    parser.add_argument(
        "--export", type=Path, default=None, help="copy the final model bundle here (e.g. models/seedstory-tiny)"
    )
    parser.add_argument("--stories", type=int, default=400, help="StoryStream-mini training stories (30 frames each)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="model init / training seed")
    parser.add_argument("--vocab", type=int, default=512, help="base vocabulary of the caption tokenizer")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (smoke runs)")
    parser.add_argument(
        "--stages",
        default="data,init,stage0,vae,stage1,corrupt,stage2,rollout,stage2b,stage2e,stage2f,stage2g,export",
        help="comma list of steps to run (without stage0 the later stages use the random ViT; add stage3 before "
        "export for de-tokenizer adaptation)",
    )
    parser.add_argument(
        "--measure-stories",
        type=int,
        default=40,
        help="stories per seed for stage 0's before/after feature measurement (0 = skip it)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 (default): the VAE and stage 1 (the de-tokenizer) run in a second process beside the agent's steps, "
        "which never read them; 1: one step after the other. Same weights.",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="let --export replace a non-empty folder that is not a previous export (all of it)",
    )
    args = parser.parse_args(argv)
    if args.export is not None and "export" in [s.strip() for s in args.stages.split(",")]:
        try:  # checked before hours of training, not after
            check_export_target(args.export, args.out, force=args.force)
        except ExportRefused as err:
            parser.error(str(err))

    run = args.out
    run.mkdir(parents=True, exist_ok=True)
    record_path = run / "recipe.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"stages": {}}
    steps = [s.strip() for s in args.stages.split(",") if s.strip()]
    data_dir = run / "data"

    def done(name, t0=None, entry=None, **extra):
        record["stages"][name] = entry if entry is not None else {"seconds": round(time.time() - t0, 1), **extra}
        record_path.write_text(json.dumps(record, indent=2))
        print(f"[tiny_recipe] {name}: {record['stages'][name]['seconds']} s", flush=True)

    if "data" in steps:
        t0 = time.time()
        mini.generate_dataset(data_dir, seed=args.data_seed, stories=args.stories, size=64, frames=30)
        done("data", t0, stories=args.stories, seed=args.data_seed)

    if "init" in steps:
        t0 = time.time()
        captions = [
            c
            for line in (data_dir / "stories.jsonl").read_text().splitlines()
            if line.strip()
            for c in json.loads(line)["captions"]
        ]
        tokenizer = build_tiny_tokenizer(captions, vocab_size=args.vocab)
        bundle = random_tiny_bundle(args.seed, tokenizer=tokenizer)
        bundle.save(run / "init")
        done("init", t0, vocab=tokenizer.vocab_size)

    def model_of(name: str) -> Optional[Path]:
        folder = run / name / "model"
        return folder if folder.is_dir() else None

    # stage 0 (the visual tokenizer) first: every later step keeps it frozen
    base = run / "init"
    if "stage0" in steps:
        done("stage0", entry=_train_step("stage0", run, base, args.seed, args.scale, args.measure_stories))
    base = model_of("stage0") or base  # a step left out and never run is skipped
    # then two independent branches from stage 0's bundle: the VAE and the de-tokenizer (stage 1) (DETOKENIZER_STEPS),
    # and the agent's (stage 2, the scheduled-sampling phases, AGENT_STEPS, and the corrupted context before stage 2e);
    # with --jobs 2 the first runs in a second process beside the agent's steps
    pending = None
    branch = [name for name in DETOKENIZER_STEPS if name in steps]
    if branch:
        if args.jobs > 1 and any(name in steps for name in AGENT_STEPS):
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            pending = pool.submit(_detokenizer_branch, run, base, args.seed, args.scale, branch)
            print(f"[tiny_recipe] {','.join(branch)}: started in a second process (--jobs 2)", flush=True)
        else:
            for name, entry in _detokenizer_branch(run, base, args.seed, args.scale, branch):
                done(name, entry=entry)

    def join_branch():
        nonlocal pending
        if pending is not None:
            for name, entry in pending.result():
                done(name, entry=entry)
            pool.shutdown()
            pending = None

    agent = base
    corrupt_done = False
    for name in AGENT_STEPS:
        if pending is not None and pending.done():
            join_branch()  # a failed branch stops the recipe now, not after the agent's steps
        if name in OWN_CONTEXT and OWN_CONTEXT[name][0] == "corrupt" and "corrupt" in steps:
            done("corrupt", entry=_corrupt_step(run, base, args.seed))  # stage 2e reads it
            corrupt_done = True
        if name.startswith("rollout"):
            if name in steps:
                t0 = time.time()
                meta = rollout(agent, data_dir, run / name)
                done(name, t0, records=meta["records"], model=meta["model"])
            continue  # no model: the next stage starts from the same bundle
        if name in steps:
            done(name, entry=_train_step(name, run, agent, args.seed, args.scale, 0))
        agent = model_of(name) or agent
    if "corrupt" in steps and not corrupt_done:  # asked for without stage 2e
        done("corrupt", entry=_corrupt_step(run, base, args.seed))
    join_branch()
    # the join: the agent's last bundle with stage 1's de-tokenizer (stage 3 adapts that de-tokenizer to the agent)
    # (an export alone of a run whose stage 3 exists takes stage 3's bundle as it is: nothing to join)
    previous = None
    if "stage3" in steps or ("export" in steps and model_of("stage3") is None):
        t0 = time.time()
        detokenizer = model_of("stage1")
        if not agent.is_dir():
            raise SystemExit(f"[tiny_recipe] no model in {agent}: run the training steps first (see --stages).")
        previous = assemble_bundle(agent, detokenizer, (run / "assemble" / "model"))
        done("assemble", t0, agent=str(agent), detokenizer=str(detokenizer or agent))
        if "stage3" in steps:
            done("stage3", entry=_train_step("stage3", run, previous, args.seed, args.scale, 0))
    previous = model_of("stage3") or previous

    if "export" in steps and args.export is not None:
        t0 = time.time()
        final = previous  # stage 3's bundle if it was ever run, else the assembled one
        target = args.export
        keep = check_export_target(target, run, force=args.force)  # again: the folder may have changed meanwhile
        target.parent.mkdir(parents=True, exist_ok=True)
        export = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
        try:
            shutil.rmtree(export)
            shutil.copytree(final, export)
            story = mini.generate_story(HELD_OUT_SEED, 0)
            mini.render_story(story, size=64)[0].save(export / "demo_start.png")
            (export / "demo_start.txt").write_text(story["captions"][0] + "\n")
            for name in keep:  # the user's own files in a previous export (e.g. MODEL_CARD.md)
                src = target / name
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, export / name)
            done("export", t0, path=str(target), kept=keep)
            (export / "recipe.json").write_text(json.dumps(record, indent=2))
            if target.exists():
                old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
                target.rename(old)
                export.rename(target)
                shutil.rmtree(old)
            else:
                export.rename(target)
        except BaseException:
            shutil.rmtree(export, ignore_errors=True)
            raise
        if keep:
            print(
                f"[tiny_recipe] kept in {target} (not written by the recipe; update them for the new model): "
                + ", ".join(keep),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
