"""Training stages on the tiny preset (a few optimizer steps each): exactly the trainable tensors change, frozen
ones stay bit-identical, outputs load as bundles, resume == uninterrupted run, stage-3 cancel, configs parse."""

import csv
import json
import math
import os
import random
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from PIL import Image
from safetensors.torch import load_file

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.cache import CachePolicy
from seedstory_core.data.samples import sd_target
from seedstory_core.detokenizer import is_trainable_unet_key, normalize_latents
from seedstory_core.story import StorySettings
from seedstory_core.tiny import tiny_story_corpus
from training.common import ImageSource, cosine_with_floor
from training.rollout import OWN_CONTEXT_FILE, OwnContext, rollout
from training.stage1_detokenizer import DetokenizerTask, DetokTrainModule, min_snr_weights, train_stage1
from training.stage2_instruction import StoryBatches, is_official_trainable, train_stage2
from training.stage3_adaptation import run_stage3, train_stage3
from training.vae import train_vae

REPO = Path(__file__).resolve().parents[2]
FAST = dict(max_steps=2, batch_size=2, warmup_steps=0, no_progress=True, resume="none")


def _records(n=3, frames=4, seed=0):
    rng = np.random.default_rng(seed)
    corpus = [c.replace("[INST]", "") for c in tiny_story_corpus(40)]
    out = []
    for s in range(n):
        h, w = (48, 80) if s % 2 == 0 else (90, 60)
        imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(frames)]
        out.append({"id": s, "images": imgs, "captions": [corpus[(s * frames + i) % 40] for i in range(frames)]})
    return out


@pytest.fixture(scope="module")
def records():
    return _records()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, records):
    """The same stories in StoryStream format on disk (stories.jsonl + images/<story>/<frame>.png)."""
    root = tmp_path_factory.mktemp("storystream")
    lines = []
    for r in records:
        paths = []
        for i, img in enumerate(r["images"]):
            rel = Path("images") / str(r["id"]) / f"{i:02d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(root / rel)
            paths.append(str(rel))
        lines.append(json.dumps({"id": r["id"], "images": paths, "captions": r["captions"]}))
    (root / "stories.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _load(folder):
    return SeedStoryBundle.load(folder)


def _sd(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_changed(before, after, trainable, what):
    trainable = set(trainable)
    assert trainable and trainable <= set(before), f"{what}: trainable names not in the state dict"
    frozen_changed = [k for k in before if k not in trainable and not torch.equal(before[k], after[k])]
    assert not frozen_changed, f"{what}: frozen tensors changed: {frozen_changed[:5]}"
    unchanged = [k for k in trainable if torch.equal(before[k], after[k])]
    assert not unchanged, f"{what}: trainable tensors unchanged: {unchanged[:5]}"


def _check_identical(a, b, what):
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: changed: {diff[:5]}"


# ---------------------------------------------------------------------------------------------- schedule / configs
def test_cosine_with_floor_schedule():
    assert cosine_with_floor(0, 100, 1000, 0.05) == 0.0
    assert cosine_with_floor(50, 100, 1000, 0.05) == pytest.approx(0.5)
    assert cosine_with_floor(100, 100, 1000, 0.05) == pytest.approx(1.0)
    assert cosine_with_floor(550, 100, 1000, 0.05) == pytest.approx(0.5 * (1.05 + 0.95 * math.cos(math.pi / 2)))
    assert cosine_with_floor(1000, 100, 1000, 0.05) == pytest.approx(0.05)
    assert cosine_with_floor(5000, 100, 1000, 0.05) == pytest.approx(0.05)


def test_accelerate_configs_parse():
    cfg = REPO / "training" / "configs"
    cpu = load_config_from_file(str(cfg / "accelerate_cpu.yaml"))
    assert cpu.distributed_type == DistributedType.NO and cpu.use_cpu
    ds = load_config_from_file(str(cfg / "accelerate_deepspeed_zero2.yaml"))
    assert ds.distributed_type == DistributedType.DEEPSPEED and ds.num_processes == 8
    ds_json = json.loads((cfg / "deepspeed_zero2_bf16.json").read_text())
    assert ds_json["zero_optimization"]["stage"] == 2 and ds_json["zero_optimization"]["overlap_comm"]
    assert ds.deepspeed_config["deepspeed_config_file"].endswith("deepspeed_zero2_bf16.json")
    fsdp = load_config_from_file(str(cfg / "accelerate_fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_use_orig_params"]
    # the config the 2-process CPU runs use (tests/training/test_distributed_training.py launches it): torchrun + cpu
    ddp = load_config_from_file(str(cfg / "cpu_ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_processes == 2 and ddp.use_cpu
    assert ddp.main_process_port == 0 and ddp.mixed_precision == "no"


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "training.stage2_instruction", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert out.returncode == 0 and "--train-base" in out.stdout and "--grad-accum" in out.stdout


# ---------------------------------------------------------------------------------------------- stages
def test_vae_stage_trains_only_the_vae(tmp_path, records, init_bundle):
    m = train_vae(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path), lr=1e-3))
    before, after = _load(init_bundle), _load(m["model"])
    _check_changed(_sd(before.detokenizer.vae), _sd(after.detokenizer.vae), m["trainable"], "vae")
    _check_identical(_sd(before.detokenizer), _sd(after.detokenizer), "unet/resampler")
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 3


def test_vae_export_calibrates_unit_variance_latents(tmp_path, records, init_bundle):
    m = train_vae(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path), lr=1e-3))
    vae = _load(m["model"]).detokenizer.vae  # the loader takes the latent statistics from the saved vae/config.json
    assert vae.config.scaling_factor == 1.0 and len(vae.config.latents_mean) == len(vae.config.latents_std) == 4
    frames = torch.stack([sd_target(img, 64)[0] for r in records for img in r["images"]])
    with torch.no_grad():
        z = normalize_latents(vae, vae.encode(frames).latent_dist.mean)
    per_channel = z.permute(1, 0, 2, 3).reshape(4, -1)
    assert per_channel.mean(1).abs().max() < 0.35 and (per_channel.std(1) - 1).abs().max() < 0.35
    # an untouched VAE (calibration off) keeps SD-XL's scaling
    m0 = train_vae(
        dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path / "raw"), calibration_frames=0)
    )
    raw = _load(m0["model"]).detokenizer.vae
    assert raw.config.scaling_factor == pytest.approx(0.13025) and getattr(raw.config, "latents_std", None) is None


def test_normalize_latents_inverts_the_sdxl_pipeline_decode_transform():
    z = torch.randn(2, 4, 3, 3)
    plain = SimpleNamespace(config=SimpleNamespace(scaling_factor=0.13025))
    assert torch.equal(normalize_latents(plain, z), z * 0.13025)
    cfg = SimpleNamespace(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 1.0], latents_std=[2.0, 0.5, 1.0, 4.0])
    n = normalize_latents(SimpleNamespace(config=cfg), z)
    # StableDiffusionXLPipeline before vae.decode: latents * latents_std / scaling_factor + latents_mean
    back = n * torch.tensor(cfg.latents_std).view(1, 4, 1, 1) / cfg.scaling_factor + torch.tensor(
        cfg.latents_mean
    ).view(1, 4, 1, 1)
    assert torch.allclose(back, z, atol=1e-6)


def test_cond_dropout_replaces_whole_samples_with_the_unconditional_features():
    uncond = torch.randn(1, 5, 8)
    feats = torch.randn(64, 5, 8)
    fake = SimpleNamespace(
        args=SimpleNamespace(cond_dropout=0.0),
        bundle=SimpleNamespace(uncond_features=uncond),
        global_batch_size=64,
        local_slice=slice(0, 64),
    )  # one process
    assert DetokenizerTask.drop_condition(fake, feats, torch.Generator().manual_seed(0)) is feats
    fake.args.cond_dropout = 0.5
    out = DetokenizerTask.drop_condition(fake, feats, torch.Generator().manual_seed(0))
    dropped = torch.tensor([torch.equal(o, uncond[0]) for o in out])
    kept = torch.tensor([torch.equal(o, f) for o, f in zip(out, feats)])
    assert bool((dropped ^ kept).all()) and 10 < int(dropped.sum()) < 54
    fake.args.cond_dropout = 1.0
    assert torch.equal(DetokenizerTask.drop_condition(fake, feats, torch.Generator()), uncond.expand_as(feats))


def test_min_snr_weights_cap_the_low_noise_timesteps():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD-XL's betas
    t = torch.tensor([0, 10, 100, 400, 700, 999])
    ac = sched.alphas_cumprod[t].double()
    snr = ac / (1 - ac)
    w = min_snr_weights(sched, t, 5.0)
    assert w.dtype == torch.float32 and w.shape == (6,)
    assert torch.allclose(w.double(), torch.clamp(snr, max=5.0) / snr, rtol=1e-4)
    # low noise (SNR > 5): weight < 1 and rising with t; high noise (SNR <= 5): weight exactly 1
    assert bool((w[:3] < 1).all()) and bool((w[:3].diff() > 0).all())
    assert torch.equal(w[snr <= 5], torch.ones_like(w[snr <= 5]))
    with pytest.raises(ValueError, match="snr-gamma 0"):
        min_snr_weights(sched, t, 0.0)


def test_detok_loss_weight_is_a_per_sample_weighted_mean():
    class Echo(torch.nn.Module):  # stands in for resampler + UNet: predicts the noisy input itself
        def __init__(self):
            super().__init__()
            self.latents = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, *a, **k):
            return (
                (torch.zeros(x.shape[0], 2, 3), torch.zeros(x.shape[0], 3))
                if x.dim() == 3
                else SimpleNamespace(sample=x)
            )

    m = DetokTrainModule(Echo(), Echo())
    noisy, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    args = (torch.randn(3, 5, 8), noisy, torch.tensor([1, 2, 3]), torch.zeros(3, 6), noise)
    per = ((noisy - noise) ** 2).flatten(1).mean(1)
    assert torch.allclose(m(*args)["loss"], per.mean())
    w = torch.tensor([0.0, 1.0, 0.5])
    assert torch.allclose(m(*args, loss_weight=w)["loss"], (per * w).mean())
    assert torch.allclose(m(*args, loss_weight=torch.ones(3))["loss"], m(*args)["loss"])


def test_stage1_snr_gamma_trains_and_differs_from_uniform(tmp_path, records, init_bundle):
    common = dict(FAST, records=records, init=f"bundle:{init_bundle}", unet_train="full")
    a = train_stage1(dict(common, out=str(tmp_path / "u")))
    b = train_stage1(dict(common, out=str(tmp_path / "s"), snr_gamma=5.0))
    assert all(math.isfinite(x) for x in b["losses"])
    # same draws (seed), so the first step's loss differs only by the weighting (every weight <= 1)
    assert b["losses"][0] <= a["losses"][0] + 1e-6


def test_diffusion_inputs_carry_min_snr_weights_only_when_asked():
    from diffusers import AutoencoderKL, DDPMScheduler

    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).eval()
    fake = SimpleNamespace(
        args=SimpleNamespace(snr_gamma=0.0),
        vae=vae,
        device=torch.device("cpu"),
        noise_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        global_batch_size=64,
        local_slice=slice(0, 64),
    )
    fake._global_randn = lambda shape, gen: torch.randn(tuple(shape), generator=gen)  # one process
    x, tids = torch.rand(64, 3, 8, 8) * 2 - 1, torch.zeros(64, 6)
    out = DetokenizerTask.diffusion_inputs(fake, x, tids, torch.Generator().manual_seed(0))
    assert "loss_weight" not in out
    fake.args.snr_gamma = 5.0
    out = DetokenizerTask.diffusion_inputs(fake, x, tids, torch.Generator().manual_seed(0))
    w = out["loss_weight"]
    assert torch.equal(w, min_snr_weights(fake.noise_scheduler, out["timesteps"], 5.0))
    assert bool((w[out["timesteps"] < 100] < 1).all()) and bool((w[out["timesteps"] > 200] == 1).all())


def test_stage1_kv_changes_exactly_the_official_set(tmp_path, records, init_bundle):
    m = train_stage1(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path), unet_train="kv"))
    assert all(n.startswith("resampler.") or is_trainable_unet_key(n) for n in m["trainable"])
    before, after = _load(init_bundle), _load(m["model"])
    _check_changed(_sd(before.detokenizer), _sd(after.detokenizer), m["trainable"], "detokenizer")
    _check_identical(_sd(before.detokenizer.vae), _sd(after.detokenizer.vae), "vae")
    _check_identical(_sd(before.agent), _sd(after.agent), "agent")
    assert len(m["losses"]) == 2 and all(math.isfinite(x) for x in m["losses"])


def test_stage1_lora_exports_merged_unet(tmp_path, records, init_bundle):
    m = train_stage1(
        dict(
            FAST,
            max_steps=1,
            records=records,
            init=f"bundle:{init_bundle}",
            out=str(tmp_path),
            unet_train="lora",
            lora_rank=4,
            lr=1e-2,
        )
    )
    assert any("lora_" in n for n in m["trainable"])
    before, after = _sd(_load(init_bundle).detokenizer.unet), _sd(_load(m["model"]).detokenizer.unet)
    assert set(before) == set(after)  # plain UNet keys, LoRA merged
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v", "0") for k in changed)


def test_stage2_changes_exactly_the_official_set(tmp_path, records, init_bundle):
    m = train_stage2(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path)))
    assert all(is_official_trainable(n) for n in m["trainable"])
    assert any("lora_A" in n for n in m["trainable"]) and any("embed_tokens" in n for n in m["trainable"])
    assert not any("pos_embed" in n for n in m["trainable"])
    before, after = _load(init_bundle), _load(m["model"])
    _check_changed(_sd(before.agent), _sd(after.agent), m["trainable"], "agent")
    _check_identical(_sd(before.detokenizer), _sd(after.detokenizer), "detokenizer")
    _check_identical(_sd(before.visual_tokenizer), _sd(after.visual_tokenizer), "vit")
    row = (tmp_path / "train_log.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "1" and row[2] and row[3]  # lm_loss and rec_loss logged


def test_stage2_rec_loss_scale_weights_only_the_regression_loss(tmp_path, records, init_bundle):
    m = train_stage2(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path), rec_loss_scale=4.0))
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert len(rows) == 2
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["lm_loss"]) + 4.0 * float(r["rec_loss"]), rel=1e-5)
    # a training weight only: the exported agent config is unchanged
    assert _load(m["model"]).agent.rec_loss_scale == _load(init_bundle).agent.rec_loss_scale


def test_stage2_train_base_trains_base_weights(tmp_path, records, init_bundle):
    m = train_stage2(
        dict(
            FAST,
            max_steps=1,
            records=records,
            init=f"bundle:{init_bundle}",
            out=str(tmp_path),
            train_base=True,
            no_export=True,
        )
    )
    assert any(n.endswith("q_proj.base_layer.weight") for n in m["trainable"])


def test_stage3_changes_only_the_adapter(tmp_path, records, init_bundle):
    m = train_stage3(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path), grad_accum=2))
    before, after = _load(init_bundle), _load(m["model"])
    _check_changed(_sd(before.detokenizer), _sd(after.detokenizer), m["trainable"], "detokenizer")
    _check_identical(_sd(before.agent), _sd(after.agent), "agent")
    _check_identical(_sd(before.detokenizer.vae), _sd(after.detokenizer.vae), "vae")


def test_stage3_cancel_stops_cleanly_with_checkpoint(tmp_path, records, init_bundle):
    seen = []
    m = run_stage3(
        records=records,
        init=f"bundle:{init_bundle}",
        out=str(tmp_path),
        max_steps=10,
        batch_size=1,
        grad_accum=1,
        warmup_steps=0,
        resume="none",
        progress=lambda step, total, loss: seen.append((step, total, loss)),
        cancel=lambda: len(seen) >= 2,
    )
    assert m["cancelled"] and m["step"] == 2
    assert [s[:2] for s in seen] == [(1, 10), (2, 10)] and all(math.isfinite(s[2]) for s in seen)
    assert Path(m["checkpoint"]).name == "step-2" and (Path(m["checkpoint"]) / "trainer_state.json").is_file()
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())
    _load(m["model"])  # the exported model loads


# ---------------------------------------------------------------------------------------------- resume
def _run_cli(module, args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_stage2_resume_in_new_process_matches_uninterrupted(tmp_path, data_dir, init_bundle):
    """4 steps straight vs 2 steps + checkpoint + a NEW process that resumes for 2 more (LoRA dropout on)."""
    common = [
        "--data",
        str(data_dir),
        "--init",
        f"bundle:{init_bundle}",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--warmup-steps",
        "2",
        "--no-progress",
        "--grad-accum",
        "2",
    ]
    _run_cli("training.stage2_instruction", common + ["--out", str(tmp_path / "straight")])
    _run_cli("training.stage2_instruction", common + ["--out", str(tmp_path / "split"), "--stop-after", "2"])
    assert (tmp_path / "split" / "checkpoints" / "step-2").is_dir() and not (tmp_path / "split" / "model").exists()
    resumed = _run_cli("training.stage2_instruction", common + ["--out", str(tmp_path / "split")])
    assert "'start_step': 2" in resumed.stdout  # really resumed, not restarted
    a, b = _sd(_load(tmp_path / "straight" / "model").agent), _sd(_load(tmp_path / "split" / "model").agent)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    log = (tmp_path / "split" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]


def test_stage1_resume_matches_uninterrupted(tmp_path, records, init_bundle):
    """Diffusion noise / timesteps are keyed by step: 3 straight == 1 + resume (new Accelerator) + 2."""
    kw = dict(FAST, max_steps=3, records=records, init=f"bundle:{init_bundle}", unet_train="full", warmup_steps=1)
    straight = train_stage1(dict(kw, out=str(tmp_path / "a")))
    first = train_stage1(dict(kw, out=str(tmp_path / "b"), stop_after=1))
    assert first["stopped"] and first["step"] == 1
    second = train_stage1(dict(kw, out=str(tmp_path / "b"), resume="auto"))
    assert second["start_step"] == 1 and second["step"] == 3
    assert straight["losses"][1:] == pytest.approx(second["losses"], abs=1e-6)
    a, b = _sd(_load(straight["model"]).detokenizer), _sd(_load(second["model"]).detokenizer)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k


# ---------------------------------------------------------------- scheduled sampling (training.rollout, --own-context)
def _story_batches(records, bundle, **own):
    """Stage-2 StoryBatches over in-memory ``records`` with the CLI defaults; ``own`` = own_context(_prob)."""
    args = Namespace(
        data=None,
        records=records,
        image_root=None,
        max_records=0,
        no_feature_cache=False,
        max_length=1280,
        text_loss="all",
        pad_to_max_length=False,
        batch_size=2,
        **own,
    )
    return StoryBatches(args, bundle.tokenizer, bundle.visual_tokenizer, "squash")


def test_rollout_records_free_running_features_not_teacher_forced(tmp_path, records, init_bundle):
    """The rollout's frame f is regressed with the agent's OWN earlier features in the context: frame 1 equals a
    teacher-forced step (only the true first frame precedes it), frame 2 does not (frame 1 differs)."""
    meta = rollout(init_bundle, None, tmp_path, records=records)
    assert meta["records"] == len(records)
    saved = load_file(str(tmp_path / OWN_CONTEXT_FILE))
    bundle = _load(init_bundle)
    src = ImageSource(records, None)
    assert set(saved) == {src.key(r, 0) for r in range(len(records))}
    rec = records[0]

    def vit(i):
        return bundle.visual_tokenizer.encode_images([rec["images"][i]], mode="squash")[:1].float()

    T, D = vit(0).shape[1:]
    for r, r_rec in enumerate(records):
        t = saved[src.key(r, 0)]
        assert t.shape == (len(r_rec["images"]) - 1, T, D) and t.dtype == torch.float16
    # teacher forcing: the TRUE features of frame 1 replace the regressed ones in the context
    settings = StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=len(rec["images"])))
    engine = bundle.engine(settings.policy)
    state = engine.start(rec["captions"][0], features=vit(0), settings=settings)

    def teacher(i, n, res):
        return vit(i) if i == 1 else None

    _, tf = engine.run(state, 2, texts=rec["captions"][1:3], mode="visualization", on_frame=teacher)
    own = saved[src.key(0, 0)].float()
    assert torch.allclose(own[0], tf[0].features[0].float(), atol=2e-3)
    assert not torch.allclose(own[1], tf[1].features[0].float(), atol=2e-3)


def test_rollout_workers_do_not_change_the_features(tmp_path, records, init_bundle):
    """Every story is rolled out single-threaded by one process: 1 and 2 worker processes agree bit for bit."""
    one = rollout(init_bundle, None, tmp_path / "one", records=records, workers=1)
    two = rollout(init_bundle, None, tmp_path / "two", records=records, workers=2)
    assert (one["workers"], two["workers"]) == (1, 2)
    a, b = load_file(str(tmp_path / "one" / OWN_CONTEXT_FILE)), load_file(str(tmp_path / "two" / OWN_CONTEXT_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_context_replaces_only_context_images_after_the_first(tmp_path, records, init_bundle):
    """--own-context-prob 1: every context image but the first comes from the rollout; the first frame and the
    target stay the true frames' features. Prob 0 (or no file) keeps every image true."""
    rollout(init_bundle, None, tmp_path / "ro", records=records)
    bundle = _load(init_bundle)

    def batches(**kw):
        return _story_batches(records, bundle, **kw)

    own = OwnContext(tmp_path / "ro")
    sb = batches(own_context=str(tmp_path / "ro"), own_context_prob=1.0)
    plain = batches(own_context=None, own_context_prob=0.0)
    seen_context = False
    for seed in range(8):
        picks = sb.pick(random.Random(seed), 2)
        samples, feats, _ = sb.load(picks)
        for (r, s), f in zip(picks, feats):
            assert s.extras.get("own_context") is True
            key = sb.images.key(r, 0)
            for j, frame in enumerate(s.image_indices):
                true = plain.features(r, frame)
                if 0 < frame < s.image_indices[-1]:
                    seen_context = True
                    assert torch.equal(f[j], own.get(key, frame)) and not torch.equal(f[j], true)
                else:
                    assert torch.equal(f[j], true)
    assert seen_context
    # probability 0 with a file: nothing is marked
    zero = batches(own_context=str(tmp_path / "ro"), own_context_prob=0.0)
    assert not any(s.extras.get("own_context") for _, s in zero.pick(random.Random(3), 8))
    with pytest.raises(ValueError, match="needs --own-context"):
        batches(own_context=None, own_context_prob=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        batches(own_context=str(tmp_path / "ro"), own_context_prob=1.5)
    with pytest.raises(FileNotFoundError, match="training.rollout"):
        batches(own_context=str(tmp_path / "missing"), own_context_prob=0.5)


def test_own_context_must_cover_every_record(tmp_path, records, init_bundle):
    rollout(init_bundle, None, tmp_path, records=records[:1])
    with pytest.raises(KeyError, match="no rollout for record"):
        _story_batches(records, _load(init_bundle), own_context=str(tmp_path), own_context_prob=0.5)


def test_stage2_and_stage3_train_with_own_context(tmp_path, records, init_bundle):
    rollout(init_bundle, None, tmp_path / "ro", records=records)
    own = dict(own_context=str(tmp_path / "ro"), own_context_prob=1.0)
    m2 = train_stage2(dict(FAST, records=records, init=f"bundle:{init_bundle}", out=str(tmp_path / "s2"), **own))
    assert m2["steps_run"] == 2
    m3 = train_stage3(dict(FAST, records=records, init=f"bundle:{m2['model']}", out=str(tmp_path / "s3"), **own))
    assert m3["steps_run"] == 2
