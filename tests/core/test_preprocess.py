"""seedstory_core.preprocess (docs/reference.md §1 "Preprocessing", §4.2): input kinds, official transforms, errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from seedstory_core.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    preprocess_images,
    to_comfy_image,
    to_pil_images,
    zero_image_pixels,
)

S = 32
RNG = np.random.default_rng(1234)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalise_np(u8_hwc: np.ndarray) -> np.ndarray:
    """Independent reference: (uint8/255 - mean)/std in float32, channels-first."""
    x = u8_hwc.astype(np.float32) / np.float32(255.0)
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return x.transpose(2, 0, 1)


def _unnormalise_u8(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return torch.round((x * std + mean) * 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------- accepted inputs
def _pil_cases():
    rgb = _rgb(91, 37, seed=3)  # odd size: 37 wide, 91 high
    gray = rgb[..., 0]
    cases = {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(gray),
        "LA": Image.fromarray(np.stack([gray, gray[::-1]], -1), mode="LA"),
        "RGBA": Image.fromarray(np.concatenate([rgb, gray[..., None]], -1), mode="RGBA"),
        "P": Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16),
        "1": Image.fromarray(gray).convert("1"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I": Image.fromarray(gray.astype(np.int32) * 257),
    }
    return cases


@pytest.mark.parametrize("mode_name", list(_pil_cases()))
@pytest.mark.parametrize("resize", ["squash", "keep_ratio"])
def test_pil_modes_give_normalised_batch(mode_name, resize):
    img = _pil_cases()[mode_name]
    assert img.mode == mode_name
    x = preprocess_images(img, image_size=S, mode=resize)
    assert x.shape == (1, 3, S, S) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_pil_list_and_mixed_list():
    cases = list(_pil_cases().values())
    x = preprocess_images(cases + [_rgb(20, 50)], image_size=S)
    assert x.shape == (len(cases) + 1, 3, S, S)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_comfy_tensor_channels(channels):
    t = torch.rand(2, 45, 29, channels)
    x = preprocess_images(t, image_size=S)
    assert x.shape == (2, 3, S, S) and x.dtype == torch.float32
    x3 = preprocess_images(t[0], image_size=S)  # [H,W,C]
    assert torch.equal(x3, x[:1])


def test_numpy_inputs():
    u8 = _rgb(40, 30)
    assert preprocess_images(u8, image_size=S).shape == (1, 3, S, S)
    assert preprocess_images(u8[None].repeat(3, 0), image_size=S).shape == (3, 3, S, S)
    assert preprocess_images(u8[..., 0], image_size=S).shape == (1, 3, S, S)  # [H,W] grayscale
    f = u8.astype(np.float32) / 255
    assert torch.equal(preprocess_images(f, image_size=S), preprocess_images(u8, image_size=S))


# ---------------------------------------------------------------------- RGB conversion rules
def test_grayscale_replicated_and_alpha_dropped():
    rgb = _rgb(S, S, seed=5)
    gray = rgb[..., 1]
    pils = to_pil_images(
        [
            Image.fromarray(gray),
            Image.fromarray(np.stack([gray, np.zeros_like(gray)], -1), mode="LA"),
            Image.fromarray(np.concatenate([rgb, np.zeros((S, S, 1), np.uint8)], -1), mode="RGBA"),
        ]
    )
    assert all(p.mode == "RGB" for p in pils)
    g = np.asarray(pils[0])
    assert (g == gray[..., None]).all()
    assert (np.asarray(pils[1]) == g).all()  # LA: alpha dropped (not composited onto black)
    assert (np.asarray(pils[2]) == rgb).all()  # RGBA with alpha 0: colours kept
    # same thing through the ComfyUI 1- and 4-channel paths
    t1 = torch.from_numpy(gray.astype(np.float32) / 255)[None, :, :, None]
    t4 = torch.from_numpy(np.concatenate([rgb, np.zeros((S, S, 1), np.uint8)], -1).astype(np.float32) / 255)[None]
    assert (np.asarray(to_pil_images(t1)[0]) == g).all()
    assert (np.asarray(to_pil_images(t4)[0]) == rgb).all()


def test_palette_matches_pil_convert():
    p = Image.fromarray(_rgb(23, 17, seed=9)).convert("P", palette=Image.ADAPTIVE, colors=8)
    assert (np.asarray(to_pil_images(p)[0]) == np.asarray(p.convert("RGB"))).all()


def test_sixteen_bit_scaled_not_clipped():
    gray = RNG.integers(0, 256, (13, 11), dtype=np.uint8)
    ref = np.asarray(to_pil_images(Image.fromarray(gray))[0])
    for img in (Image.fromarray(gray.astype(np.uint16) * 257), Image.fromarray(gray.astype(np.int32) * 257)):
        assert (np.asarray(to_pil_images(img)[0]) == ref).all(), img.mode
    assert (np.asarray(to_pil_images(gray.astype(np.uint16) * 257)[0]) == ref).all()  # numpy uint16


def test_float_tensor_equals_uint8_image():
    u8 = _rgb(37, 91, seed=7)
    as_float = torch.from_numpy(u8).float().div(255)[None]  # ComfyUI frame of the same picture
    for mode in ("squash", "keep_ratio"):
        a = preprocess_images(as_float, image_size=S, mode=mode)
        b = preprocess_images(Image.fromarray(u8), image_size=S, mode=mode)
        assert torch.equal(a, b)
    # quantisation rounds (not truncates): 0.5/255 above a level rounds up, just below stays
    t = torch.tensor([[[[10.6 / 255] * 3, [10.4 / 255] * 3]]])
    assert np.asarray(to_pil_images(t)[0])[0, :, 0].tolist() == [11, 10]


# ---------------------------------------------------------------------- official transforms
def test_squash_against_independent_pil():
    u8 = _rgb(91, 37, seed=11)
    x = preprocess_images(Image.fromarray(u8), image_size=S, mode="squash")
    expected = _normalise_np(np.asarray(Image.fromarray(u8).resize((S, S), resample=Image.Resampling.BILINEAR)))
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(91, 37), (37, 91), (50, 50), (33, 200)])
def test_keep_ratio_against_independent_pil(hw):
    h, w = hw
    u8 = _rgb(h, w, seed=h + w)
    x = preprocess_images(Image.fromarray(u8), image_size=S, mode="keep_ratio")
    # torchvision Resize(int): short side -> S, long side truncated; CenterCrop: offsets int(round(d / 2.0))
    if w <= h:
        nw, nh = S, int(S * h / w)
    else:
        nw, nh = int(S * w / h), S
    resized = np.asarray(Image.fromarray(u8).resize((nw, nh), resample=Image.Resampling.BILINEAR))
    top, left = int(round((nh - S) / 2.0)), int(round((nw - S) / 2.0))
    expected = _normalise_np(resized[top : top + S, left : left + S])
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=0, atol=1e-6)
    squash = preprocess_images(Image.fromarray(u8), image_size=S, mode="squash")
    if h != w:
        assert not torch.allclose(x, squash)


@pytest.mark.parametrize("width, left", [(45, 6), (47, 8), (33, 0)])
def test_keep_ratio_crop_offsets_use_round_half_even(width, left):
    # Short side already S: no resize; the crop offset is Python round((w - S) / 2.0) (banker's rounding,
    # as torchvision's CenterCrop): 13/2 = 6.5 -> 6, 15/2 = 7.5 -> 8, 1/2 = 0.5 -> 0.
    u8 = _rgb(S, width, seed=width)
    x = preprocess_images(u8, image_size=S, mode="keep_ratio")
    assert (_unnormalise_u8(x[0]) == u8[:, left : left + S]).all()


def test_same_size_squash_is_identity():
    u8 = _rgb(S, S, seed=2)
    x = preprocess_images(u8, image_size=S)
    np.testing.assert_allclose(x[0].numpy(), _normalise_np(u8), rtol=0, atol=1e-6)


def test_custom_mean_std():
    u8 = np.full((S, S, 3), 255, np.uint8)
    x = preprocess_images(u8, image_size=S, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.equal(x, torch.ones(1, 3, S, S))


# ---------------------------------------------------------------------- helpers
def test_zero_image_pixels():
    z = zero_image_pixels(S)
    assert z.shape == (1, 3, S, S) and z.dtype == torch.float32 and not z.any()
    with pytest.raises(ValueError, match="positive integer"):
        zero_image_pixels(0)


def test_to_comfy_image_pil_and_tensors():
    u8 = _rgb(20, 30, seed=4)
    out = to_comfy_image([Image.fromarray(u8), Image.fromarray(u8[..., 0])])
    assert out.shape == (2, 20, 30, 3) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.from_numpy(u8).float() / 255)
    assert (np.asarray(to_pil_images(out)[0]) == u8).all()  # round trip is lossless
    chw = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    assert torch.allclose(to_comfy_image(chw[None] * 2 - 1, value_range="-1..1")[0], out[0], atol=1e-6)
    assert torch.allclose(to_comfy_image(chw * 2 - 1)[0], out[0], atol=1e-6)  # auto-detected -1..1
    assert torch.equal(to_comfy_image(chw[None], value_range="0..1")[0], out[0])
    assert to_comfy_image(torch.full((1, 3, 4, 4), 3.0)).max() == 1.0  # clamped


def test_to_comfy_image_errors():
    with pytest.raises(ValueError, match="one size"):
        to_comfy_image([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        to_comfy_image(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="value_range"):
        to_comfy_image(torch.zeros(1, 3, 4, 4), value_range="0-255")
    with pytest.raises(ValueError, match="empty"):
        to_comfy_image([])
    with pytest.raises(ValueError, match="NaN"):
        to_comfy_image(torch.full((1, 3, 2, 2), float("nan")))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 8, 8, 3), "empty batch"),
        ([], "empty list"),
        (torch.zeros(8), "rank 1"),
        (torch.zeros(1, 1, 8, 8, 3), "rank 5"),
        (torch.zeros(2, 8, 8, 5), "4 channels"),
        (torch.zeros(3, 64, 64), "channels-first"),
        (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
        (torch.full((1, 8, 8, 3), float("inf")), "NaN or inf"),
        (torch.full((1, 8, 8, 3), 200.0), "divide by 255"),
        (torch.full((1, 8, 8, 3), -1.0), "-1..1"),
        (torch.zeros(1, 0, 8, 3), "non-zero"),
        (Image.new("RGB", (0, 5)), "non-zero"),
        (np.full((4, 4, 3), 300, np.int32), "0..255"),
        ("image.png", "found str"),
        ([Image.new("RGB", (4, 4)), [Image.new("RGB", (4, 4))]], "nested"),
        ([Image.new("RGB", (4, 4)), torch.zeros(1, 4, 4, 9)], "item 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        preprocess_images(bad, image_size=S)
    msg = str(err.value)
    assert "expected" in msg and "found" in msg, msg


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mode="crop"), "mode"),
        (dict(image_size=0), "image_size"),
        (dict(image_size=32.0), "image_size"),
        (dict(mean=(0.5, 0.5)), "3 mean"),
        (dict(std=(0.5, 0.0, 0.5)), "non-zero"),
    ],
)
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        preprocess_images(_rgb(8, 8), **{"image_size": S, **kw})


def test_importable_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import seedstory_core.preprocess as p\n"
        "print(tuple(p.preprocess_images(p.zero_image_pixels(8)[0].permute(1, 2, 0) + 0.5, image_size=8).shape))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(1, 3, 8, 8)"
