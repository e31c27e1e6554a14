"""Stage 1: de-tokenizer pretraining -- ViT features -> ResamplerXLV2 -> SD-XL UNet, epsilon-MSE
(docs/reference.md §4.2, §6).

The official stage 1 is not in the SEED-Story repository (it comes from SEED-X, recipe UNKNOWN); from the
checkpoint sizes it trains the same ``SDXLAdapter`` subset as stage 3. Per micro-batch:

1. frames drawn uniformly from the story records; frozen visual-tokenizer features with the keep-ratio transform
   (short side -> S, centre crop: the same crop as the de-tokenizer target, and stage 3's transform);
2. target ``sd_images`` = the frame bicubic-resized / centre-cropped to the de-tokenizer size, in [-1, 1], with
   SD-XL ``time_ids`` [H, W, top, left, S, S] (fixed crop offsets; ``--official-crop-swap`` for the bug);
3. VAE latents ``latent_dist.sample() * scaling_factor`` (frozen VAE, fp32; a calibrated tiny VAE's per-channel
   ``latents_mean``/``latents_std`` are applied too, see ``normalize_latents``), DDPM noise with the SD-XL scheduler
   config (diffusers ``DDPMScheduler.from_config``), ``t ~ U{0..999}``;
4. ``UNet(noisy, t, prompt_embeds, added_cond={time_ids, text_embeds=pooled})``; loss = MSE(pred, noise) in fp32.

Trainable (``--unet-train``): ``kv`` (official: resampler + every UNet ``to_k``/``to_v``), ``full`` (resampler +
the whole UNet; needed for a randomly initialised tiny UNet, which cannot render anything with only to_k/to_v
trained) or ``lora`` (resampler + peft LoRA on the UNet attention projections ``to_q/to_k/to_v/to_out.0``; merged
into the UNet weights on export). The VAE is not trained here: a random tiny VAE is trained first with
``python -m training.vae`` (a separate stage, so the latent space is fixed before the UNet learns it).

Usage::

    python -m training.stage1_detokenizer --data DIR --init tiny --out runs/s1 --unet-train full --max-steps 300
    accelerate launch --config_file training/configs/accelerate_deepspeed_zero2.yaml \
        -m training.stage1_detokenizer --data DIR --init bundle:PATH --out runs/s1 --mixed-precision bf16
"""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import nn

from seedstory_core.data.samples import sd_target
from seedstory_core.data.storystream import load_records
from seedstory_core.detokenizer import SeedStoryDetokenizer, is_trainable_unet_key, normalize_latents

from .common import (
    entry_main,
    FeatureCache,
    ImageSource,
    StageTask,
    base_parser,
    frozen_dtype,
    frozen_module,
    load_init_bundle,
    resolve_args,
    run_training,
)

#: Stage-1 recipe is UNKNOWN officially: we use the stage-3 optimiser values (same module, same trainable set).
DEFAULTS = dict(
    max_steps=1000,
    batch_size=8,
    grad_accum=1,
    lr=1e-4,
    weight_decay=0.03,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    warmup_steps=500,
    min_lr_ratio=0.01,
)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class DetokTrainModule(nn.Module):
    """resampler + UNet, the part of the de-tokenizer that is trained (what ``accelerator.prepare`` wraps).

    ``forward(features, noisy, timesteps, time_ids, noise, loss_weight=None)`` -> ``{'loss': MSE(eps_pred, noise)
    in fp32}``; with ``loss_weight`` (B,) fp32 each sample's MSE is weighted (Min-SNR, ``--snr-gamma``) before the
    batch mean. Parameter names equal the de-tokenizer's state-dict names (``resampler.*``, ``unet.*``)."""

    def __init__(self, resampler: nn.Module, unet: nn.Module):
        super().__init__()
        self.resampler = resampler
        self.unet = unet

    def forward(self, features, noisy, timesteps, time_ids, noise, loss_weight=None):
        ref = self.resampler.latents
        prompt_embeds, pooled = self.resampler(features.to(device=ref.device, dtype=ref.dtype))
        pred = self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=prompt_embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        if loss_weight is None:
            return {"loss": F.mse_loss(pred.float(), noise.float(), reduction="mean")}
        per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").flatten(1).mean(1)
        return {"loss": (per_sample * loss_weight.to(per_sample.device, torch.float32)).mean()}


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(SNR(t), gamma) / SNR(t)``, (B,) fp32.

    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy" (eq. 9 for epsilon targets):
    it caps the weight of the low-noise timesteps, whose epsilon MSE dominates the uniform loss, so the training signal
    goes more to the mid and high noise levels where the picture's layout is decided. The SNR comes from diffusers'
    ``compute_snr`` (``alphas_cumprod`` of the DDPM scheduler). ``gamma`` > 0; raises ValueError otherwise."""
    if not gamma > 0:
        raise ValueError(f"Min-SNR gamma must be > 0, got {gamma!r} (use --snr-gamma 0 to turn the weighting off)")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps).float()
    return torch.clamp(snr, max=float(gamma)) / snr


def merged_unet(unet: nn.Module) -> nn.Module:
    """A plain diffusers UNet with any peft LoRA merged into its weights (for export); the input is unchanged."""
    if not any("lora_" in n for n, _ in unet.named_parameters()):
        return unet
    from diffusers import UNet2DConditionModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(unet)
    for m in work.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    sd = {k.replace(".base_layer.", "."): v for k, v in work.state_dict().items() if "lora_" not in k}
    plain = UNet2DConditionModel.from_config(unet.config)
    plain.load_state_dict(sd, strict=True)
    return plain.to(next(unet.parameters()).device)


def add_detok_arguments(p) -> None:
    g = p.add_argument_group("de-tokenizer")
    g.add_argument(
        "--unet-train",
        choices=("kv", "full", "lora"),
        default="kv",
        help="UNet trainable set: kv = to_k/to_v (official), full, lora (peft on to_q/k/v/out)",
    )
    g.add_argument("--lora-rank", type=int, default=16)
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument(
        "--resolution", type=int, default=0, help="de-tokenizer image size S (0 = config.detokenizer.default_size)"
    )
    g.add_argument(
        "--cond-dropout",
        type=float,
        default=0.0,
        help="probability of replacing a sample's features by the unconditional ones (ViT features of the "
        "all-zero image, the CFG negative branch) so guidance has a trained unconditional branch "
        "(official stage 3: none, 0.0; the tiny recipe's stage 1 uses 0.1)",
    )
    g.add_argument(
        "--snr-gamma",
        type=float,
        default=0.0,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023; e.g. 5): each sample's epsilon MSE is weighted by "
        "min(SNR(t), gamma) / SNR(t). 0 = off, the uniform MSE of the official de-tokenizer training",
    )
    g.add_argument(
        "--official-crop-swap",
        action="store_true",
        help="reproduce the official swapped crop offsets in time_ids (ablation; default: fixed)",
    )


class DetokenizerTask(StageTask):
    """Shared by stage 1 and stage 3: builds the frozen ViT / VAE and the trainable resampler + UNet."""

    name = "stage1_detokenizer"
    vit_mode = "keep_ratio"
    shards_global_batch = True

    def __init__(self, args, accelerator):
        super().__init__(args, accelerator)
        self.records, root = load_records(args.data, getattr(args, "records", None), args.image_root, args.max_records)
        self.images = ImageSource(self.records, root)
        self.cache = FeatureCache(not args.no_feature_cache)
        self.bundle = load_init_bundle(args.init, args.seed)
        #: an in-memory bundle given by the caller: its frozen parts are never moved or cast in place (its
        #: de-tokenizer, the trained part, is trained in place: pass a copy to keep the original)
        self.borrowed = not isinstance(args.init, str)
        device, fdt = accelerator.device, frozen_dtype(accelerator)
        self.device = device
        self.vit = frozen_module(self.bundle.visual_tokenizer, device, fdt, borrowed=self.borrowed)
        detok = self.bundle.detokenizer
        detok.requires_grad_(False)
        detok.to(device)
        self.vae = detok.vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.size = int(args.resolution or detok.config.default_size)
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(detok.scheduler.config)
        detok.resampler.requires_grad_(True)
        self._configure_unet(detok.unet, args)
        if args.gradient_checkpointing:
            detok.unet.enable_gradient_checkpointing()
        self.detok = detok
        self.model = DetokTrainModule(detok.resampler, detok.unet).train()
        self.dropped = 0

    @staticmethod
    def _configure_unet(unet, args) -> None:
        if args.unet_train == "full":
            unet.requires_grad_(True)
        elif args.unet_train == "kv":
            for name, p in unet.named_parameters():
                p.requires_grad_(is_trainable_unet_key(name))
        else:
            from peft import LoraConfig

            unet.add_adapter(
                LoraConfig(
                    r=args.lora_rank,
                    lora_alpha=args.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=list(LORA_TARGETS),
                )
            )
            for name, p in unet.named_parameters():
                p.requires_grad_("lora_" in name)

    # ------------------------------------------------------------------ per-image frozen results
    def frame(self, r: int, f: int):
        """(ViT features (T, D) cpu, sd_image (3, S, S), time_ids (6,)) of one frame, cached."""
        key = (self.images.key(r, f), self.vit_mode, self.size, bool(self.args.official_crop_swap))

        def compute():
            img = self.images.open(r, f)
            feats = self.vit.encode_images([img], mode=self.vit_mode)[0].float().cpu()
            sd, tids = sd_target(img, self.size, official_crop_swap=self.args.official_crop_swap)
            return feats, sd, tids

        return self.cache.get(key, compute)

    def _global_randn(self, local_shape, gen: torch.Generator) -> torch.Tensor:
        """N(0, 1) noise for this rank's samples: drawn for the whole global micro-batch (``global_batch_size`` x
        ``local_shape[1:]``) from the shared generator and sliced, so any process count sees the same per-sample
        noise as one process."""
        full = torch.randn((self.global_batch_size, *tuple(local_shape)[1:]), generator=gen)
        return full[self.local_slice].to(self.device, torch.float32)

    @torch.no_grad()
    def diffusion_inputs(
        self, sd_images: torch.Tensor, time_ids: torch.Tensor, gen: torch.Generator
    ) -> Dict[str, torch.Tensor]:
        """VAE latents (sampled, x scaling factor), epsilon noise, t ~ U{0..T-1}, noisy latents (DDPM, SD-XL betas).

        ``sd_images`` (B, 3, S, S) / ``time_ids`` (B, 6) are this rank's slice of the global micro-batch; the random
        draws (posterior eps, noise, t) are made for the global batch and sliced (see :meth:`_global_randn`)."""
        x = sd_images.to(self.device, torch.float32)
        dist = self.vae.encode(x).latent_dist
        eps = self._global_randn(dist.mean.shape, gen)
        # == latent_dist.sample() * scaling_factor (SD-XL); per-channel mean/std when the VAE config has them
        latents = normalize_latents(self.vae, dist.mean + dist.std * eps)
        noise = self._global_randn(latents.shape, gen)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (self.global_batch_size,), generator=gen)
        t = t[self.local_slice].to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        out = {"noisy": noisy, "timesteps": t, "noise": noise, "time_ids": time_ids.to(self.device, torch.float32)}
        gamma = float(getattr(self.args, "snr_gamma", 0.0) or 0.0)
        if gamma > 0:
            out["loss_weight"] = min_snr_weights(self.noise_scheduler, t, gamma)
        return out

    def batch(self, rng: random.Random, gen: torch.Generator) -> Dict[str, Any]:
        # draw the (record, frame) pairs of the global micro-batch, keep and load this rank's slice
        picks = []
        for _ in range(self.global_batch_size):
            r = rng.randrange(len(self.records))
            picks.append((r, rng.randrange(len(self.records[r]["images"]))))
        feats, sds, tids = [], [], []
        for r, f in picks[self.local_slice]:
            a, b, c = self.frame(r, f)
            feats.append(a), sds.append(b), tids.append(c)
        out = self.diffusion_inputs(torch.stack(sds), torch.stack(tids), gen)
        out["features"] = self.drop_condition(torch.stack(feats), gen).to(self.device)
        return out

    def drop_condition(self, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, T, D) features (this rank's slice) with each sample replaced, with probability ``--cond-dropout``, by
        the unconditional features (B-broadcast (1, T, D) ViT features of the all-zero image, as at inference,
        docs/reference.md §4.2). The coin flips are drawn for the global micro-batch and sliced."""
        p = float(self.args.cond_dropout)
        if p <= 0.0:
            return features
        drop = (torch.rand(self.global_batch_size, generator=gen) < p)[self.local_slice]
        uncond = self.bundle.uncond_features.to(device=features.device, dtype=features.dtype)
        return torch.where(drop.to(features.device)[:, None, None], uncond.expand_as(features), features)

    def trainable_names(self) -> List[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def export(self, folder: Path, state_dict: Optional[Mapping[str, torch.Tensor]]) -> None:
        if state_dict is not None and self.accelerator.distributed_type == DistributedType.FSDP:
            self.model.load_state_dict(state_dict)
        d = self.detok
        unet = merged_unet(d.unet)
        if unet is not d.unet or getattr(unet, "is_gradient_checkpointing", False):
            d = SeedStoryDetokenizer(d.config, d.resampler, unet, d.vae, d.scheduler)
        dataclasses.replace(self.bundle, detokenizer=d).save(folder)


def build_parser():
    p = base_parser(
        "python -m training.stage1_detokenizer",
        "SEED-Story stage 1: de-tokenizer pretraining (ViT features -> SD-XL).",
        DEFAULTS,
    )
    add_detok_arguments(p)
    return p


def train_stage1(
    args=None,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Run stage 1. ``args``: CLI list, dict of argument names (``records=[...]`` allowed) or Namespace."""
    ns = resolve_args(build_parser(), args)
    return run_training(DetokenizerTask, ns, progress=progress, cancel=cancel)


def main(argv=None) -> int:
    return entry_main(train_stage1, argv)


if __name__ == "__main__":
    raise SystemExit(main())
