"""SEED-Story de-tokenizer: ViT-space features -> ``ResamplerXLV2`` -> SD-XL UNet + VAE -> images
(docs/reference.md §4).

:class:`SeedStoryDetokenizer` mirrors the official ``SDXLAdapter`` (docs/reference.md §4.2): its ``nn.Module`` state
dict holds exactly ``resampler.*`` and ``unet.*`` -- the naming of the official de-tokenizer checkpoint
(``pretrained/detokenizer/.../pytorch_model.bin``: 62 ``resampler.*`` keys + the 280 UNet ``to_k``/``to_v``
weights). The VAE and the scheduler are plain attributes, not submodules, so they never enter that state dict
(officially they are separate objects too); ``.to()`` / ``.half()`` still move the VAE along (see ``_apply``).

Sampling uses diffusers' own ``StableDiffusionXLPipeline`` with both text encoders set to ``None`` and the
resampler outputs passed as ``prompt_embeds`` / ``pooled_prompt_embeds`` (the official ``generate`` does the same).
The SD-XL component configs ship with the package (``seedstory_core/configs/<preset>/``), so nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoints import (
    CheckpointMismatchError,
    LoadReport,
    PathLike,
    apply_state_dict,
    check_shapes,
    detect_checkpoint_kind,
    group_by_prefix,
    meta_module_shapes,
    read_state_dict,
    require_kind,
)
from .config import DetokenizerConfig
from .detok_resampler import ResamplerXLV2

__all__ = [
    "CONFIGS_DIR",
    "SCHEDULER_NAMES",
    "sdxl_config_dir",
    "load_sdxl_configs",
    "make_scheduler",
    "frame_seed",
    "is_trainable_unet_key",
    "normalize_latents",
    "calibrate_vae_latents",
    "SeedStoryDetokenizer",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

#: name -> (diffusers scheduler class name, extra config overrides). All are built with ``from_config`` of the
#: base (SD-XL) scheduler config, so betas / spacing / steps_offset / prediction type are those of SD-XL base.
_SCHEDULERS: Dict[str, Tuple[str, Dict[str, object]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}
SCHEDULER_NAMES: Tuple[str, ...] = tuple(_SCHEDULERS)

_DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


# ---------------------------------------------------------------------------------------------------- configs
def sdxl_config_dir(preset: str) -> Path:
    """Folder of a shipped SD-XL config preset (``sdxl_base`` or ``sdxl_tiny``) holding unet/, vae/, scheduler/.

    Raises ``ValueError`` listing the shipped presets when ``preset`` is unknown.
    """
    folder = CONFIGS_DIR / preset
    if not (folder / "unet" / "config.json").is_file():
        known = sorted(p.name for p in CONFIGS_DIR.iterdir() if (p / "unet" / "config.json").is_file())
        raise ValueError(f"Unknown SD-XL config preset {preset!r}: expected one of {known} (folders in {CONFIGS_DIR}).")
    return folder


def load_sdxl_configs(preset: str) -> Dict[str, dict]:
    """Read the shipped diffusers configs of ``preset``: ``{'unet': ..., 'vae': ..., 'scheduler': ...}`` (dicts)."""
    folder = sdxl_config_dir(preset)
    return {
        "unet": json.loads((folder / "unet" / "config.json").read_text()),
        "vae": json.loads((folder / "vae" / "config.json").read_text()),
        "scheduler": json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
    }


def make_scheduler(name: str, base_config: Mapping):
    """Build a fresh diffusers scheduler ``name`` (one of :data:`SCHEDULER_NAMES`) from ``base_config``.

    ``euler`` with the SD-XL base config is the official choice (docs/reference.md §4.2). Raises ``ValueError`` for an
    unknown name and ``ImportError`` when ``lms`` is asked for without scipy installed.
    """
    import diffusers

    if name not in _SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {list(SCHEDULER_NAMES)}.")
    cls_name, extra = _SCHEDULERS[name]
    if name == "lms":
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            raise ImportError(
                "The 'lms' scheduler needs scipy (pip install scipy); pick another scheduler or install it."
            )
    return getattr(diffusers, cls_name).from_config(dict(base_config), **extra)


def frame_seed(seed: int, frame_index: int) -> int:
    """Deterministic per-frame noise seed derived from ``(seed, frame_index)``.

    Frame 0 uses ``seed`` itself (so seed 42, frame 0 draws the same noise as the official code,
    docs/reference.md §4.2); frame k > 0 uses a 63-bit hash of ``(seed, k)`` (numpy ``SeedSequence``), stable across
    platforms and versions.
    Raises ``ValueError`` for negative or non-integer values.
    """
    for label, value in (("seed", seed), ("frame_index", frame_index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, found {value!r}.")
    if frame_index == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(frame_index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def is_trainable_unet_key(name: str) -> bool:
    """True for UNet parameter names of a module ending in ``to_k`` / ``to_v`` (attn1 and attn2;
    docs/reference.md §4.2)."""
    module = name.rsplit(".", 1)[0]
    return module.endswith(("to_k", "to_v"))


# ---------------------------------------------------------------------------------------------------- helpers
#: VAE config entries that describe its latent statistics (read from a diffusers folder's vae/config.json)
_VAE_LATENT_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


def normalize_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents (B, C, h, w) -> the diffusion model's latent space, the exact inverse of what diffusers'
    ``StableDiffusionXLPipeline`` applies before decoding.

    SD-XL's VAE: ``latents * scaling_factor`` (0.13025, docs/reference.md §4.2/§6:
    ``latent_dist.sample() * scaling_factor``).
    A VAE whose config also carries per-channel ``latents_mean`` / ``latents_std`` (diffusers' convention, set by
    :func:`calibrate_vae_latents` for the tiny VAE trained from scratch):
    ``(latents - mean) * scaling_factor / std``. Same dtype/device as ``latents``.
    """
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        c = latents.shape[1]
        m = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
        s = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
        return (latents - m) * cfg.scaling_factor / s
    return latents * cfg.scaling_factor


@torch.no_grad()
def calibrate_vae_latents(vae: nn.Module, images: torch.Tensor, batch_size: int = 64) -> Dict[str, object]:
    """Give a (tiny, from-scratch) VAE unit-variance latents: set ``latents_mean`` / ``latents_std`` (per channel,
    over the posterior means of ``images``) and ``scaling_factor = 1`` in ``vae.config``; returns those values.

    Why: SD-XL's ``scaling_factor`` 0.13025 was measured for SD-XL's own VAE (it makes its latents ~unit variance).
    A VAE trained here has other statistics (the first tiny VAE: std 0.21 after x 0.13025, mean offset 0.11), and
    diffusion on latents much smaller than the unit noise has a far lower signal-to-noise ratio at every timestep
    than the noise schedule assumes, so the UNet barely learns to follow its condition. This is the LDM recipe
    (scale = 1 / latent std of the training data), per channel, in diffusers' ``latents_mean``/``latents_std``
    convention, which ``StableDiffusionXLPipeline`` honours when decoding. Never used for the real SD-XL VAE.

    Args:
        images: (N, 3, H, W) float in [-1, 1] (N >= 2), the frames the de-tokenizer will be trained on.
    Raises:
        ValueError: wrong image tensor shape.
    """
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 2:
        raise ValueError(f"images must be (N>=2, 3, H, W) in [-1, 1], found {tuple(images.shape)}")
    p = next(vae.parameters())
    means = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device=p.device, dtype=p.dtype)
        means.append(vae.encode(x).latent_dist.mean.float().cpu())
    z = torch.cat(means)
    mean = z.mean(dim=(0, 2, 3))
    std = z.permute(1, 0, 2, 3).reshape(z.shape[1], -1).std(dim=1).clamp(min=1e-6)
    values = {
        "latents_mean": [round(float(v), 6) for v in mean],
        "latents_std": [round(float(v), 6) for v in std],
        "scaling_factor": 1.0,
    }
    vae.register_to_config(**values)
    return values


def _check_compatible(config: DetokenizerConfig, unet_cfg: Mapping) -> None:
    r = config.resampler
    problems = []
    if unet_cfg.get("cross_attention_dim") != r.prompt_embeds_dim:
        problems.append(
            f"unet cross_attention_dim={unet_cfg.get('cross_attention_dim')} but resampler output1_dim+output2_dim="
            f"{r.prompt_embeds_dim}"
        )
    expected_add = 6 * int(unet_cfg.get("addition_time_embed_dim") or 0) + r.output2_dim
    if (
        unet_cfg.get("addition_embed_type") != "text_time"
        or unet_cfg.get("projection_class_embeddings_input_dim") != expected_add
    ):
        problems.append(
            f"unet needs addition_embed_type='text_time' and projection_class_embeddings_input_dim = 6 * "
            f"addition_time_embed_dim + output2_dim = {expected_add}; found {unet_cfg.get('addition_embed_type')!r}, "
            f"{unet_cfg.get('projection_class_embeddings_input_dim')}"
        )
    if problems:
        raise ValueError(
            f"De-tokenizer config does not fit SD-XL preset {config.sdxl_preset!r}:\n  "
            + "\n  ".join(problems)
            + "\nPick the matching preset (official resampler -> 'sdxl_base', tiny -> 'sdxl_tiny')."
        )


def _build_modules(config: DetokenizerConfig, device, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfgs = load_sdxl_configs(config.sdxl_preset)
    _check_compatible(config, cfgs["unet"])
    with torch.device(device):
        resampler = ResamplerXLV2(config.resampler)
        unet = UNet2DConditionModel.from_config(cfgs["unet"])
        vae = AutoencoderKL.from_config(cfgs["vae"])
    if dtype is not None:
        # nn.Module.to directly: diffusers' ModelMixin.to warns about (empty) fp32-kept module lists here.
        resampler, unet, vae = (nn.Module.to(m, dtype) for m in (resampler, unet, vae))
    return resampler, unet, vae, cfgs


def _find_diffusers_weights(folder: Path, component: str) -> Path:
    sub = folder / component
    for name in _DIFFUSERS_WEIGHT_NAMES:
        if (sub / name).is_file():
            return sub / name
    raise FileNotFoundError(
        f"No {component} weights in {sub}: expected one of {list(_DIFFUSERS_WEIGHT_NAMES)}. Point sdxl_base at a "
        "diffusers SD-XL base folder (with unet/ and vae/) or at a single-file checkpoint such as "
        "sd_xl_base_1.0.safetensors."
    )


def _convert_single_file(
    checkpoint: Mapping[str, torch.Tensor], cfgs: Mapping[str, dict], source: str, want_unet: bool
):
    """LDM/SGM single-file keys -> diffusers UNet / VAE keys with diffusers' own single-file mapping functions."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    out = {}
    parts = (("unet", "UNet2DConditionModel", "model.diffusion_model."), ("vae", "AutoencoderKL", "first_stage_model."))
    for part, cls_name, prefix in parts:
        if part == "unet" and not want_unet:
            continue
        if not any(k.startswith(prefix) for k in checkpoint):
            raise CheckpointMismatchError(
                f"{source}: no '{prefix}*' keys, so it holds no SD-XL {part}. Expected a full SD-XL single-file "
                "checkpoint (e.g. sd_xl_base_1.0.safetensors) or a diffusers folder."
            )
        convert = SINGLE_FILE_LOADABLE_CLASSES[cls_name]["checkpoint_mapping_fn"]
        try:
            out[part] = convert(checkpoint=dict(checkpoint), config=dict(cfgs[part]))
        except (KeyError, IndexError, ValueError) as err:
            raise CheckpointMismatchError(
                f"{source}: diffusers could not convert the {part} weights ({type(err).__name__}: {err}). The file "
                "does not have the SD-XL base layout; use an SD-XL base 1.0 checkpoint."
            ) from None
    return out


def _move(module: nn.Module, device, source: str) -> nn.Module:
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointMismatchError(f"{source}: {len(left)} tensors were never loaded (e.g. {left[0]}).")
    return module.to(device) if device is not None else module


# ---------------------------------------------------------------------------------------------------- model
class SeedStoryDetokenizer(nn.Module):
    """ResamplerXLV2 + SD-XL UNet (submodules) with an SD-XL VAE and scheduler (plain attributes). Spec §4.

    Attributes:
        config: the :class:`~seedstory_core.config.DetokenizerConfig`.
        resampler: :class:`~seedstory_core.detok_resampler.ResamplerXLV2` (state-dict prefix ``resampler.``).
        unet: diffusers ``UNet2DConditionModel`` (state-dict prefix ``unet.``).
        vae: diffusers ``AutoencoderKL``; NOT part of ``state_dict()`` (it is not in the official adapter file),
            but moved/cast together with the module by ``.to()``, ``.half()`` etc.
        scheduler: the base diffusers scheduler (SD-XL ``EulerDiscreteScheduler``); ``generate`` builds a fresh
            scheduler from its config every call.
        load_report: the :class:`~seedstory_core.checkpoints.LoadReport` of :meth:`from_pretrained` (else None).

    Use :meth:`build` (random init, tests/training) or :meth:`from_pretrained` (official or our weights).
    """

    def __init__(self, config: DetokenizerConfig, resampler: ResamplerXLV2, unet: nn.Module, vae: nn.Module, scheduler):
        super().__init__()
        self.config = config
        self.resampler = resampler
        self.unet = unet
        # Plain attributes: bypass nn.Module registration so they stay out of state_dict() / parameters().
        object.__setattr__(self, "vae", vae)
        object.__setattr__(self, "scheduler", scheduler)
        self.load_report: Optional[LoadReport] = None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.vae is not None:
            self.vae._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, config: DetokenizerConfig, *, device=None, dtype: Optional[torch.dtype] = None, meta: bool = False
    ) -> "SeedStoryDetokenizer":
        """Randomly initialised de-tokenizer from the shipped SD-XL config preset ``config.sdxl_preset``.

        Args:
            config: de-tokenizer config; ``resampler.output1_dim + output2_dim`` must equal the UNet
                ``cross_attention_dim`` and ``6 * addition_time_embed_dim + output2_dim`` its
                ``projection_class_embeddings_input_dim`` (2048 / 2816 for SD-XL base).
            device: where parameters are created (default CPU); ignored when ``meta``.
            dtype: parameter dtype (default torch's default, float32).
            meta: build on the meta device (no memory; for key/shape checks or later ``load_state_dict(assign=True)``).

        Raises:
            ValueError: the resampler sizes do not fit the UNet config, or the preset is unknown.
        """
        from diffusers import EulerDiscreteScheduler

        target = torch.device("meta") if meta else torch.device(device if device is not None else "cpu")
        resampler, unet, vae, cfgs = _build_modules(config, target, dtype)
        return cls(config, resampler, unet, vae, EulerDiscreteScheduler.from_config(cfgs["scheduler"]))

    @classmethod
    def from_pretrained(
        cls,
        adapter_path: PathLike,
        sdxl_base: PathLike,
        config: Optional[DetokenizerConfig] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
    ) -> "SeedStoryDetokenizer":
        """Load the de-tokenizer from an adapter file plus SD-XL base weights, entirely offline.

        Args:
            adapter_path: the official de-tokenizer ``pytorch_model.bin`` (read with ``weights_only=True``) or our
                ``.safetensors``: keys ``resampler.*`` (62 officially) and ``unet.*`` -- at least every UNet
                ``to_k``/``to_v`` weight (280 officially, docs/reference.md §4.2); a full ``unet.*`` set is
                accepted too.
            sdxl_base: either a diffusers SD-XL base folder (``unet/``, ``vae/``; weights
                ``diffusion_pytorch_model[.fp16].safetensors`` or ``.bin``) or a single-file checkpoint such as
                ``sd_xl_base_1.0.safetensors`` (converted with diffusers' own single-file mapping functions against
                the shipped config; no network access).
            config: de-tokenizer config (default: the official one, ``DetokenizerConfig()``).
            device: target device (default CPU). dtype: parameter dtype (default float32).

        The UNet and VAE are always built from the shipped config of ``config.sdxl_preset`` on the meta device and
        the file tensors are assigned (no second copy). Every UNet key that the adapter lacks must come from the
        base; the adapter's ``to_k``/``to_v`` replace the base values. ``self.load_report`` records the accounting
        relative to the adapter file (missing = the UNet keys supplied by SD-XL base).

        Raises:
            FileNotFoundError: a path does not exist / a folder lacks unet or vae weights.
            WrongCheckpointKindError: ``adapter_path`` is not a de-tokenizer file, or ``sdxl_base`` is a file that
                is not an SD-XL single-file checkpoint.
            CheckpointMismatchError: a tensor shape differs from the model (message names key, expected and found
                shapes), a key has no place in the model, or required keys are missing.
            UnsafeCheckpointError: a pickle that needs code execution.
        """
        from diffusers import EulerDiscreteScheduler

        config = config if config is not None else DetokenizerConfig()
        adapter_path, sdxl_base = Path(adapter_path), Path(sdxl_base)
        if not sdxl_base.exists():
            raise FileNotFoundError(
                f"SD-XL base not found: {sdxl_base} (expected a diffusers folder or a single file)."
            )
        src = str(adapter_path)

        # 1. The adapter: kind, split, shapes -- before touching the large base weights.
        adapter = read_state_dict(adapter_path)
        require_kind(list(adapter), "detokenizer", adapter_path)
        resampler, unet, vae, cfgs = _build_modules(config, torch.device("meta"), dtype)
        res_sd = {k[len("resampler.") :]: v for k, v in adapter.items() if k.startswith("resampler.")}
        unet_ad = {k[len("unet.") :]: v for k, v in adapter.items() if k.startswith("unet.")}
        stray = [k for k in adapter if not k.startswith(("resampler.", "unet."))]
        if stray:
            raise CheckpointMismatchError(
                f"{src}: {len(stray)} key(s) are neither resampler.* nor unet.*: "
                + ", ".join(f"{p} ({n})" for p, n in group_by_prefix(stray, 3).items())
                + ". A de-tokenizer (SDXLAdapter) file holds only those two prefixes."
            )
        unet_shapes = meta_module_shapes(unet)
        check_shapes(
            {f"unet.{k}": s for k, s in unet_shapes.items()}, {f"unet.{k}": v for k, v in unet_ad.items()}, src
        )
        check_shapes(
            {f"resampler.{k}": s for k, s in meta_module_shapes(resampler).items()},
            {f"resampler.{k}": v for k, v in res_sd.items()},
            src,
        )
        unknown = sorted(k for k in unet_ad if k not in unet_shapes)
        if unknown:
            raise CheckpointMismatchError(
                f"{src}: {len(unknown)} unet.* key(s) have no place in the SD-XL UNet of preset "
                f"{config.sdxl_preset!r} (e.g. unet.{unknown[0]}). The file is for another UNet layout."
            )
        kv_keys = [k for k in unet_shapes if is_trainable_unet_key(k)]
        lacking = [k for k in kv_keys if k not in unet_ad]
        if lacking:
            raise CheckpointMismatchError(
                f"{src}: lacks {len(lacking)} of the {len(kv_keys)} UNet to_k/to_v weights (e.g. unet.{lacking[0]}); "
                "a de-tokenizer file must carry all of them (docs/reference.md §4.2). "
                "Pick the complete adapter checkpoint."
            )
        report = apply_state_dict(resampler, res_sd, source=src)
        report.loaded = [f"resampler.{k}" for k in report.loaded]

        # 2. SD-XL base: UNet (unless the adapter carries all of it) and VAE.
        need_unet_base = any(k not in unet_ad for k in unet_shapes)
        notes: List[str] = []
        if sdxl_base.is_dir():
            base_unet = read_state_dict(_find_diffusers_weights(sdxl_base, "unet")) if need_unet_base else {}
            vae_path = _find_diffusers_weights(sdxl_base, "vae")
            base_vae = read_state_dict(vae_path)
            vae_src = str(vae_path)
            sched_file = sdxl_base / "scheduler" / "scheduler_config.json"
            sched_cfg = json.loads(sched_file.read_text()) if sched_file.is_file() else cfgs["scheduler"]
            vae_cfg_file = sdxl_base / "vae" / "config.json"
            if vae_cfg_file.is_file():
                # the latent statistics belong to the VAE weights (a calibrated tiny VAE has its own), the layout
                # to the preset: take only the former from the folder's config
                vae_cfg = json.loads(vae_cfg_file.read_text())
                stats = {k: vae_cfg[k] for k in _VAE_LATENT_KEYS if k in vae_cfg}
                if stats:
                    vae.register_to_config(**stats)
        else:
            single = read_state_dict(sdxl_base)
            kind = detect_checkpoint_kind(single)
            require_kind(list(single), "sdxl_single_file", sdxl_base)
            converted = _convert_single_file(single, cfgs, str(sdxl_base), need_unet_base)
            base_unet, base_vae = converted.get("unet", {}), converted["vae"]
            vae_src = str(sdxl_base)
            sched_cfg = cfgs["scheduler"]
            unused = [k for k in single if not k.startswith(("model.diffusion_model.", "first_stage_model."))]
            if unused:
                notes.append(
                    f"{sdxl_base} ({kind}): {len(unused)} keys not used by the de-tokenizer: "
                    + ", ".join(f"{p} ({n})" for p, n in group_by_prefix(unused, 2).items())
                )
            del single
        base_src = str(sdxl_base)
        check_shapes(
            {f"unet.{k}": s for k, s in unet_shapes.items()}, {f"unet.{k}": v for k, v in base_unet.items()}, base_src
        )
        overridden = sorted(k for k in unet_ad if k in base_unet)
        merged = OrderedDict(base_unet)
        merged.update(unet_ad)
        apply_state_dict(unet, merged, source=f"{src} + {base_src}")
        apply_state_dict(vae, base_vae, source=vae_src)
        del merged, base_unet, base_vae, adapter

        report.loaded += [f"unet.{k}" for k in sorted(unet_ad)]
        report.missing = [f"unet.{k}" for k in sorted(unet_shapes) if k not in unet_ad]
        report.consumed = [f"sdxl_base:unet.{k}" for k in overridden]
        notes.insert(
            0, f"{len(report.missing)} UNet keys absent from the adapter were loaded from SD-XL base {base_src}"
        )
        if overridden:
            notes.insert(1, f"{len(overridden)} SD-XL base UNet tensors were replaced by the adapter's values")
        notes.append(f"VAE loaded from {vae_src}")
        report.notes += notes

        resampler = _move(resampler, device, src)
        unet = _move(unet, device, base_src)
        vae = _move(vae, device, vae_src)
        model = cls(config, resampler, unet, vae, EulerDiscreteScheduler.from_config(sched_cfg))
        model.load_report = report
        return model.eval()

    # ------------------------------------------------------------------ adapter weights
    def trainable_parameters(self) -> "OrderedDict[str, nn.Parameter]":
        """Stage-1/3 trainable set (docs/reference.md §4.2, §6): every resampler parameter and the weight of every
        UNet module whose name ends in ``to_k`` or ``to_v`` (attn1 and attn2). Returns name -> Parameter in
        state-dict naming (``resampler.*``, ``unet.*``); 62 + 280 tensors at official size."""
        out: "OrderedDict[str, nn.Parameter]" = OrderedDict()
        for name, p in self.resampler.named_parameters():
            out[f"resampler.{name}"] = p
        for name, p in self.unet.named_parameters():
            if is_trainable_unet_key(name):
                out[f"unet.{name}"] = p
        return out

    def adapter_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """The adapter checkpoint content (official layout): the :meth:`trainable_parameters` tensors, detached."""
        return OrderedDict((k, v.detach()) for k, v in self.trainable_parameters().items())

    def save_adapter(self, path: PathLike) -> Path:
        """Write :meth:`adapter_state_dict` to a ``.safetensors`` file (contiguous CPU copies); returns the path."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(
                f"save_adapter writes safetensors only; expected a '.safetensors' path, found {path.name!r}."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous().cpu() for k, v in self.adapter_state_dict().items()},
            str(path),
            metadata={"format": "pt", "seedstory": "detokenizer-adapter"},
        )
        return path

    # ------------------------------------------------------------------ inference
    @property
    def vae_scale_factor(self) -> int:
        """Pixel size of one latent cell: 2 ** (number of VAE levels - 1) (8 for SD-XL)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _prepare_features(self, features: torch.Tensor, label: str) -> torch.Tensor:
        e = self.config.resampler.embedding_dim
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[-1] != e:
            found = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"{label}: expected ViT-space features of shape (B, T, {e}), found {found}. Pass the visual "
                "tokenizer / agent output features of the model this de-tokenizer belongs to."
            )
        p = self.resampler.latents
        return features.to(device=p.device, dtype=p.dtype)

    def encode(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, E) -> ``(prompt_embeds (B, Q, out1 + out2), pooled (B, out2))`` (docs/reference.md §4.1).

        Input is moved/cast to the resampler's device and dtype. Raises ValueError on a wrong shape."""
        return self.resampler(self._prepare_features(features, "encode"))

    def initial_latents(
        self,
        batch: int,
        height: int,
        width: int,
        *,
        seed: int = 0,
        frame_index: Union[int, Sequence[int]] = 0,
        same_noise_every_frame: bool = False,
        device=None,
    ) -> Tuple[torch.Tensor, List[torch.Generator]]:
        """The starting noise of :meth:`generate`: (batch, latent_channels, height/f, width/f) in the UNet dtype.

        One ``torch.Generator`` per frame, created on ``device`` (default: the UNet's device) and seeded with
        :func:`frame_seed` ``(seed, frame_i)``, or with ``seed`` itself for every frame when
        ``same_noise_every_frame`` (the official behaviour: a fresh ``manual_seed(seed)`` per frame,
        docs/reference.md §4.2).
        Frame indices: ``frame_index + i`` for an int, or the given list (length ``batch``). Draws exactly as
        diffusers' pipeline would (``randn_tensor`` with a list of generators). Returns (latents, generators); the
        generators are then also used by stochastic schedulers.
        """
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(frame_index, (list, tuple)):
            frames = [int(f) for f in frame_index]
            if len(frames) != batch:
                raise ValueError(
                    f"frame_index lists {len(frames)} frames but the batch has {batch}; give one index per frame."
                )
        else:
            frames = [int(frame_index) + i for i in range(batch)]
        device = torch.device(device) if device is not None else self.unet.device
        seeds = [frame_seed(seed, 0) if same_noise_every_frame else frame_seed(seed, f) for f in frames]
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        f = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        latents = randn_tensor(shape, generator=generators, device=device, dtype=self.unet.dtype)
        return latents, generators

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        uncond_features: Optional[torch.Tensor],
        *,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        scheduler: str = "euler",
        width: Optional[int] = None,
        height: Optional[int] = None,
        seed: int = 0,
        frame_index: Union[int, Sequence[int]] = 0,
        same_noise_every_frame: bool = False,
        callback: Optional[Callable[[int, int], None]] = None,
        output: str = "pil",
    ):
        """Render images from ViT-space features with diffusers' ``StableDiffusionXLPipeline`` (docs/reference.md §4.2).

        Args:
            features: (B, T, E) features of the frames to draw (float; moved to the model's device/dtype).
            uncond_features: (1, T, E) or (B, T, E) -- the ViT features of an all-zero CLIP-normalised image
                (docs/reference.md §4.2); ``encode(uncond_features)`` gives the negative prompt and pooled
                embeddings. May be ``None`` only when ``guidance_scale <= 1`` (no classifier-free guidance).
            num_inference_steps: sampler steps (official default 30; the official scripts use 50).
            guidance_scale: CFG scale (official 7.5).
            scheduler: one of :data:`SCHEDULER_NAMES`, built from the base (SD-XL Euler) scheduler config.
            width, height: pixels (default ``config.default_size``; 1024 officially); multiples of
                :attr:`vae_scale_factor`. ``add_time_ids`` are (H, W, 0, 0, H, W), set by the pipeline.
            seed, frame_index, same_noise_every_frame: noise control, see :meth:`initial_latents`.
            callback: called as ``callback(step, total)`` after every denoising step (via the pipeline's
                ``callback_on_step_end``).
            output: ``'pil'`` -> list of B ``PIL.Image`` (RGB); ``'tensor'`` -> float32 CPU tensor (B, H, W, 3)
                in [0, 1].

        Raises:
            ValueError: bad shapes, sizes that are not multiples of the VAE factor, unknown scheduler/output,
                missing ``uncond_features`` with guidance, or a non-positive step count.
        """
        from diffusers import StableDiffusionXLPipeline

        if output not in ("pil", "tensor"):
            raise ValueError(f"output must be 'pil' or 'tensor', found {output!r}.")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, found {num_inference_steps}.")
        f = self.vae_scale_factor
        width = int(width if width is not None else self.config.default_size)
        height = int(height if height is not None else self.config.default_size)
        if width <= 0 or height <= 0 or width % f or height % f:
            raise ValueError(
                f"width and height must be positive multiples of {f} (the VAE factor), found {width}x{height}; "
                f"e.g. use {max(f, width // f * f)}x{max(f, height // f * f)}."
            )
        sched = make_scheduler(scheduler, self.scheduler.config)

        prompt_embeds, pooled = self.encode(features)
        batch = prompt_embeds.shape[0]
        neg_embeds = neg_pooled = None
        if guidance_scale > 1.0:
            if uncond_features is None:
                raise ValueError("uncond_features is required when guidance_scale > 1 (classifier-free guidance).")
            uncond = self._prepare_features(uncond_features, "uncond_features")
            if uncond.shape[0] not in (1, batch) or uncond.shape[1:] != features.shape[1:]:
                raise ValueError(
                    f"uncond_features must be (1, T, E) or (B, T, E) matching features {tuple(features.shape)}, "
                    f"found {tuple(uncond.shape)}."
                )
            neg_embeds, neg_pooled = self.resampler(uncond)
            neg_embeds = neg_embeds.expand(batch, -1, -1)
            neg_pooled = neg_pooled.expand(batch, -1)

        pipe = StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            unet=self.unet,
            scheduler=sched,
            force_zeros_for_empty_prompt=False,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        latents, generators = self.initial_latents(
            batch,
            height,
            width,
            seed=seed,
            frame_index=frame_index,
            same_noise_every_frame=same_noise_every_frame,
            device=pipe._execution_device,
        )

        def _on_step_end(p, step, timestep, kwargs):
            if callback is not None:
                callback(step + 1, int(p.num_timesteps))
            return kwargs

        result = pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=neg_embeds,
            negative_pooled_prompt_embeds=neg_pooled,
            num_inference_steps=int(num_inference_steps),
            guidance_scale=float(guidance_scale),
            width=width,
            height=height,
            latents=latents,
            generator=generators,
            output_type="pil" if output == "pil" else "pt",
            callback_on_step_end=_on_step_end,
        )
        images = result.images
        if output == "pil":
            return list(images)
        return images.permute(0, 2, 3, 1).float().clamp(0, 1).cpu()
