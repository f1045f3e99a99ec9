"""RandAugment for video clips: one draw per clip, applied to the whole uint8 clip tensor at once.

The policy (which ops, their probability, magnitude, sign and interpolation) is timm's: the
config string is parsed by ``timm.data.rand_augment_transform`` and :meth:`ClipRandAugment.draw`
consumes NumPy's and Python's random generators exactly as timm's ``RandAugment.__call__`` does
for one image, so a clip gets the same distribution of ops as an image in timm (and as one frame
of VideoMAE's per-frame PIL pipeline, which drew once per clip too).

The ops are re-implemented on ``(T, 3, H, W)`` uint8 tensors, following Pillow's definitions
(those timm calls), each op applied to all frames in one call instead of frame by frame through
PIL. Ops with image statistics (autocontrast, equalize, contrast) use each frame's own
statistics, as the per-frame PIL ops did. Measured against Pillow 13 (tests/test_data_augment.py):
the colour and filter ops give identical pixels; shears and
translations use Pillow's cubic (a = -1) along rows or columns, within one level; rotation
samples all frames with one ``grid_sample`` grid, Pillow's bilinear within one level, its bicubic
within a few levels at edges (``grid_sample``'s cubic kernel has a = -0.75).

Long on purpose: one concern, clip RandAugment; most of the lines are the ops themselves, each
written to give Pillow's pixels (timm's ops) on a whole clip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import rand_augment_transform, str_to_pil_interp

IMAGENET_MEAN = (0.485, 0.456, 0.406)

# Ops that move pixels (their fill colour and interpolation matter).
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel",
             "TranslateYRel")


@dataclass(frozen=True)
class OpDraw:
    """One drawn op of a clip: timm's op name, its level arguments and interpolation.

    Args:
        name: timm op name (e.g. 'Rotate', 'ContrastIncreasing').
        args: the op's arguments as timm's level function returns them.
        interpolation: 'nearest', 'bilinear' or 'bicubic' (geometric ops only).
    """

    name: str
    args: Tuple[float, ...]
    interpolation: str = "bicubic"


def _pil_mode_name(resample: object) -> str:
    """Pillow resampling constant -> grid_sample mode."""
    names = {int(Image.Resampling.NEAREST): "nearest", int(Image.Resampling.BILINEAR): "bilinear",
             int(Image.Resampling.BICUBIC): "bicubic"}
    return names.get(int(resample), "bicubic")  # type: ignore[call-overload]


class ClipRandAugment:
    """timm RandAugment with one draw per clip applied to every frame of a uint8 clip tensor.

    Args:
        config_str: timm RandAugment string, e.g. ``'rand-m7-n4-mstd0.5-inc1'``.
        input_size: training crop size (sets the absolute translate range, as VideoMAE does).
        interpolation: 'bicubic', 'bilinear', 'nearest' or 'random' (a random choice of
            bilinear/bicubic per geometric op, as timm).
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic") -> None:
        hparams = {"translate_const": int(input_size * 0.45),
                   "img_mean": tuple(int(round(255 * m)) for m in IMAGENET_MEAN),
                   # timm clips magnitudes to [0, 10]; at exactly 10 (reached by 'mstd' noise or
                   # 'm10'), PosterizeIncreasing keeps 0 bits, which Pillow rejects. Capping
                   # just below 10 keeps every other op's argument the same to 5 decimals (and
                   # the draws the same as the PIL path's). An explicit 'mmax' wins.
                   "magnitude_max": 10 - 1e-6}
        if interpolation and interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        try:
            self.ra = rand_augment_transform(config_str, hparams)
        except (AssertionError, KeyError, ValueError) as exc:
            raise ValueError(f"--aa {config_str!r} is not a valid timm RandAugment string "
                             f"(e.g. 'rand-m7-n4-mstd0.5-inc1'): {exc}") from exc
        unknown = sorted({op.name for op in self.ra.ops} - set(OPS))
        if unknown:
            raise ValueError(f"--aa {config_str!r} uses RandAugment ops without a clip "
                             f"implementation: {unknown}")
        self.fill = hparams["img_mean"]

    def draw(self) -> List[OpDraw]:
        """Draw the ops of one clip, consuming the random generators exactly as timm's
        ``RandAugment.__call__`` (and its ``AugmentOp.__call__``) does for one image."""
        ra = self.ra
        ops = np.random.choice(ra.ops, ra.num_layers, replace=ra.choice_weights is None,
                               p=ra.choice_weights)
        drawn = []
        for op in ops:
            if op.prob < 1.0 and random.random() > op.prob:
                continue
            magnitude = op.magnitude
            if op.magnitude_std > 0:
                if op.magnitude_std == float("inf"):
                    magnitude = random.uniform(0, magnitude)
                else:
                    magnitude = random.gauss(magnitude, op.magnitude_std)
            magnitude = max(0.0, min(magnitude, op.magnitude_max or 10))
            args = tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else ()
            interpolation = "bicubic"
            if op.name in GEOMETRIC:
                resample = op.kwargs["resample"]
                if isinstance(resample, (list, tuple)):  # timm's 'random' interpolation
                    resample = random.choice(resample)
                interpolation = _pil_mode_name(resample)
            if op.name == "GaussianBlurRand":  # its radius is drawn inside the op in timm
                args = (random.uniform(0.1, 2.0 * args[0]),)
            drawn.append(OpDraw(op.name, args, interpolation))
        return drawn

    def apply(self, clip: torch.Tensor, drawn: Sequence[OpDraw],
              region: Optional[Region] = None) -> torch.Tensor:
        """Apply drawn ops to a clip, computing only the pixels that ``region`` needs.

        The result equals applying every op to whole frames and then cutting out ``region``
        (the training crop): walking the ops backwards, each op's input region is what its
        output region depends on (the same pixels for colour ops, one more pixel for
        sharpness, the source of an affine map plus the interpolation support, the whole frame
        for ops with frame statistics), and the ops then run on those regions only. The crop
        is half of the frame on average, so is the work.

        Args:
            clip: uint8 ``(T, 3, H, W)``.
            drawn: ops from :meth:`draw`.
            region: ``(top, left, height, width)`` of the frame to return; None: all of it.

        Returns:
            uint8 ``(T, 3, height, width)``.
        """
        frame = (clip.shape[-2], clip.shape[-1])
        needs = [region or (0, 0) + frame]
        for op in reversed(drawn):
            needs.append(_input_region(op, needs[-1], frame))
        needs.reverse()  # needs[k]: op k's input region; needs[k + 1]: its output region
        x = _crop(clip, needs[0])
        for k, op in enumerate(drawn):
            src, dst = needs[k], needs[k + 1]
            if op.name in GEOMETRIC:
                x = affine_op(x, op, self.fill, frame, src, dst)
            else:  # dst within src, relative to it
                rel = None if src == dst else (dst[0] - src[0], dst[1] - src[1]) + dst[2:]
                x = OPS[op.name](x, op, self.fill, rel)
        return x

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """Draw once and apply to every frame of a uint8 ``(T, 3, H, W)`` clip."""
        return self.apply(clip, self.draw())


Region = Tuple[int, int, int, int]  # (top, left, height, width) in frame pixels
# Ops whose output pixel depends on statistics of the whole frame.
WHOLE_FRAME = ("AutoContrast", "Equalize", "Contrast", "ContrastIncreasing", "GaussianBlur",
               "GaussianBlurRand")


def _grow(region: Region, margin: int, frame: Tuple[int, int]) -> Region:
    top, left = max(region[0] - margin, 0), max(region[1] - margin, 0)
    bottom = min(region[0] + region[2] + margin, frame[0])
    right = min(region[1] + region[3] + margin, frame[1])
    return top, left, bottom - top, right - left


def _input_region(op: OpDraw, out: Region, frame: Tuple[int, int]) -> Region:
    """The frame region the output region ``out`` of ``op`` is computed from."""
    if op.name in WHOLE_FRAME:
        return (0, 0) + frame
    if op.name in ("Sharpness", "SharpnessIncreasing"):
        return _grow(out, 1, frame)  # 3x3 filter
    if op.name not in GEOMETRIC:
        return out  # pixel by pixel
    a, b, c, d, e, f = _pil_matrix(op, frame)
    top, left, h, w = out
    corners = [(left + dx, top + dy) for dx in (0.5, w - 0.5) for dy in (0.5, h - 0.5)]
    xs = [a * x + b * y + c - 0.5 for x, y in corners]  # sample positions in index units
    ys = [d * x + e * y + f - 0.5 for x, y in corners]
    # An affine map sends the box's corners to the extremes; cubic taps reach 1 below, 2 above.
    x0 = min(max(math.floor(min(xs)) - 1, 0), frame[1] - 1)
    x1 = min(max(math.floor(max(xs)) + 2, 0), frame[1] - 1)
    y0 = min(max(math.floor(min(ys)) - 1, 0), frame[0] - 1)
    y1 = min(max(math.floor(max(ys)) + 2, 0), frame[0] - 1)
    return y0, x0, y1 - y0 + 1, x1 - x0 + 1


# --------------------------------------------------------------------------------- pixel ops
# Every op takes ``region``: the part of ``clip`` to return (None: all of it). Statistics (the
# range, histogram or mean grey level of a frame) always come from the whole ``clip``.
# Pillow semantics: Image.blend(a, b, f) = a + f * (b - a) computed in float32 and truncated to
# [0, 255]; convert('L') = (299 R + 587 G + 114 B) / 1000 in 16-bit fixed point, rounded.

def _crop(x: torch.Tensor, region: Optional[Region]) -> torch.Tensor:
    if region is None:
        return x
    top, left, h, w = region
    return x[..., top:top + h, left:left + w]


def _apply_lut(clip: torch.Tensor, lut: np.ndarray) -> torch.Tensor:
    """Map uint8 levels through look-up tables: ``lut`` (256,) for every pixel, or (T, 3, 256)
    per frame and channel. NumPy indexes with uint8 directly (torch would want int64 indices,
    eight times the bytes), so this is one pass over the clip."""
    pixels = clip.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3); a view of the decoder's layout
    if lut.ndim == 1:
        out = np.take(lut, pixels)
    else:
        out = np.empty(pixels.shape, dtype=np.uint8)
        for t in range(pixels.shape[0]):
            for c in range(pixels.shape[3]):
                out[t, :, :, c] = lut[t, c][pixels[t, :, :, c]]
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _trunc_lut(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 255).astype(np.uint8)  # truncation, as Pillow's float -> uint8


def _blend_lut(degenerate: np.ndarray, factor: float) -> np.ndarray:
    """Pillow's blend with a constant ``degenerate`` level as a LUT: float32 arithmetic of
    ``d + f * (v - d)`` for every level ``v``; ``degenerate`` (...,) gives (..., 256)."""
    v = np.arange(256, dtype=np.float32)
    d = np.asarray(degenerate, dtype=np.float32)[..., None]
    return _trunc_lut((v - d) * np.float32(factor) + d)


def _blend(degenerate: torch.Tensor, clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, clip, factor)``; ``degenerate`` broadcasts."""
    d = degenerate.to(torch.float32)
    out = clip.to(torch.float32).sub_(d).mul_(factor).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates, as Pillow


def _grey(clip: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')`` as float32 ``(T, 1, H, W)`` (exact: every intermediate is an
    integer below 2**24)."""
    x = clip.to(torch.float32)
    g = x[:, 0:1] * 19595.0
    g.add_(x[:, 1:2], alpha=38470.0).add_(x[:, 2:3], alpha=7471.0).add_(0x8000)
    return g.div_(65536.0).floor_()


def auto_contrast(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
                  region: Optional[Region] = None) -> torch.Tensor:
    """ImageOps.autocontrast: stretch each frame's channel from its [min, max] to [0, 255]."""
    lo = clip.amin(dim=(-2, -1)).numpy().astype(np.float64)[..., None]  # (T, 3, 1)
    hi = clip.amax(dim=(-2, -1)).numpy().astype(np.float64)[..., None]  # (torch: 10x NumPy's)
    # Pillow's LUT, in its double precision: int(v * scale + offset), clipped; a flat channel
    # (hi <= lo) is left alone.
    scale = 255.0 / np.maximum(hi - lo, 1)
    v = np.arange(256, dtype=np.float64)
    lut = _trunc_lut(np.trunc(v * scale - lo * scale))
    lut = np.where(hi > lo, lut, np.arange(256, dtype=np.uint8))
    return _apply_lut(_crop(clip, region), lut)


def equalize(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
             region: Optional[Region] = None) -> torch.Tensor:
    """ImageOps.equalize, per frame and channel (Pillow's histogram steps)."""
    pixels = clip.permute(0, 2, 3, 1).numpy()
    t, _, _, c = pixels.shape
    lut = np.empty((t, c, 256), dtype=np.uint8)
    for i in range(t):
        for j in range(c):
            hist = np.bincount(pixels[i, :, :, j].ravel(), minlength=256)
            nonzero = hist[hist > 0]
            # Pillow: step = (number of pixels - count of the last non-zero level) // 255.
            step = (int(hist.sum()) - int(nonzero[-1])) // 255 if len(nonzero) > 1 else 0
            if step == 0:
                lut[i, j] = np.arange(256)
                continue
            below = np.concatenate(([0], np.cumsum(hist)[:-1]))  # pixels below each level
            lut[i, j] = np.minimum((below + step // 2) // step, 255)
    return _apply_lut(_crop(clip, region), lut)


def invert(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
           region: Optional[Region] = None) -> torch.Tensor:
    return _crop(clip, region).bitwise_not()  # 255 - x for uint8


def posterize(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
              region: Optional[Region] = None) -> torch.Tensor:
    bits = int(op.args[0])
    clip = _crop(clip, region)
    if bits >= 8:
        return clip
    return clip.bitwise_and((0xFF << (8 - bits)) & 0xFF)


def solarize(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
             region: Optional[Region] = None) -> torch.Tensor:
    """ImageOps.solarize: invert the levels at or above the threshold."""
    v = np.arange(256)
    return _apply_lut(_crop(clip, region), np.where(v < op.args[0], v, 255 - v).astype(np.uint8))


def solarize_add(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
                 region: Optional[Region] = None) -> torch.Tensor:
    """timm's solarize_add: add to the levels below 128, saturating at 255."""
    v = np.arange(256)
    lut = np.where(v < 128, np.minimum(v + int(op.args[0]), 255), v).astype(np.uint8)
    return _apply_lut(_crop(clip, region), lut)


def color(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
          region: Optional[Region] = None) -> torch.Tensor:
    """ImageEnhance.Color: blend with the grey image."""
    clip = _crop(clip, region)
    return _blend(_grey(clip), clip, float(op.args[0]))


def contrast(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
             region: Optional[Region] = None) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the frame's mean grey level (rounded, as Pillow)."""
    mean = _grey(clip).to(torch.float64).mean(dim=(-3, -2, -1)).numpy()  # (T,)
    lut = _blend_lut(np.floor(mean + 0.5), float(op.args[0]))  # (T, 256)
    return _apply_lut(_crop(clip, region), np.repeat(lut[:, None], clip.shape[1], axis=1))


def brightness(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
               region: Optional[Region] = None) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return _apply_lut(_crop(clip, region), _blend_lut(np.float32(0), float(op.args[0])))


def sharpness(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
              region: Optional[Region] = None) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with Pillow's SMOOTH filter (kernel 1 1 1 / 1 5 1 / 1 1 1
    over 13, rounded); the one-pixel border keeps its values, as Pillow's 3x3 filter."""
    if clip.shape[-1] < 3 or clip.shape[-2] < 3:
        return _crop(clip, region)
    x = clip.contiguous().to(torch.int16)  # planar: the shifted adds run on dense rows
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]  # (T,3,H,W-2) horizontal sums of 3
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (T,3,H-2,W-2)
    centre = x[..., 1:-1, 1:-1]
    smooth = (box + 4 * centre).to(torch.float32).div_(13.0).add_(0.5).floor_()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth.to(torch.int16)
    return _crop(_blend(degenerate, x, float(op.args[0])), region)


def gaussian_blur(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
                  region: Optional[Region] = None) -> torch.Tensor:
    """ImageFilter.GaussianBlur(radius): a separable Gaussian with sigma = radius."""
    sigma = float(op.args[0])
    if sigma <= 0:
        return _crop(clip, region)
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    t, c, h, w = clip.shape
    x = clip.reshape(t * c, 1, h, w).to(torch.float32)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return _crop(x.add_(0.5).clamp_(0, 255).to(torch.uint8).reshape(t, c, h, w), region)


def desaturate(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
               region: Optional[Region] = None) -> torch.Tensor:
    factor = min(1.0, max(0.0, 1.0 - float(op.args[0])))
    return color(clip, OpDraw("Color", (factor,)), fill, region)


# --------------------------------------------------------------------------------- affine ops
def _pil_matrix(op: OpDraw, frame: Tuple[int, int]) -> Tuple[float, ...]:
    """The inverse affine map of a geometric op, as timm passes it to Pillow's ``transform``."""
    h, w = frame
    v = float(op.args[0])
    if op.name == "Rotate":  # Image.rotate(degrees): counter-clockwise about the frame centre
        angle = -math.radians(v)
        m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
             round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
        cx, cy = w / 2.0, h / 2.0
        m[2] = m[0] * -cx + m[1] * -cy + cx
        m[5] = m[3] * -cx + m[4] * -cy + cy
        return tuple(m)
    if op.name == "ShearX":
        return 1.0, v, 0.0, 0.0, 1.0, 0.0
    if op.name == "ShearY":
        return 1.0, 0.0, 0.0, v, 1.0, 0.0
    if op.name.startswith("TranslateX"):  # TranslateX: pixels; TranslateXRel: share of width
        return 1.0, 0.0, v * (w if op.name.endswith("Rel") else 1), 0.0, 1.0, 0.0
    return 1.0, 0.0, 0.0, 0.0, 1.0, v * (h if op.name.endswith("Rel") else 1)


def pil_affine(clip: torch.Tensor, matrix: Sequence[float], mode: str, fill: Sequence[int],
               frame: Optional[Tuple[int, int]] = None, src: Optional[Region] = None,
               dst: Optional[Region] = None) -> torch.Tensor:
    """Pillow's ``Image.transform(size, AFFINE, matrix)`` on every frame of a clip.

    ``matrix = (a, b, c, d, e, f)`` maps an output pixel centre ``(x + .5, y + .5)`` to the
    input point ``(a x + b y + c, d x + e y + f)``; output pixels whose input point lies outside
    the frame get ``fill`` (Pillow's test), the rest are interpolated with edge clamping.

    Args:
        clip: uint8 ``(T, 3, h, w)``: the ``src`` region of the frames.
        matrix: the inverse affine map, in Pillow's pixel coordinates of the whole frame.
        mode: 'nearest', 'bilinear' or 'bicubic'.
        fill: RGB fill colour.
        frame: (H, W) of the whole frame (default: the clip's size).
        src: the region ``clip`` holds (default: the whole frame); it must contain every
            pixel the ``dst`` samples need (see ``_input_region``).
        dst: the region of the transformed frame to return (default: the whole frame).

    Returns:
        uint8 ``(T, 3, dst height, dst width)``.
    """
    t, c = clip.shape[:2]
    fh, fw = frame or (clip.shape[-2], clip.shape[-1])
    src = src or (0, 0, fh, fw)
    dst = dst or (0, 0, fh, fw)
    a, b, cc, d, e, f = (float(v) for v in matrix)
    if mode == "bicubic" and (a, d, e, f) == (1.0, 0.0, 1.0, 0.0):  # ShearX, TranslateX
        return _cubic_1d(clip, b, cc, fill, (fh, fw), src, dst)
    if mode == "bicubic" and (a, b, cc, e) == (1.0, 0.0, 0.0, 1.0):  # ShearY, TranslateY
        flip = (lambda r: (r[1], r[0], r[3], r[2]))  # noqa: E731  (rows <-> columns)
        out = _cubic_1d(clip.transpose(-1, -2), d, f, fill, (fw, fh), flip(src), flip(dst))
        return out.transpose(-1, -2)
    dt, dl, dh, dw = dst
    ys = torch.arange(dt, dt + dh, dtype=torch.float64).add_(0.5).view(dh, 1)
    xs = torch.arange(dl, dl + dw, dtype=torch.float64).add_(0.5).view(1, dw)
    x_in = a * xs + b * ys + cc  # (dh, dw) frame coordinates, pixel centres at i + 0.5
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0) & (x_in < fw) & (y_in >= 0) & (y_in < fh)
    if mode == "nearest":
        # Pillow takes the pixel that contains the point (floor); grid_sample rounds half to
        # even, which differs on pixel edges, common under shears: nudge off the edges.
        x_in, y_in = x_in + 1e-4, y_in + 1e-4
    # grid_sample (align_corners=False) takes -1 / +1 at the outer edges of the src region.
    grid = torch.stack(((x_in - src[1]) * (2.0 / src[3]) - 1.0,
                        (y_in - src[0]) * (2.0 / src[2]) - 1.0), dim=-1)
    grid = grid.to(torch.float32).unsqueeze(0)
    # All frames share one grid: sampling them as channels of one image computes the
    # interpolation weights once (about 2x faster for bilinear).
    image = clip.reshape(1, t * c, src[2], src[3]).to(torch.float32)
    out = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)
    # Pillow truncates the interpolated value (the float -> uint8 cast does too).
    out = out.clamp_(0, 255).to(torch.uint8).reshape(t, c, dh, dw)
    fill_t = torch.tensor(fill, dtype=torch.uint8).view(1, c, 1, 1)
    return torch.where(inside.view(1, 1, dh, dw), out, fill_t)


def _cubic_1d(clip: torch.Tensor, shear: float, shift: float, fill: Sequence[int],
              frame: Tuple[int, int], src: Region, dst: Region) -> torch.Tensor:
    """Pillow's bicubic affine transform for a map that moves pixels along rows only
    (``x_in = x + shear * y + shift``, ``y_in = y``): the 16-tap kernel then reduces to 4 taps
    along the row (Pillow's cubic, a = -1). A row is shifted by a constant, so rows with the
    same whole-pixel shift are computed together from 4 slices (a translation is one group, a
    shear a few dozen): several times faster than ``grid_sample``.

    Args:
        clip: uint8 ``(T, 3, h, w)`` holding the ``src`` region of frames of size ``frame``.
        shear: ``b`` of the inverse map (0 for a translation).
        shift: ``c`` of the inverse map.
        fill: RGB colour of pixels mapped from outside the frame.
        frame: (H, W) of the whole frame.
        src: region held by ``clip``.
        dst: region to return.
    """
    t, c = clip.shape[:2]
    fw = frame[1]
    dt, dl, dh, dw = dst
    ys = np.arange(dt, dt + dh, dtype=np.float64) + 0.5
    offset = shear * ys + shift  # (dh,): output column x samples at index position x + offset
    whole = np.floor(offset)
    frac = torch.from_numpy(offset - whole).to(torch.float32).view(dh, 1)
    # Pillow's cubic (a = -1) through the 4 pixels floor(u)-1 .. floor(u)+2, per row.
    weights = (frac * (-1 + frac * (2 - frac)), 1 + frac * frac * (frac - 2),
               frac * (1 + frac * (1 - frac)), frac * frac * (frac - 1))
    rows = clip[..., dt - src[0]:dt - src[0] + dh, :].reshape(t * c, dh, src[3]).to(torch.float32)
    # Taps past the frame's edge take the edge pixel (Pillow clamps): 2 replicated columns on
    # each side where the region is at the frame's edge (elsewhere its margin holds the taps).
    pad_left = 2 if src[1] == 0 else 0
    pad_right = 2 if src[1] + src[3] == fw else 0
    if pad_left or pad_right:
        rows = torch.cat([rows[..., :1]] * pad_left + [rows] + [rows[..., -1:]] * pad_right, -1)
    out = torch.zeros((t * c, dh, dw), dtype=torch.float32)
    shifts = whole.astype(np.int64)
    starts = np.flatnonzero(np.diff(shifts, prepend=shifts[0] - 1))
    for r0, r1 in zip(starts, [*starts[1:], dh]):
        # Output column j reads padded column j + base + k for tap k; keep j where all 4 exist
        # (the others map outside the frame and are filled below).
        base = dl + int(shifts[r0]) - 1 - src[1] + pad_left
        j0, j1 = max(0, -base), min(dw, rows.shape[-1] - base - 3)
        if j0 >= j1:
            continue
        part = out[:, r0:r1, j0:j1]
        for k, w in enumerate(weights):
            part.addcmul_(rows[:, r0:r1, j0 + base + k:j1 + base + k], w[r0:r1])
    out = out.clamp_(0, 255).to(torch.uint8).reshape(t, c, dh, dw)  # truncates, as Pillow
    x_in = torch.arange(dl, dl + dw, dtype=torch.float64).add_(0.5).view(1, dw) \
        + torch.from_numpy(offset).view(dh, 1)
    inside = (x_in >= 0) & (x_in < fw)
    fill_t = torch.tensor(fill, dtype=torch.uint8).view(1, c, 1, 1)
    return torch.where(inside.view(1, 1, dh, dw), out, fill_t)


def affine_op(clip: torch.Tensor, op: OpDraw, fill: Sequence[int],
              frame: Optional[Tuple[int, int]] = None, src: Optional[Region] = None,
              dst: Optional[Region] = None) -> torch.Tensor:
    """Rotate, ShearX/Y, TranslateX/Y(Rel) of timm, on the whole frame or on regions of it."""
    frame = frame or (clip.shape[-2], clip.shape[-1])
    return pil_affine(clip, _pil_matrix(op, frame), op.interpolation, fill, frame, src, dst)


OpFn = Callable[[torch.Tensor, OpDraw, Sequence[int]], torch.Tensor]
OPS: Dict[str, OpFn] = {
    "AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert,
    "Posterize": posterize, "PosterizeIncreasing": posterize, "PosterizeOriginal": posterize,
    "Solarize": solarize, "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "ColorIncreasing": color, "Contrast": contrast,
    "ContrastIncreasing": contrast, "Brightness": brightness, "BrightnessIncreasing": brightness,
    "Sharpness": sharpness, "SharpnessIncreasing": sharpness, "Desaturate": desaturate,
    "GaussianBlur": gaussian_blur, "GaussianBlurRand": gaussian_blur,
    **{name: affine_op for name in GEOMETRIC},
}
