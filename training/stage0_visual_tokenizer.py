"""Stage 0 (models built from scratch): pretrain the visual tokenizer CLIP-style, then it stays frozen.

SEED-Story's visual tokenizer is Qwen-VL's pretrained ViT-G, frozen in every stage (docs/reference.md §1, §6). A tiny
bundle built from scratch (``seedstory_core.tiny.random_tiny_bundle``) has a RANDOM ViT instead, whose features hardly
separate the characters (cosine ~0.99 between consecutive frames with a different cast), so neither the stage-2
regression nor the de-tokenizer can learn who is who. This stage gives the tiny ViT what pretraining gives the real
one: it trains the whole :class:`~seedstory_core.visual_tokenizer.QwenVisualTokenizer` with a symmetric contrastive
(CLIP/InfoNCE) loss between

* the **pooled ViT output**: ``features.mean(dim=1)`` of the (B, n_queries, output_dim) features stage 1/2 read,
  L2-normalised; no projection head, so the features themselves must separate what the text separates; and
* a **small text encoder over each frame's attribute description**: the frame's ground-truth attributes from the
  training records (``attributes``, StoryStream-mini) written as compound tokens (``scene:park``,
  ``George@left``, ``George:walk``, ``kite@George``), summed by an ``EmbeddingBag`` and passed through a 2-layer
  MLP to ``output_dim``, L2-normalised.

Why the attribute description and not the caption: a StoryStream-mini caption depends on the story so far ("They
wave.", "He brings his kite." name nobody, and characters who stay silent are not mentioned), so a caption alone does
not determine its frame; the attributes do (the frame is rendered from them), including who stands where and who
holds what. Compound tokens keep the binding (who is left, who holds the kite) that a bag of single words would lose.
Only the training data's own records are used (the recipe passes seed 0's frames); the evaluation seeds are not seen.

Frames with the same attribute description are drawn from the same picture, so the loss treats every pair in the
batch with equal descriptions as positives (targets = the normalised equality matrix), not only the diagonal.
Logit scale: learnable, initialised to 1/0.07 and clamped to 100 (CLIP).

Images: the inference transform (``squash`` to ``config.image_size``, CLIP-normalised); no flips (left/right is
part of the description). Trainable: the whole ViT, the text encoder, the logit scale. Exported: the bundle with the
trained ViT (everything else unchanged) as ``OUT/model``; the text encoder as ``OUT/text_encoder.safetensors``
(not needed afterwards). Stages 1-3 then load the ViT frozen, as the paper freezes its ViT.

Measure (before/after): ``--measure BUNDLE [BUNDLE ...]`` prints, per bundle, the cosine between the features of
consecutive frames whose cast differs, and a linear probe of the cast (5 sigmoid outputs on the pooled features)
trained on seed ``--probe-train-seed`` frames and scored on seed ``--probe-test-seed`` frames that are not
pixel-identical to any probe-training frame nor to any frame of ``--data`` (the stage's training frames).

Usage::

    python -m training.stage0_visual_tokenizer --data DIR --init tiny --out runs/s0 --max-steps 400 --batch-size 128
    python -m training.stage0_visual_tokenizer --measure runs/tiny/init runs/tiny/stage0/model --data DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from seedstory_core.data import mini
from seedstory_core.data.storystream import read_records
from seedstory_core.preprocess import preprocess_images

from .common import (
    StageTask,
    base_parser,
    entry_main,
    ImageSource,
    load_init_bundle,
    resolve_args,
    run_training,
)

DEFAULTS = dict(
    max_steps=400,
    batch_size=128,
    grad_accum=1,
    lr=1e-3,
    weight_decay=0.01,
    beta1=0.9,
    beta2=0.98,
    eps=1e-6,
    warmup_steps=20,
    min_lr_ratio=0.1,
)


# ---------------------------------------------------------------------------------------------- the text side
def attribute_vocabulary() -> List[str]:
    """Every compound token of :func:`attribute_tokens` for StoryStream-mini (fixed by the world, not the data)."""
    vocab = [f"scene:{s}" for s in mini.SCENES]
    for name in mini.CHARACTER_NAMES:
        vocab += [f"{name}@{slot}" for slot in mini.SLOTS]
        vocab += [f"{name}:{a}" for a in mini.ACTIONS]
        vocab += [f"{obj}@{name}" for obj in mini.OBJECT_NAMES]
        vocab += [f"{name}~{colour}" for colour in mini.LOOK_COLOURS]
        vocab += [f"{name}^{acc}" for acc in mini.ACCESSORIES]
    return vocab


def attribute_tokens(attrs: Mapping[str, Any]) -> List[str]:
    """A frame's StoryStream-mini attributes as compound tokens (what is drawn: scene, who where, pose, who holds what).

    Args:
        attrs: ``{"background", "present", "positions"?, "objects", "action", "actors"}`` (mini's frame dict).
    Returns:
        sorted list of tokens, e.g. ``['George:walk', 'George@left', 'George^hat', 'George~red', 'Lily:stand',
        'Lily@right', 'Lily^bow', 'Lily~pink', 'kite@George', 'scene:park']`` (``~colour`` and ``^accessory``: the
        frame's ``looks``, when it has them; a character who is not an actor stands, as
        :func:`~seedstory_core.data.mini.render_frame` draws it).
    """
    positions = attrs.get("positions") or mini.slot_layout(attrs.get("present", []))
    actors = set(attrs.get("actors") or [])
    action = attrs.get("action") or "stand"
    toks = [f"scene:{attrs['background']}"]
    for name, slot in positions.items():
        toks.append(f"{name}@{slot}")
        toks.append(f"{name}:{action if name in actors else 'stand'}")
    for o in attrs.get("objects", []):
        toks.append(f"{o['name']}@{o['holder']}")
    for name, look in (attrs.get("looks") or {}).items():  # per-story looks (StoryStream-mini looks="story")
        if name in positions:
            toks += [f"{name}~{look['colour']}", f"{name}^{look['accessory']}"]
    return sorted(toks)


class AttributeTextEncoder(nn.Module):
    """Bag of compound attribute tokens -> L2-normalised embedding.

    ``forward(ids, offsets)`` (``nn.EmbeddingBag`` layout: ids (N,) int64 concatenated token ids, offsets (B,) int64)
    -> (B, out_dim) float32, unit norm. Architecture: EmbeddingBag(sum, ``width``) -> LayerNorm -> Linear -> GELU ->
    Linear(out_dim)."""

    def __init__(self, vocab_size: int, out_dim: int, width: int = 256):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, width, mode="sum")
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.embed(ids, offsets)), dim=-1)


def pooled_features(vit: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) CLIP-normalised pixels -> (B, output_dim) mean over the ViT's n_queries output tokens
    (not normalised)."""
    return vit(pixels).float().mean(dim=1)


class Stage0Module(nn.Module):
    """ViT + text encoder + logit scale; ``forward(pixels, ids, offsets, same)`` -> ``{'loss', 'acc'}``.

    ``same`` (B, B) bool: pairs with the same attribute description (positives). Loss: the mean of the image->text and
    text->image cross-entropies against the row-normalised ``same`` matrix (soft multi-positive InfoNCE)."""

    def __init__(self, vit: nn.Module, text: AttributeTextEncoder):
        super().__init__()
        self.vit = vit
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))

    def forward(self, pixels, ids, offsets, same):
        img = F.normalize(pooled_features(self.vit, pixels), dim=-1)
        txt = self.text(ids, offsets)
        scale = self.logit_scale.clamp(max=float(torch.log(torch.tensor(100.0)))).exp()
        logits = scale * img @ txt.t()
        target = same.float() / same.float().sum(dim=1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
            + torch.sum(-target * F.log_softmax(logits.t(), dim=1), dim=1).mean()
        )
        with torch.no_grad():  # retrieval accuracy: the best text of each image is a positive
            acc = same.gather(1, logits.argmax(dim=1, keepdim=True)).float().mean()
        return {"loss": loss, "acc_loss": 1.0 - acc}


# ---------------------------------------------------------------------------------------------- data
def load_attribute_records(data=None, records=None, image_root=None, max_records: int = 0):
    """Story records that carry per-frame ``attributes`` (StoryStream-mini), and the image root.

    Raises:
        ValueError: no data, or no record with one attributes dict per image (stage 0 needs StoryStream-mini's
            ground truth; real StoryStream data has none: start from a pretrained ViT instead).
    """
    records, root = read_records(
        data, records, image_root, what="stage 0: ", hint="a StoryStream-mini folder or .jsonl"
    )
    out = [
        {"id": r.get("id", i), "images": list(r["images"]), "attributes": list(r["attributes"])}
        for i, r in enumerate(records)
        if r.get("attributes") and len(r.get("attributes", [])) == len(r.get("images", []))
    ]
    if max_records:
        out = out[: int(max_records)]
    if not out:
        raise ValueError(
            "stage 0: no record has one 'attributes' dict per image; stage 0 trains on StoryStream-mini "
            "(python -m seedstory_core.data.mini) ground truth. For other data use a pretrained ViT."
        )
    return out, root


class Stage0Task(StageTask):
    name = "stage0_visual_tokenizer"

    def __init__(self, args, accelerator):
        super().__init__(args, accelerator)
        self.records, root = load_attribute_records(
            args.data, getattr(args, "records", None), args.image_root, args.max_records
        )
        self.images = ImageSource(self.records, root)
        self.bundle = load_init_bundle(args.init, args.seed)
        self.device = accelerator.device
        self.vocab = {t: i for i, t in enumerate(attribute_vocabulary())}
        vit = self.bundle.visual_tokenizer.to(self.device, torch.float32)
        vit.requires_grad_(True)
        text = AttributeTextEncoder(len(self.vocab), int(vit.config.output_dim), width=int(args.text_width))
        self.model = Stage0Module(vit, text).to(self.device).train()
        self.image_size = int(vit.config.image_size)
        self._pixels: Dict[str, torch.Tensor] = {}

    def pixels(self, r: int, f: int) -> torch.Tensor:
        """(3, S, S) float32 CLIP-normalised frame (squash), cached as float16 in RAM."""
        key = self.images.key(r, f)
        if key not in self._pixels:
            self._pixels[key] = preprocess_images([self.images.open(r, f)], image_size=self.image_size, mode="squash")[
                0
            ].half()
        return self._pixels[key].float()

    def batch(self, rng: random.Random, gen: torch.Generator) -> Dict[str, Any]:
        pix, ids, offsets, keys = [], [], [], []
        for _ in range(int(self.args.batch_size)):
            r = rng.randrange(len(self.records))
            f = rng.randrange(len(self.records[r]["images"]))
            pix.append(self.pixels(r, f))
            toks = attribute_tokens(self.records[r]["attributes"][f])
            offsets.append(len(ids))
            ids.extend(self.vocab[t] for t in toks)
            keys.append("|".join(toks))
        same = torch.tensor([[a == b for b in keys] for a in keys])
        return {
            "pixels": torch.stack(pix).to(self.device),
            "ids": torch.tensor(ids, device=self.device),
            "offsets": torch.tensor(offsets, device=self.device),
            "same": same.to(self.device),
        }

    def trainable_names(self) -> List[str]:
        return [n[len("vit.") :] for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("vit.")]

    def export(self, folder: Path, state_dict: Optional[Mapping[str, torch.Tensor]]) -> None:
        self.model.vit.eval()
        self.bundle.save(folder)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.model.text.state_dict().items()},
            str(Path(folder).parent / "text_encoder.safetensors"),
        )


def build_parser():
    p = base_parser(
        "python -m training.stage0_visual_tokenizer",
        "Stage 0 (models from scratch): CLIP-style pretraining of the visual tokenizer on frames and "
        "their attribute descriptions.",
        DEFAULTS,
    )
    p.add_argument("--text-width", type=int, default=256, help="width of the attribute text encoder")
    return p


def train_stage0(
    args=None,
    *,
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Run stage 0 (see the module doc). ``args``: CLI list, dict or Namespace.

    Returns :func:`run_training`'s metrics."""
    ns = resolve_args(build_parser(), args)
    return run_training(Stage0Task, ns, progress=progress, cancel=cancel)


# ---------------------------------------------------------------------------------------------- measurement
def _frame_hash(img) -> str:
    return hashlib.sha1(img.convert("RGB").tobytes()).hexdigest()


@torch.no_grad()
def _encode(vit, images, batch: int = 64) -> torch.Tensor:
    """(N, n_queries, output_dim) float32 ViT features of PIL frames (squash transform, as at inference)."""
    vit = vit.eval()
    out = []
    for i in range(0, len(images), batch):
        px = preprocess_images(images[i : i + batch], image_size=vit.config.image_size, mode="squash")
        out.append(vit(px.to(vit.device, vit.dtype)).float().cpu())
    return torch.cat(out)


def training_frame_hashes(data) -> set:
    """sha1 of every frame image of a StoryStream folder / jsonl (``--data``), to exclude them from held-out frames."""
    records, root = load_attribute_records(data)
    src = ImageSource(records, root)
    return {_frame_hash(src.open(r, f)) for r in range(len(records)) for f in range(len(records[r]["images"]))}


def measure_bundles(
    bundles: Sequence[str],
    *,
    exclude_hashes: Optional[set] = None,
    train_seed: int = 4000,
    test_seed: int = 4001,
    stories: int = 40,
    epochs: int = 300,
) -> Dict[str, Any]:
    """Does a visual tokenizer see the cast? For each bundle path (or ``'tiny'``: a seeded random tiny bundle):

    * ``cos_consecutive_diff_cast``: mean cosine between the flattened (n_queries x output_dim) features of
      consecutive frames of the test seed whose cast (``present``) differs; ``cos_pooled_...`` the same on the
      mean-pooled features (lower = the features tell the frames apart);
    * ``probe_cast_exact`` / ``probe_char_acc``: a linear probe (logistic regression, 5 sigmoid outputs, Adam,
      ``epochs`` full-batch steps, on standardised pooled features) trained on ``stories`` x 30 frames of
      ``train_seed``, scored on the test seed's frames that are pixel-identical neither to a probe-training frame nor
      to any hash in ``exclude_hashes`` (the stage's training frames): exact cast accuracy and per-character accuracy.
      ``chance_cast_exact`` is the majority-cast rate on the same frames.

    Returns ``{"frames": {...counts}, "bundles": {path: metrics}}``.
    """

    def frames(seed):
        imgs, casts, stories_ = [], [], []
        for k in range(stories):
            st = mini.generate_story(seed, k)
            ims = mini.render_story(st)
            imgs += ims
            casts += [[int(n in a["present"]) for n in mini.CHARACTER_NAMES] for a in st["attributes"]]
            stories_ += [k] * len(ims)
        return imgs, torch.tensor(casts, dtype=torch.float32), stories_

    tr_imgs, tr_y, _ = frames(train_seed)
    te_imgs, te_y, te_story = frames(test_seed)
    banned = set(exclude_hashes or ()) | {_frame_hash(i) for i in tr_imgs}
    keep = [i for i, im in enumerate(te_imgs) if _frame_hash(im) not in banned]
    # consecutive pairs (same story) with a different cast, over all test frames
    pairs = [
        (i, i + 1)
        for i in range(len(te_imgs) - 1)
        if te_story[i] == te_story[i + 1] and not torch.equal(te_y[i], te_y[i + 1])
    ]
    info = {
        "train_seed": train_seed,
        "test_seed": test_seed,
        "probe_train_frames": len(tr_imgs),
        "test_frames": len(te_imgs),
        "test_frames_kept": len(keep),
        "diff_cast_pairs": len(pairs),
    }
    keys = [tuple(y.tolist()) for y in te_y[keep]]
    majority = max(keys.count(k) for k in set(keys)) / len(keys)
    results = {}
    for path in bundles:
        bundle = load_init_bundle(path if path == "tiny" else f"bundle:{path}")
        vit = bundle.visual_tokenizer.float()
        tr, te = _encode(vit, tr_imgs), _encode(vit, te_imgs)
        a = te[[i for i, _ in pairs]].flatten(1)
        b = te[[j for _, j in pairs]].flatten(1)
        cos_flat = F.cosine_similarity(a, b).mean().item()
        cos_pool = (
            F.cosine_similarity(te[[i for i, _ in pairs]].mean(1), te[[j for _, j in pairs]].mean(1)).mean().item()
        )
        xtr, xte = tr.mean(1), te.mean(1)[keep]
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        torch.manual_seed(0)
        lin = nn.Linear(xtr.shape[1], tr_y.shape[1])
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(epochs):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(lin(xtr), tr_y).backward()
            opt.step()
        with torch.no_grad():
            pred = (lin(xte) > 0).float()
        y = te_y[keep]
        results[path] = {
            "cos_consecutive_diff_cast": round(cos_flat, 4),
            "cos_pooled_consecutive_diff_cast": round(cos_pool, 4),
            "probe_cast_exact": round((pred == y).all(1).float().mean().item(), 4),
            "probe_char_acc": round((pred == y).float().mean().item(), 4),
            "chance_cast_exact": round(majority, 4),
        }
    return {"frames": info, "bundles": results}


def _measure_parser():
    p = argparse.ArgumentParser(
        prog="python -m training.stage0_visual_tokenizer --measure",
        description="Second mode: measure how well bundles' visual tokenizers separate casts.",
    )
    p.add_argument("--measure", nargs="+", required=True, help="bundle folders ('tiny' = a random tiny bundle)")
    p.add_argument(
        "--data", default=None, help="the stage's training data: its frames are excluded from the test frames"
    )
    p.add_argument("--probe-train-seed", type=int, default=4000)
    p.add_argument("--probe-test-seed", type=int, default=4001)
    p.add_argument("--stories", type=int, default=40)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--measure" in argv:
        a = _measure_parser().parse_args(argv)
        torch.set_num_threads(1)
        result = measure_bundles(
            a.measure,
            exclude_hashes=training_frame_hashes(a.data) if a.data else None,
            train_seed=a.probe_train_seed,
            test_seed=a.probe_test_seed,
            stories=a.stories,
        )
        result["excluded_training_data"] = a.data
        text = json.dumps(result, indent=2)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(text + "\n")
        print(text, flush=True)
        return 0
    if "-h" in argv or "--help" in argv:  # list both modes: the measurement first, then training (which exits)
        print(_measure_parser().format_help(), flush=True)
    return entry_main(train_stage0, argv)


if __name__ == "__main__":
    raise SystemExit(main())
