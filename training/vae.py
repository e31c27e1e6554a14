"""Stage 0 (tiny models only): train the de-tokenizer's VAE to reconstruct story frames.

SEED-Story uses the frozen SD-XL VAE; it is never trained officially. A bundle built from scratch
(``--init tiny``) has a RANDOM tiny VAE, whose decoder cannot produce images, so nothing the UNet learns would
ever be visible. We train it as a separate step BEFORE stage 1 (rather than jointly inside stage 1): the UNet
must learn a fixed latent space, and a separate step keeps stages 1/3 exactly the official recipe.

Loss (LDM-style): MSE(reconstruction, frame) on posterior samples + ``--kl-weight`` (1e-6) x KL(q(z|x) || N(0, I))
(per-sample KL sum, batch mean). Frames: bicubic short-side resize + centre crop to the de-tokenizer size, in
[-1, 1] (the stage-1/3 target transform). Trainable: the whole VAE. The result is a bundle whose
``detokenizer/sdxl/vae`` holds the trained VAE. At export the VAE's latent statistics are measured on
``--calibration-frames`` training frames and written into its config (``latents_mean``/``latents_std``, scaling 1):
the LDM recipe of scaling latents to unit variance, which SD-XL's 0.13025 does for SD-XL's VAE only.

Usage::

    python -m training.vae --data DIR --init tiny --out runs/s0 --max-steps 300 --batch-size 16 --lr 1e-3
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import nn

from seedstory_core.data.samples import sd_target
from seedstory_core.data.storystream import load_records
from seedstory_core.detokenizer import calibrate_vae_latents

from .common import (
    entry_main,
    FeatureCache,
    ImageSource,
    StageTask,
    base_parser,
    load_init_bundle,
    resolve_args,
    run_training,
)

DEFAULTS = dict(
    max_steps=500,
    batch_size=16,
    grad_accum=1,
    lr=1e-3,
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    warmup_steps=20,
    min_lr_ratio=0.1,
)


class VAETrainModule(nn.Module):
    def __init__(self, vae: nn.Module, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = float(kl_weight)

    def forward(self, images, eps):
        dist = self.vae.encode(images).latent_dist
        z = dist.mean + dist.std * eps
        recon = self.vae.decode(z).sample
        rec = F.mse_loss(recon.float(), images.float())
        kl = dist.kl().mean()
        return {"loss": rec + self.kl_weight * kl, "rec_loss": rec, "kl_loss": kl}


class VAETask(StageTask):
    name = "stage0_vae"

    def __init__(self, args, accelerator):
        super().__init__(args, accelerator)
        self.records, root = load_records(args.data, getattr(args, "records", None), args.image_root, args.max_records)
        self.images = ImageSource(self.records, root)
        self.cache = FeatureCache(not args.no_feature_cache)
        self.bundle = load_init_bundle(args.init, args.seed)
        self.device = accelerator.device
        detok = self.bundle.detokenizer
        self.size = int(args.resolution or detok.config.default_size)
        vae = detok.vae.to(self.device, torch.float32)
        vae.requires_grad_(True)
        if args.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        self.model = VAETrainModule(vae, args.kl_weight).train()
        self.latent_channels = int(vae.config.latent_channels)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def frame(self, r: int, f: int) -> torch.Tensor:
        return self.cache.get(
            (self.images.key(r, f), "sd", self.size), lambda: sd_target(self.images.open(r, f), self.size)[0]
        )

    def batch(self, rng: random.Random, gen: torch.Generator) -> Dict[str, Any]:
        imgs = []
        for _ in range(int(self.args.batch_size)):
            r = rng.randrange(len(self.records))
            imgs.append(self.frame(r, rng.randrange(len(self.records[r]["images"]))))
        x = torch.stack(imgs)
        if self.args.hflip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        lat = self.size // self.factor
        eps = torch.randn(x.shape[0], self.latent_channels, lat, lat, generator=gen)
        return {"images": x.to(self.device), "eps": eps.to(self.device)}

    def trainable_names(self) -> List[str]:
        return [n[len("vae.") :] for n, p in self.model.named_parameters() if p.requires_grad]

    def export(self, folder: Path, state_dict: Optional[Mapping[str, torch.Tensor]]) -> None:
        if state_dict is not None and self.accelerator.distributed_type == DistributedType.FSDP:
            self.model.load_state_dict(state_dict)
        self.model.vae.disable_gradient_checkpointing() if self.args.gradient_checkpointing else None
        self.model.vae.eval()
        n = int(self.args.calibration_frames)
        if n > 0:
            rng = random.Random(self.args.seed)
            picks = [
                (r, rng.randrange(len(self.records[r]["images"])))
                for r in (rng.randrange(len(self.records)) for _ in range(n))
            ]
            frames = torch.stack([self.frame(r, f) for r, f in picks])
            self.calibration = calibrate_vae_latents(self.model.vae, frames)
        self.bundle.save(folder)


def build_parser():
    p = base_parser(
        "python -m training.vae", "Stage 0 (tiny models): train the de-tokenizer VAE on story frames.", DEFAULTS
    )
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--resolution", type=int, default=0, help="image size (0 = config.detokenizer.default_size)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument(
        "--calibration-frames",
        type=int,
        default=256,
        help="frames used at export to set the VAE's per-channel latents_mean/latents_std (unit-variance "
        "diffusion latents, see seedstory_core.detokenizer.calibrate_vae_latents); 0 = keep the config",
    )
    return p


def train_vae(
    args=None,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    ns = resolve_args(build_parser(), args)
    return run_training(VAETask, ns, progress=progress, cancel=cancel)


def main(argv=None) -> int:
    return entry_main(train_vae, argv)


if __name__ == "__main__":
    raise SystemExit(main())
