"""Stage 3: de-tokenizer adaptation to the agent's regressed features (docs/reference.md §5 "Stage 3 extras", §6).

Per micro-batch: ``--batch-size`` random-length story prefixes (the stage-2 sample builder), frozen ViT
features of every kept frame with the KEEP-RATIO transform (official ``qwen_448_transform_keep_ratio``), the
frozen stage-2 agent's forward (``no_grad``, ``return_recon_image_embeds``) -> the regressed target features
(B, T, D); the target frame -> ``sd_images`` + ``time_ids`` (crop offsets FIXED, see
:mod:`seedstory_core.data.samples`; ``--official-crop-swap`` reproduces the bug); then the stage-1 loss
(VAE latents, DDPM noise, epsilon-MSE). Trainable: resampler + UNet ``to_k``/``to_v`` (``--unet-train``).
``--cond-dropout P`` (default 0, as the official: no condition dropout) replaces a sample's regressed features by
the unconditional ones with probability P, so the adaptation keeps the guidance branch a stage 1 trained that way.

**Agent mode.** The official script never calls ``agent.eval()``: peft's LoRA layers are in train mode, so LoRA
dropout 0.05 is (probably) active while the teacher features are computed, i.e. the de-tokenizer learns from
randomly perturbed features it never sees at inference. We run the agent in EVAL mode (deterministic features,
as at inference); ``--agent-train-mode`` reproduces the official behaviour.

Official defaults: AdamW lr 1e-4, wd 0.03 (default betas/eps), warmup 500, cosine floor 0.01, 1600 steps,
gradient accumulation 4, batch 4 per GPU.

In-process use (ComfyUI)::

    from training.stage3_adaptation import run_stage3
    metrics = run_stage3(data=DIR, init="bundle:runs/s2/model", out="runs/s3", max_steps=200,
                         progress=lambda step, total, loss: ..., cancel=lambda: False)
    # or from models already in memory: the bundle's de-tokenizer is trained in place
    run_stage3(data=DIR, init=bundle, out="runs/s3", max_steps=200, no_export=True)
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Optional

import torch

from .common import base_parser, entry_main, frozen_dtype, frozen_module, resolve_args, run_training
from .stage1_detokenizer import DetokenizerTask, add_detok_arguments
from .stage2_instruction import StoryBatches, add_story_arguments

DEFAULTS = dict(
    max_steps=1600,
    batch_size=4,
    grad_accum=4,
    lr=1e-4,
    weight_decay=0.03,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    warmup_steps=500,
    min_lr_ratio=0.01,
    save_every=0,
)


class AdaptationTask(DetokenizerTask):
    name = "stage3_adaptation"

    def __init__(self, args, accelerator):
        super().__init__(args, accelerator)
        agent = frozen_module(self.bundle.agent, self.device, frozen_dtype(accelerator), borrowed=self.borrowed)
        self.agent = agent.train() if args.agent_train_mode else agent
        self.story = StoryBatches(args, self.bundle.tokenizer, self.vit, "keep_ratio")
        # share the ViT feature cache with the per-frame cache of the parent (same transform)
        self.story.features = lambda r, f: self.frame(r, f)[0]

    @property
    def dropped(self) -> int:
        return self.story.dropped if hasattr(self, "story") else 0

    @dropped.setter
    def dropped(self, value) -> None:
        pass

    @torch.no_grad()
    def regressed_features(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        b = {k: v.to(self.device) for k, v in batch.items() if k not in ("sd_images", "time_ids")}
        with self.accelerator.autocast():
            out = self.agent(**b, return_recon_image_embeds=True)
        return out["recon_image_embeds"].float()

    def batch(self, rng: random.Random, gen: torch.Generator) -> Dict[str, Any]:
        # the global micro-batch's samples; this rank keeps (and runs the agent on) its own slice
        samples, feats, targets = self.story.draw(rng, self.global_batch_size, self.local_slice)
        batch = self.story.collate(samples, feats)
        recon = self.regressed_features(batch)
        sds, tids = zip(*[self.frame(r, f)[1:] for r, f in targets])
        out = self.diffusion_inputs(torch.stack(sds), torch.stack(tids), gen)
        out["features"] = self.drop_condition(recon, gen)
        return out


def build_parser():
    p = base_parser(
        "python -m training.stage3_adaptation",
        "SEED-Story stage 3: de-tokenizer adaptation to the agent's regressed features.",
        DEFAULTS,
    )
    add_detok_arguments(p)
    add_story_arguments(p)
    p.add_argument(
        "--agent-train-mode",
        action="store_true",
        help="keep the agent in train mode (official: LoRA dropout active for the teacher features)",
    )
    return p


def train_stage3(
    args=None,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Run stage 3. ``args``: CLI list, dict of argument names (``records=[...]`` allowed) or Namespace."""
    ns = resolve_args(build_parser(), args)
    return run_training(AdaptationTask, ns, progress=progress, cancel=cancel)


def run_stage3(
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
    **kwargs,
) -> Dict[str, Any]:
    """In-process stage 3 (the ComfyUI Adapt De-tokenizer node): keyword arguments = the CLI options (``data``,
    ``init``, ``out``, ``max_steps``, ``batch_size``, ``records`` ...).

    ``init`` may be an in-memory :class:`~seedstory_core.bundle.SeedStoryBundle`: training then needs no model on
    disk. Its de-tokenizer is trained IN PLACE (pass a copy to keep the original); its agent and visual tokenizer
    stay frozen and are never moved or cast in place (a frozen copy is made only when they are not already on the
    training device in the training dtype; :func:`training.common.frozen_module`). With ``no_export=True`` nothing
    but the checkpoints and the log is written to ``out``.

    ``progress(step, total, loss)`` is called after every optimizer step; when ``cancel()`` returns True the run
    stops after the current step, saves a checkpoint (``OUT/checkpoints/step-N``, resumable) and exports
    ``OUT/model`` unless ``no_export``; metrics['cancelled'] is then True."""
    kwargs.setdefault("no_progress", True)
    return train_stage3(kwargs, progress=progress, cancel=cancel)


def main(argv=None) -> int:
    return entry_main(train_stage3, argv)


if __name__ == "__main__":
    raise SystemExit(main())
