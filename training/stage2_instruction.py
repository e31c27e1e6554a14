"""Stage 2: story instruction tuning of the MLLM agent (docs/reference.md §2.5, §5, §6 "Stage 2 SFT").

Per micro-batch: ``--batch-size`` random-length story prefixes from the sample builder
(:mod:`seedstory_core.data.samples`: k = randint(0, n-2), loss on the last caption + target BOI + EOS and the
cosine regression of the last image), frozen visual-tokenizer features of every kept frame (official squash
transform ``qwen_448_transform``; computed on the fly and cached in RAM), then ``SeedStoryAgent.forward``:
total = CE + mean(1 - cos) per token.

Trainable (official): LoRA (r16/alpha32/dropout 0.05 on q,k,v,o,gate,up,down), the RMSNorm copies
(``modules_to_save``), ``embed_tokens``, ``lm_head`` and both resamplers except their frozen ``pos_embed``.
``--train-base`` additionally trains every base LLaMA weight (a full fine-tune): a randomly initialised tiny
LLaMA cannot learn a language through rank-16 LoRA adapters alone, so the tiny model needs it; the official
7B run does not use it.

Official optimiser defaults: AdamW lr 1e-4, wd 0.05, betas (0.9, 0.98), eps 1e-6, warmup 100, cosine floor 0.05,
6000 steps, grad-norm clip 1.0, batch 30 per GPU x 8.

Usage::

    python -m training.stage2_instruction --data DIR --init bundle:runs/s1/model --out runs/s2 --train-base
    accelerate launch --config_file training/configs/accelerate_deepspeed_zero2.yaml \
        -m training.stage2_instruction --data DIR --init bundle:PATH --out runs/s2 --mixed-precision bf16 \
        --gradient-checkpointing --batch-size 30
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from accelerate.utils import DistributedType
from torch import nn

from seedstory_core.data.samples import StorySampleBuilder
from seedstory_core.data.samples import collate as collate_samples
from seedstory_core.data.storystream import load_records

from .common import (
    entry_main,
    FeatureCache,
    ImageSource,
    StageTask,
    base_parser,
    frozen_dtype,
    load_init_bundle,
    rank_weight,
    resolve_args,
    run_training,
)
from .rollout import OwnContext
from . import context_targets

DEFAULTS = dict(
    max_steps=6000,
    batch_size=30,
    grad_accum=1,
    lr=1e-4,
    weight_decay=0.05,
    beta1=0.9,
    beta2=0.98,
    eps=1e-6,
    warmup_steps=100,
    min_lr_ratio=0.05,
    save_every=3000,
)
MAX_TRIES = 50


def is_official_trainable(name: str) -> bool:
    """The official stage-2 trainable set (docs/reference.md §6), by our agent parameter name."""
    if "original_module" in name:
        return False  # peft keeps an unused copy of each wrapped norm (official: requires_grad but no gradient)
    if name.endswith("pos_embed"):
        return False
    return (
        "lora_" in name
        or "modules_to_save" in name
        or "embed_tokens" in name
        or "lm_head" in name
        or name.startswith(("input_resampler.", "output_resampler."))
    )


def configure_agent_trainable(agent: nn.Module, train_base: bool = False) -> None:
    for name, p in agent.named_parameters():
        trainable = is_official_trainable(name)
        if train_base and name.startswith("llm.") and "original_module" not in name:
            trainable = True
        p.requires_grad_(trainable)


def set_lora_dropout(agent: nn.Module, p: float) -> int:
    """Set the dropout probability of every peft LoRA dropout (``*.lora_dropout.<adapter>``, nn.Dropout) to ``p``
    for this training run (the saved agent config keeps its ``lora_dropout``). Returns the number of modules set.

    Raises ValueError for ``p`` outside [0, 1), or for ``p > 0`` when the agent was built with LoRA dropout 0 (peft
    then has ``nn.Identity`` there, nothing to set)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"--lora-dropout must be in [0, 1), found {p}.")
    n = 0
    for name, m in agent.named_modules():
        if ".lora_dropout." in f".{name}" and isinstance(m, nn.Dropout):
            m.p = p
            n += 1
    if n == 0 and p > 0.0:
        raise ValueError(
            f"--lora-dropout {p}: the agent has no LoRA dropout module (built with lora_dropout 0); "
            "set lora_dropout in the bundle's agent config instead."
        )
    return n


class AgentTrainModule(nn.Module):
    """Wraps the agent for ``accelerator.prepare``: ``forward(**batch)`` -> ``{loss, lm_loss, rec_loss}``.

    ``batch`` may carry ``lm_weight`` / ``rec_weight`` (python floats, default 1.0): multipliers of this rank's mean
    LM / regression losses (:func:`training.common.rank_weight`) so that, averaged over the DDP ranks, loss and
    gradient equal those of the global micro-batch (the CE is a mean over a rank-dependent number of label tokens).
    ``loss = lm_loss_scale * lm_weight * lm + rec_loss_scale * rec_weight * rec``; the returned ``lm_loss`` /
    ``rec_loss`` are the weighted ones too (their rank mean is the global value). With one process the weights are
    exactly 1 and this is the agent's ``total_loss``."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, lm_weight: float = 1.0, rec_weight: float = 1.0, **batch):
        if context_targets.CONTEXT_POSITIONS in batch:  # --context-targets: one pass, more target images
            out = context_targets.forward(self.agent, **batch)
        else:
            out = self.agent(**batch, return_recon_image_embeds=False)
        if lm_weight == 1.0 and rec_weight == 1.0:
            return {"loss": out["total_loss"], "lm_loss": out["lm_loss"], "rec_loss": out["rec_loss"]}
        lm, rec = out["lm_loss"], out["rec_loss"]
        if lm is not None:
            # a rank without label tokens has a NaN mean CE (0/0); its weight is 0, keep the graph finite
            lm = torch.nan_to_num(lm) * lm_weight if lm_weight != 0.0 else 0.0 * out["logits"].sum()
        rec = rec * rec_weight
        total = self.agent.rec_loss_scale * rec
        if lm is not None:
            total = self.agent.lm_loss_scale * lm + total
        return {"loss": total, "lm_loss": lm, "rec_loss": rec}


class StoryBatches:
    """Random story-prefix batches (docs/reference.md §5) with cached frozen ViT features; shared by stages 2 and 3."""

    def __init__(self, args, tokenizer, vit, vit_mode: str):
        self.args = args
        self.records, root = load_records(
            args.data, getattr(args, "records", None), args.image_root, args.max_records, keep=("cast",)
        )
        self.images = ImageSource(self.records, root)
        self.cache = FeatureCache(not args.no_feature_cache)
        self.builder = StorySampleBuilder(
            tokenizer, max_length=int(args.max_length), text_loss=getattr(args, "text_loss", "last")
        )
        self.vit = vit
        self.vit_mode = vit_mode
        self.dropped = 0
        self.context_targets = int(getattr(args, "context_targets", 0) or 0)
        if self.context_targets < 0:
            raise ValueError(f"--context-targets must be >= 0, found {self.context_targets}.")
        self.num_img_tokens = len(tokenizer.image_ids.img)
        self.cast_prob = float(getattr(args, "cast_prob", 0.0) or 0.0)
        if not 0.0 <= self.cast_prob <= 1.0:
            raise ValueError(f"--cast-prob must be in [0, 1], found {self.cast_prob}.")
        own = getattr(args, "own_context", None)
        self.own_context_prob = float(getattr(args, "own_context_prob", 0.0) or 0.0)
        if not 0.0 <= self.own_context_prob <= 1.0:
            raise ValueError(f"--own-context-prob must be in [0, 1], found {self.own_context_prob}.")
        if self.own_context_prob > 0.0 and not own:
            raise ValueError(
                f"--own-context-prob {self.own_context_prob} needs --own-context FILE (python -m training.rollout)."
            )
        if own:
            self.own = OwnContext(own)
            for r in range(len(self.records)):  # fail before training, not at the first unlucky draw
                self.own.get(self.images.key(r, 0), len(self.records[r]["images"]) - 1)
        else:
            self.own = None

    def features(self, r: int, f: int) -> torch.Tensor:
        def compute():
            return self.vit.encode_images([self.images.open(r, f)], mode=self.vit_mode)[0].float().cpu()

        return self.cache.get((self.images.key(r, f), "vit", self.vit_mode), compute)

    def cast_features(self, r: int, name: str) -> torch.Tensor:
        """(T, D) features of the cast-sheet picture of ``name`` in record ``r`` (frozen visual tokenizer)."""

        def compute():
            return self.vit.encode_images([self.images.open_cast(r, name)], mode=self.vit_mode)[0].float().cpu()

        return self.cache.get((self.images.cast_key(r, name), "vit", self.vit_mode), compute)

    def context_features(self, r: int, f: int, sample) -> torch.Tensor:
        """(T, D) features of frame ``f`` of record ``r`` in ``sample``: the visual tokenizer's features of the true
        frame, or -- for a context image after the first of a sample marked ``own_context`` -- the agent's own
        rolled-out regressed features (:mod:`training.rollout`, scheduled sampling). Targets are always true."""
        if sample.extras.get("own_context") and 0 < f < sample.image_indices[-1]:
            return self.own.get(self.images.key(r, 0), f)
        return self.features(r, f)

    def pick(self, rng: random.Random, n: int) -> List[Tuple[int, Any]]:
        """``n`` (record index, :class:`StorySample`) pairs drawn from ``rng`` (token ids only, no images). With
        ``--own-context`` each sample is marked (``extras['own_context']``) with probability ``--own-context-prob``,
        an extra draw from ``rng`` that is made only when an own-context file is given."""
        picks = []
        while len(picks) < int(n):
            for _ in range(MAX_TRIES):
                r = rng.randrange(len(self.records))
                cast = ()
                if self.cast_prob > 0.0 and self.records[r].get("cast") and rng.random() < self.cast_prob:
                    cast = [c["name"] for c in self.records[r]["cast"]]
                s = self.builder.sample(self.records[r]["captions"], rng, cast=cast)
                if s is not None:
                    break
                self.dropped += 1
            else:
                raise ValueError(
                    f"no sample shorter than --max-length {self.args.max_length} in {MAX_TRIES} draws; raise it."
                )
            if self.own is not None and rng.random() < self.own_context_prob:
                s.extras["own_context"] = True
            if self.context_targets:
                s.extras["context_frames"] = context_targets.choose_frames(s, self.context_targets)
            picks.append((r, s))
        return picks

    def load(self, picks: List[Tuple[int, Any]]):
        """-> (samples, per-sample feature stacks (k_i + 2, T, D), [(record, frame) of each target])."""
        samples = [s for _, s in picks]
        feats = [
            torch.stack(
                [self.cast_features(r, name) for name in s.cast]
                + [self.context_features(r, f, s) for f in s.image_indices]
            )
            for r, s in picks
        ]
        targets = [(r, s.image_indices[-1]) for r, s in picks]
        for r, s in picks:
            frames = s.extras.get("context_frames")
            if frames:  # always the true frames' features, whatever the context holds
                s.extras["context_features"] = torch.stack([self.features(r, f) for f in frames])
        return samples, feats, targets

    def draw(self, rng: random.Random, total: Optional[int] = None, keep: Optional[slice] = None):
        """Draw ``total`` samples (default ``--batch-size``) and load those in ``keep`` (default all): one rank's
        slice of the global micro-batch. -> (samples, per-sample feature stacks, [(record, frame) of each target])."""
        picks = self.pick(rng, int(self.args.batch_size) if total is None else total)
        return self.load(picks if keep is None else picks[keep])

    def collate(self, samples, feats):
        pad_to = int(self.args.max_length) if self.args.pad_to_max_length else None
        out = collate_samples(samples, self.builder.pad_id, pad_to=pad_to, images=feats)
        out.update(
            context_targets.collate_context(
                samples, [s.extras.get("context_features") for s in samples], self.num_img_tokens
            )
        )
        return out


def add_story_arguments(p) -> None:
    g = p.add_argument_group("samples")
    g.add_argument(
        "--max-length", type=int, default=1280, help="samples with >= this many tokens are dropped (official 1280)"
    )
    g.add_argument(
        "--text-loss",
        choices=("last", "all"),
        default="last",
        help="'last' (official): loss on the last caption only; 'all': on every [INST] caption and BOI after "
        "the first image (more text signal for models trained from scratch)",
    )
    g.add_argument(
        "--own-context",
        default=None,
        help="own_context.safetensors (or its folder) of `python -m training.rollout`: the agent's free-running "
        "regressed features of every training frame (scheduled sampling against exposure bias)",
    )
    g.add_argument(
        "--own-context-prob",
        type=float,
        default=0.0,
        help="probability that a sample's context images after the first are the rolled-out features instead of "
        "the true frames' (needs --own-context; targets stay true)",
    )
    g.add_argument(
        "--cast-prob",
        type=float,
        default=0.0,
        help="probability that a sample starts with its story's cast sheet (records with a 'cast' list, e.g. "
        "StoryStream-mini): the pinned block '<name>:<image>' per character before the first caption "
        "(seedstory_core.cast); 0 = never (official)",
    )
    g.add_argument(
        "--pad-to-max-length",
        action="store_true",
        help="pad every batch to --max-length like the official collate (default: to the longest sample; same loss)",
    )


class InstructionTask(StageTask):
    name = "stage2_instruction"
    shards_global_batch = True

    def __init__(self, args, accelerator):
        super().__init__(args, accelerator)
        self.bundle = load_init_bundle(args.init, args.seed)
        device = accelerator.device
        vit = (
            self.bundle.visual_tokenizer.to(device=device, dtype=frozen_dtype(accelerator)).eval().requires_grad_(False)
        )
        self.data = StoryBatches(args, self.bundle.tokenizer, vit, "squash")
        agent = self.bundle.agent.to(device)
        configure_agent_trainable(agent, args.train_base)
        if args.gradient_checkpointing:
            agent.llm.base_model.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if args.lora_dropout is not None:
            set_lora_dropout(agent, args.lora_dropout)
        if args.rec_loss_scale is not None:
            # a training-time weight only: the exported agent config keeps its own value
            agent.rec_loss_scale = float(args.rec_loss_scale)
        self.agent = agent.train()
        self.model = AgentTrainModule(agent)
        self.device = device

    @property
    def dropped(self) -> int:
        return self.data.dropped

    def batch(self, rng: random.Random, gen: torch.Generator) -> Dict[str, Any]:
        picks = self.data.pick(rng, self.global_batch_size)
        mine = picks[self.local_slice]
        samples, feats, _ = self.data.load(mine)
        b = {k: v.to(self.device) for k, v in self.data.collate(samples, feats).items()}
        if self.world > 1:
            # CE is a mean over label tokens (shifted: positions 1..L-1), the regression a mean over target images:
            # weight this rank's means by its share of the global micro-batch's counts
            def n_lm(s):
                return sum(1 for x in s.labels[1:] if x != -100)

            def n_rec(s):
                return sum(1 for x in s.embeds_gen_mask if x) + len(s.extras.get("context_frames", ()))

            b["lm_weight"] = rank_weight(sum(n_lm(s) for _, s in mine), sum(n_lm(s) for _, s in picks), self.world)
            b["rec_weight"] = rank_weight(sum(n_rec(s) for _, s in mine), sum(n_rec(s) for _, s in picks), self.world)
        return b

    def trainable_names(self) -> List[str]:
        return [n for n, p in self.agent.named_parameters() if p.requires_grad]

    def export(self, folder: Path, state_dict: Optional[Mapping[str, torch.Tensor]]) -> None:
        if state_dict is not None and self.accelerator.distributed_type == DistributedType.FSDP:
            self.model.load_state_dict(state_dict)
        if self.args.gradient_checkpointing:
            self.agent.llm.base_model.model.gradient_checkpointing_disable()
        self.agent.eval()
        self.bundle.save(folder)


def build_parser():
    p = base_parser(
        "python -m training.stage2_instruction",
        "SEED-Story stage 2: story instruction tuning of the MLLM agent.",
        DEFAULTS,
    )
    add_story_arguments(p)
    p.add_argument(
        "--train-base",
        action="store_true",
        help="also train every base LLaMA weight (full fine-tune; needed for a random tiny LLaMA)",
    )
    p.add_argument(
        "--lora-dropout",
        type=float,
        default=None,
        help="LoRA dropout for this run (default: the bundle's agent config, official 0.05); 0 makes the "
        "step deterministic given the data (used to compare 1 process with N processes)",
    )
    p.add_argument(
        "--context-targets",
        type=int,
        default=0,
        help="also regress the last N context images of each sample (after the first), each from the prefix "
        "before it, in the same forward pass (training/context_targets.py); 0 = official (the last image only)",
    )
    p.add_argument(
        "--rec-loss-scale",
        type=float,
        default=None,
        help="weight of the 1 - cos image-regression loss in the total (default: the agent config's, "
        "official 1.0); the LM loss keeps its weight",
    )
    return p


def train_stage2(
    args=None,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Run stage 2. ``args``: CLI list, dict of argument names (``records=[...]`` allowed) or Namespace."""
    ns = resolve_args(build_parser(), args)
    return run_training(InstructionTask, ns, progress=progress, cancel=cancel)


def main(argv=None) -> int:
    return entry_main(train_stage2, argv)


if __name__ == "__main__":
    raise SystemExit(main())
