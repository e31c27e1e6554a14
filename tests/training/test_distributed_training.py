"""Multi-process training on the CPU: ``accelerate launch`` with 2 processes (DDP over gloo,
``training/configs/cpu_ddp.yaml``) must give the loss curve and the weights of ONE process at the same global batch.

For each of stages 1, 2 and 3: one process with ``--batch-size 4`` (in this pytest process) against two processes
with ``--batch-size 2`` each (a real ``accelerate launch`` subprocess), same seed, same data, a few optimizer steps.
The trainer draws the global micro-batch from a rank-independent key and gives rank r samples [2r, 2r+2), so the two
runs see the same samples and the same noise; only the float reduction order differs (the gradient of 4 samples is
one batched sum in one process, the average of two 2-sample sums after a gloo all-reduce in two).

Tolerance (measured: max relative loss difference ~3e-7 over 5 steps, i.e. a few float32 ulps):
    losses, per-loss-term values and grad norms: |a - b| <= 1e-5 * |a| + 1e-7
    trained weights: ||w_1proc - w_2proc|| <= 1e-2 * ||w_1proc - w_init|| (over all tensors of the trained component)
The weights get a relative criterion, not an element bound: parameters whose true gradient is ~0 (biases feeding a
normalisation, converged ones) have a gradient made of rounding noise, and AdamW divides it by its own RMS, so their
step is +-lr in either run with a sign set by the noise (measured: element differences up to 2e-4 at lr 1e-3 in
stage 1, while the whole-model difference is ~1e-3 of the update in stage 1 and ~1e-5 in stages 2/3).
Stage 2 runs with ``--lora-dropout 0``: dropout masks are drawn per process for differently shaped tensors, so with
dropout on the two runs are equal in distribution only. Stages 1 and 3 have no dropout (stage 3's agent is in eval
mode); their condition dropout is a per-sample coin drawn with the data and is on here (0.3).
Stage 1's 2-process run is split: 2 steps, then a new launch resumes from the checkpoint (``--resume auto``).
A control shows the comparison can fail: one process with ``--batch-size 2`` (what two ranks that both took the first
half would train on) differs from the 4-sample curve far beyond the tolerance.
Wall time: ~2-3 minutes on 2 CPU cores (each launch imports torch/diffusers/transformers in 2 processes).
"""

import contextlib
import copy
import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import training.stage1_detokenizer as s1
import training.stage2_instruction as s2
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from training.common import micro_rng, rank_weight, resolve_args
from training.context_targets import CONTEXT_POSITIONS, CONTEXT_TARGETS

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "training" / "configs" / "cpu_ddp.yaml"
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7
WEIGHT_RTOL = 1e-2
STEPS = 5

#: stage -> (module, entry function, extra CLI options, exported component compared)
STAGES = {
    "stage1": (
        "training.stage1_detokenizer",
        "train_stage1",
        ["--unet-train", "full", "--cond-dropout", "0.3"],
        "detokenizer",
    ),
    "stage2": (
        "training.stage2_instruction",
        "train_stage2",
        ["--train-base", "--text-loss", "all", "--lora-dropout", "0"],
        "agent",
    ),
    "stage3": (
        "training.stage3_adaptation",
        "train_stage3",
        ["--grad-accum", "2", "--cond-dropout", "0.3"],
        "detokenizer",
    ),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    mini.generate_dataset(root, seed=0, stories=4, size=64, frames=6, chunk_len=6)
    return root


def _common(data_dir, init_bundle, extra):
    return [
        "--data",
        str(data_dir),
        "--init",
        f"bundle:{init_bundle}",
        "--max-steps",
        str(STEPS),
        "--warmup-steps",
        "1",
        "--lr",
        "1e-3",
        "--no-progress",
        "--resume",
        "none",
        "--seed",
        "3",
        *extra,
    ]


def _log(folder):
    with (Path(folder) / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _launch_env():
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ACCELERATE_")
        and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _launch(module, args, num_processes=2):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIG),
        "--num_processes",
        str(num_processes),
        "-m",
        module,
        *args,
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_launch_env(), timeout=600)
    assert out.returncode == 0, (
        f"accelerate launch failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    )
    return out


def _close(a, b):
    return abs(a - b) <= LOSS_RTOL * abs(a) + LOSS_ATOL


def _compare_logs(one, two, what):
    assert [r["step"] for r in one] == [r["step"] for r in two] == [str(i) for i in range(1, STEPS + 1)], what
    for col in ("loss", "lm_loss", "rec_loss", "grad_norm", "lr"):
        for r1, r2 in zip(one, two):
            if r1[col] == "" and r2[col] == "":
                continue
            a, b = float(r1[col]), float(r2[col])
            assert _close(a, b), f"{what}: step {r1['step']} {col}: 1 process {a!r} vs 2 processes {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_processes_match_one_process_at_the_same_global_batch(stage, tmp_path, data_dir, init_bundle):
    module, entry, extra, component = STAGES[stage]
    common = _common(data_dir, init_bundle, extra)
    train = getattr(importlib.import_module(module), entry)
    one = train(common + ["--batch-size", "4", "--out", str(tmp_path / "one")])
    assert one["num_processes"] == 1 and one["global_batch_size"] == 4
    two = common + ["--batch-size", "2", "--out", str(tmp_path / "two")]
    if stage == "stage1":
        # stage 1 (the cheapest) also stops after 2 steps and resumes in a NEW 2-process launch: the resumed curve is
        # still the one-process curve (checkpoint written by save_state from both ranks, data keyed by step)
        first = _launch(module, two + ["--stop-after", "2"])
        assert "'stopped': True" in first.stdout and (tmp_path / "two" / "checkpoints" / "step-2").is_dir()
        two = [a if a != "none" else "auto" for a in two]  # --resume auto
    launched = _launch(module, two)
    if stage == "stage1":
        assert "'start_step': 2" in launched.stdout, launched.stdout[-2000:]
    # the summary is printed by the main process only, and it really ran 2 processes (gloo DDP on the CPU)
    summaries = [line for line in launched.stdout.splitlines() if line.startswith("{'stage'")]
    assert len(summaries) == 1, launched.stdout[-2000:]
    assert "'num_processes': 2" in summaries[0] and "'distributed_type': 'MULTI_CPU'" in summaries[0], summaries[0]
    assert "'global_batch_size': 4" in summaries[0], summaries[0]

    log1, log2 = _log(tmp_path / "one"), _log(tmp_path / "two")
    _compare_logs(log1, log2, stage)
    rel = max(abs(float(x["loss"]) - float(y["loss"])) / abs(float(x["loss"])) for x, y in zip(log1, log2))
    a = getattr(SeedStoryBundle.load(tmp_path / "one" / "model"), component).state_dict()
    b = getattr(SeedStoryBundle.load(tmp_path / "two" / "model"), component).state_dict()
    init = getattr(SeedStoryBundle.load(init_bundle), component).state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], init[k])]
    assert changed, f"{stage}: nothing trained"
    diff = sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5
    update = sum(float((a[k].float() - init[k].float()).pow(2).sum()) for k in a) ** 0.5
    worst = max((float((a[k].float() - b[k].float()).abs().max()), k) for k in a)
    print(
        f"[{stage}] losses 1 proc {[round(float(r['loss']), 6) for r in log1]}; max relative loss difference "
        f"{rel:.2g}; ||w1 - w2|| / ||w1 - w0|| = {diff / update:.2g}"
    )
    assert diff <= WEIGHT_RTOL * update, (
        f"{stage}: ||w1 - w2|| = {diff:.3g} vs the update ||w1 - w0|| = {update:.3g} "
        f"(largest element difference {worst[0]:.3g} at {worst[1]})"
    )
    # complete checkpoint folders only (no .tmp-* left by either rank); --keep-checkpoints 2 keeps the stop point
    expected = ["step-2", f"step-{STEPS}"] if stage == "stage1" else [f"step-{STEPS}"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == expected


def test_half_batch_control_differs(tmp_path, data_dir, init_bundle):
    """The control: 1 process x batch 2 (the first half of the global batch only) is NOT the 4-sample curve, so the
    comparison above fails when the ranks do not split the global batch."""
    common = _common(data_dir, init_bundle, STAGES["stage1"][2])
    s1.train_stage1(common + ["--batch-size", "4", "--out", str(tmp_path / "full"), "--no-export"])
    s1.train_stage1(common + ["--batch-size", "2", "--out", str(tmp_path / "half"), "--no-export"])
    full, half = _log(tmp_path / "full"), _log(tmp_path / "half")
    diffs = [abs(float(x["loss"]) - float(y["loss"])) / abs(float(x["loss"])) for x, y in zip(full, half)]
    assert max(diffs) > 1000 * LOSS_RTOL, diffs


# ---------------------------------------------------------------------------------------------- in-process sharding
def _fake_accelerator(rank, world):
    return SimpleNamespace(
        process_index=rank,
        num_processes=world,
        device=torch.device("cpu"),
        mixed_precision="no",
        autocast=contextlib.nullcontext,
        distributed_type=None,
    )


@pytest.fixture(scope="module")
def loaded_bundle(init_bundle):
    return SeedStoryBundle.load(init_bundle)


def _batches(task_cls, parser, extra, data_dir, init_bundle, world, batch_size, bundle, monkeypatch):
    """The step-0 micro-batch of every rank, built as ``run_training`` does (without launching processes)."""
    for mod in (s1, s2):  # one bundle load for the module, a fresh copy per task
        monkeypatch.setattr(mod, "load_init_bundle", lambda init, seed=0: copy.deepcopy(bundle))
    args = resolve_args(
        parser(), _common(data_dir, init_bundle, extra) + ["--batch-size", str(batch_size), "--out", "unused"]
    )
    out = []
    for rank in range(world):
        task = task_cls(args, _fake_accelerator(rank, world))
        rng = micro_rng(args.seed, 0, 0, 0)
        s = rng.getrandbits(62)
        torch.manual_seed(s + rank)
        out.append(task.batch(rng, torch.Generator().manual_seed(s + 1)))
    return out


def test_rank_slices_concatenate_to_the_single_process_batch(data_dir, init_bundle, loaded_bundle, monkeypatch):
    """Stage 1 (stage 3 shares the code; the launch test covers it end to end): rank 0 + rank 1 micro-batches
    (B=2 each) == the one-process micro-batch (B=4), tensor by tensor, noise and condition dropout included."""
    extra = STAGES["stage1"][2]
    (single,) = _batches(
        s1.DetokenizerTask, s1.build_parser, extra, data_dir, init_bundle, 1, 4, loaded_bundle, monkeypatch
    )
    parts = _batches(
        s1.DetokenizerTask, s1.build_parser, extra, data_dir, init_bundle, 2, 2, loaded_bundle, monkeypatch
    )
    assert single.keys() == parts[0].keys() == parts[1].keys()
    for k in single:
        joined = torch.cat([parts[0][k], parts[1][k]])
        assert torch.allclose(joined.float(), single[k].float(), rtol=1e-5, atol=1e-6), k
    assert not torch.equal(parts[0]["noise"], parts[1]["noise"])  # the ranks got different samples


def test_stage2_rank_slices_and_token_weights(data_dir, init_bundle, loaded_bundle, monkeypatch):
    """Stage 2: the ranks' samples are the one-process samples; their loss weights make the rank mean of the
    per-rank mean CE equal the global token mean (the ranks hold different numbers of label tokens)."""
    extra = STAGES["stage2"][2]
    (single,) = _batches(
        s2.InstructionTask, s2.build_parser, extra, data_dir, init_bundle, 1, 4, loaded_bundle, monkeypatch
    )
    parts = _batches(
        s2.InstructionTask, s2.build_parser, extra, data_dir, init_bundle, 2, 2, loaded_bundle, monkeypatch
    )
    assert "lm_weight" not in single
    n = [int((p["labels"][:, 1:] != -100).sum()) for p in parts]
    total = int((single["labels"][:, 1:] != -100).sum())
    assert sum(n) == total
    for p, k in zip(parts, n):
        assert p["lm_weight"] == pytest.approx(k * 2 / total) and p["rec_weight"] == pytest.approx(1.0)
    # row by row, the real (unpadded) tokens and labels of rank 0 then rank 1 are the one-process rows
    rows = [
        (p["input_ids"][i], p["labels"][i], p["attention_mask"][i])
        for p in parts
        for i in range(p["input_ids"].shape[0])
    ]
    assert len(rows) == single["input_ids"].shape[0]
    for i, (ids, labels, mask) in enumerate(rows):
        n_real = int(mask.sum())
        assert n_real == int(single["attention_mask"][i].sum())
        assert torch.equal(ids[:n_real], single["input_ids"][i, :n_real])
        assert torch.equal(labels[:n_real], single["labels"][i, :n_real])
    feats = torch.cat([parts[0]["image_embeds"], parts[1]["image_embeds"]])
    assert torch.equal(feats, single["image_embeds"])


def test_rank_weight():
    assert rank_weight(7, 7, 1) == 1.0
    assert rank_weight(3, 10, 2) == pytest.approx(0.6) and rank_weight(7, 10, 2) == pytest.approx(1.4)
    assert rank_weight(0, 0, 2) == 0.0


def test_stage2_context_target_weights_make_the_rank_mean_the_global_mean(
    data_dir, init_bundle, loaded_bundle, monkeypatch
):
    """--context-targets: the ranks' context targets are the one-process ones, and each rank's regression weight
    counts them, so the rank mean of the weighted per-rank regression losses is the one-process loss (a mean over
    every target image of the global batch)."""
    extra = STAGES["stage2"][2] + ["--context-targets", "4"]
    (single,) = _batches(
        s2.InstructionTask, s2.build_parser, extra, data_dir, init_bundle, 1, 4, loaded_bundle, monkeypatch
    )
    parts = _batches(
        s2.InstructionTask, s2.build_parser, extra, data_dir, init_bundle, 2, 2, loaded_bundle, monkeypatch
    )

    def n_targets(b):
        extra_targets = int((b[CONTEXT_POSITIONS][:, :, 0] >= 0).sum()) if CONTEXT_POSITIONS in b else 0
        return int(b["embeds_gen_mask"].sum()) + extra_targets

    n, total = [n_targets(p) for p in parts], n_targets(single)
    assert sum(n) == total and total > 4, (n, total)  # some samples carry context targets
    for p, k in zip(parts, n):
        assert p["rec_weight"] == pytest.approx(k * 2 / total)
    joined = torch.cat([p[CONTEXT_TARGETS] for p in parts if CONTEXT_TARGETS in p])
    assert torch.equal(joined, single[CONTEXT_TARGETS])
    module = s2.AgentTrainModule(copy.deepcopy(loaded_bundle.agent).eval())
    with torch.no_grad():
        whole = module(**single)["rec_loss"]
        ranks = [module(**p)["rec_loss"] for p in parts]
    torch.testing.assert_close(sum(ranks) / 2, whole, rtol=1e-5, atol=1e-6)
