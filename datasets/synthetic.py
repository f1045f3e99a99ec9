"""Synthetic action data sets of real video files, deterministic from a seed: three worlds.

**pairs** (:func:`render_pair_clip`): each class is a relation between the motions of two
objects (the same way, opposite ways or at right angles, together or in turn; growing/shrinking
the same or opposite ways), each object's own motion drawn alike in every class; the demo's
headroom world, docs/WORLDS.md.

**relations** (:func:`render_relation_clip`): each class is a relation between two objects over
time, as in Something-Something-V2 (approach, retreat, orbit either way, touch-and-return,
leave-and-return, converge, diverge), with a static distractor; docs/WORLDS.md.

**motion** (:func:`render_clip`): each class is a kind of motion done by a few random bright shapes on a dark background: moving
in one of eight directions, rotating clockwise or anticlockwise, growing or shrinking.
Appearance (shapes, colours, sizes, positions, angles, background, noise) is drawn from the same
distribution for every class and each motion is its opposite played backwards, so a single frame
says little about the class; the change over time says it (``benchmarks/bench_learnability.py``
measures both: 89% held-out from clips, 27.5% from one frame repeated, chance 12.5%; the frame
still shows where the shapes sit and how big they are, whose ranges differ a little between
moving, turning and scaling classes).

Long on purpose: both worlds share the drawing (backgrounds, shapes, noise), the writing of
video files and the split lists, so they live in one file.

The library half of ``tools/make_synthetic.py`` (its command line), here below ``tools`` and
``benchmarks`` because the demo, the benchmarks and the tests all render these clips. Output of
:func:`make_synthetic_dataset` (paths in the lists are relative to the output folder, which
``build_dataset`` resolves when ``--data_root`` is empty)::

    OUT/train.csv, OUT/val.csv, OUT/test.csv   lines "videos/<class>/<split>_<k>.mp4 <label>"
    OUT/classes.txt                            "<label> <class name>" per line
    OUT/videos/<class>/<split>_<k>.mp4         h264, yuv420p
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Mapping, Optional, Tuple, Union

import av
import numpy as np

logger = logging.getLogger(__name__)

# Motion classes, in label order; --num_classes N takes the first N.
MOTION_CLASSES: Tuple[str, ...] = (
    "move_right", "move_left", "move_down", "move_up", "rotate_clockwise", "rotate_anticlockwise",
    "grow", "shrink", "move_up_right", "move_down_left", "move_down_right", "move_up_left",
)
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
               "up_right": (1, -1), "down_left": (-1, 1), "down_right": (1, 1), "up_left": (-1, -1)}
DEFAULT_SPLITS: Dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}

# Codec per container extension, as the data sets ship them (mp4 h264, avi mpeg4, webm vp9).
# x264's macroblock-tree rate control reads memory outside the picture and makes the output
# vary from run to run; without it (mbtree=0) and with one thread the files are reproducible.
_X264 = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
_CODECS = {".mp4": ("libx264", _X264),
           ".avi": ("mpeg4", {"qscale": "3"}),
           ".webm": ("libvpx-vp9", {"crf": "30", "b": "0", "threads": "1", "deadline": "realtime",
                                    "cpu-used": "8"}),
           ".mkv": ("libx264", _X264)}


def write_video(path: str, frames: np.ndarray, fps: int = 25, codec: Optional[str] = None,
                options: Optional[Mapping[str, str]] = None) -> None:
    """Write RGB frames to a video file with PyAV.

    Args:
        path: output file; the extension picks the codec (.mp4/.mkv h264, .avi mpeg4, .webm vp9).
        frames: uint8 ``(T, H, W, 3)``, H and W even (yuv420p).
        fps: frame rate.
        codec: override the codec name.
        options: override the encoder options.
    """
    ext = os.path.splitext(path)[1].lower()
    if codec is None:
        if ext not in _CODECS:
            raise ValueError(f"{path}: unknown video extension {ext!r}; use one of {sorted(_CODECS)}")
        codec, default_opts = _CODECS[ext]
        options = dict(default_opts if options is None else options)
    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: frame size {w}x{h} must be even for yuv420p")
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if options:
            stream.options = dict(options)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            # Explicit timestamps, so the encoder and muxer never guess frame durations.
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _shape_mask(kind: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float,
                angle: float, aspect: float) -> np.ndarray:
    """Boolean mask of a filled shape centred at (cx, cy) rotated by ``angle`` (radians)."""
    dx, dy = xx - cx, yy - cy
    # Coordinates in the shape's own rotated frame.
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == "ellipse":
        return (u / radius) ** 2 + (v / (radius * aspect)) ** 2 <= 1.0
    if kind == "rectangle":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * aspect)
    # Regular polygon with `sides` corners: inside all half-planes of its edges.
    sides = 3 if kind == "triangle" else 5
    inside = np.ones_like(u, dtype=bool)
    apothem = radius * math.cos(math.pi / sides)
    for k in range(sides):
        a = 2 * math.pi * (k + 0.5) / sides
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def render_clip(motion: str, num_frames: int, height: int, width: int,
                rng: np.random.Generator, noise_max: float = 4.0,
                num_shapes: int = 3, distractors: int = 0) -> np.ndarray:
    """Render one clip of a motion class.

    Appearance is drawn from one distribution for every class (background, colour, shape kind,
    size, orientation, position), and each motion is symmetric in time with its opposite (a
    ``move_left`` path is a ``move_right`` path played backwards; ``shrink`` is ``grow``
    reversed), so a single frame tells opposite classes apart no better than chance (the
    placement ranges of moving, turning and scaling shapes still differ a little). Motions are sized per clip (the whole clip crosses 40-60% of the frame, turns
    150-250 degrees, or scales the shapes 2-2.8x), so a clip sampled over the whole video moves by
    a few pixels between sampled frames.

    Args:
        motion: one of :data:`MOTION_CLASSES`.
        num_frames: frames in the clip.
        height: frame height.
        width: frame width.
        rng: the clip's random generator.
        noise_max: largest standard deviation of the per-frame pixel noise.
        num_shapes: bright shapes doing the class's motion (each with its own path).
        distractors: dimmer shapes doing random motions (drawn under the bright ones).

    Returns:
        uint8 ``(num_frames, height, width, 3)``.
    """
    small = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # A dark background (a random colour with a faint gradient) and a bright shape: the sign of
    # the shape's contrast is the same in every clip. A ViT trained from scratch did not learn
    # the motions at all when backgrounds were random colours of any brightness with strong
    # gradients (the learning curves are in BENCHMARKS.md).
    background = _background(rng, xx, yy, small)
    steps = max(num_frames - 1, 1)
    # Clip time from -0.5 (first frame) to 0.5 (last frame): every motion is centred on the
    # middle frame, which makes opposite classes mirror images in time.
    tau = np.arange(num_frames) / steps - 0.5
    img = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    # Distractors first (drawn under the actors): dimmer shapes, each doing a random motion.
    # Then several bright shapes doing the class's motion: more of the frame moves, which gives
    # masked autoencoding (and a classifier) a larger signal than one small shape.
    layers = [(None, 70.0, 120.0)] * distractors + [(motion, 140.0, 255.0)] * num_shapes
    for shape_motion, lo, hi in layers:
        colour = rng.uniform(lo, hi, size=3)
        if shape_motion is None:
            shape_motion = MOTION_CLASSES[int(rng.integers(0, 8))]
        for t, mask in enumerate(_moving_shape(shape_motion, tau, xx, yy, rng)):
            img[t][mask] = colour
    return _add_noise(img, rng, noise_max)


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
                small: float) -> np.ndarray:
    """A dark random colour with a faint linear gradient, ``(H, W, 3)`` float."""
    base = rng.uniform(0, 60, size=3)
    grad_dir = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(grad_dir) + yy * math.sin(grad_dir)) / small
    return base[None, None, :] + rng.uniform(-15, 15, size=3)[None, None, :] * ramp[..., None]


def _add_noise(img: np.ndarray, rng: np.random.Generator, noise_max: float) -> np.ndarray:
    """Gaussian pixel noise of a random strength up to ``noise_max``; rounds to uint8."""
    noise_std = rng.uniform(0, noise_max)
    if noise_std > 0.5:
        img += rng.normal(0, noise_std, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_kind(rng: np.random.Generator) -> Tuple[str, float]:
    """A random shape kind and its aspect ratio. Kinds without rotational symmetry below 72
    degrees, so a turn is visible for every kind."""
    kind = str(rng.choice(["triangle", "rectangle", "pentagon", "ellipse"]))
    aspect = rng.uniform(0.35, 0.6) if kind in ("rectangle", "ellipse") else 1.0
    return kind, aspect


def _moving_shape(motion: str, tau: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                  rng: np.random.Generator) -> List[np.ndarray]:
    """Masks (one per frame) of one random shape doing ``motion`` over clip times ``tau``, on
    the pixel grid ``xx, yy``."""
    height, width = xx.shape
    small = min(height, width)
    kind, aspect = _shape_kind(rng)
    radius = rng.uniform(0.1, 0.15) * small
    angle = rng.uniform(0, 2 * math.pi)
    num_frames = len(tau)
    shift = np.zeros((num_frames, 2))
    spin = np.zeros(num_frames)
    scale = np.ones(num_frames)
    if motion.startswith("move_") and motion[len("move_"):] in _DIRECTIONS:
        direction = np.array(_DIRECTIONS[motion[len("move_"):]], dtype=float)
        travel = rng.uniform(0.4, 0.6) * small
        shift = tau[:, None] * travel * direction[None, :] / np.linalg.norm(direction)
    elif motion in ("rotate_clockwise", "rotate_anticlockwise"):
        # Image y grows downwards, so a positive angle step turns clockwise on screen.
        sign = 1 if motion == "rotate_clockwise" else -1
        spin = sign * math.radians(rng.uniform(150, 250)) * tau
    elif motion in ("grow", "shrink"):
        sign = 1 if motion == "grow" else -1
        scale = rng.uniform(2.0, 2.8) ** (sign * tau)
    else:
        raise ValueError(f"unknown motion class {motion!r}; known: {', '.join(MOTION_CLASSES)}")
    # Centre of the clip: anywhere the whole path stays inside the frame.
    reach = radius * scale.max() * 1.05
    lo = reach - shift.min(axis=0)
    hi = np.array([width, height]) - reach - shift.max(axis=0)
    centre = rng.uniform(lo, np.maximum(hi, lo))
    return [_shape_mask(kind, xx, yy, centre[0] + shift[t, 0], centre[1] + shift[t, 1],
                        radius * scale[t], angle + spin[t], aspect) for t in range(num_frames)]


def _draw_static_shapes(img: np.ndarray, count: int, xx: np.ndarray, yy: np.ndarray,
                        rng: np.random.Generator) -> None:
    """Draw ``count`` static shapes of the actors' look (bright, random kind and colour) anywhere
    in every frame of ``img`` ``(T, H, W, 3)``: the distractors of the two-object worlds."""
    height, width = xx.shape
    small = min(height, width)
    for _ in range(count):
        r = rng.uniform(0.07, 0.11) * small
        centre = rng.uniform([r, r], [width - r, height - r])
        kind, aspect = _shape_kind(rng)
        mask = _shape_mask(kind, xx, yy, centre[0], centre[1], r, rng.uniform(0, 2 * math.pi),
                           aspect)
        img[:, mask] = rng.uniform(140, 255, size=3)


# Relations world: classes are relations between two objects over time.
RELATION_CLASSES: Tuple[str, ...] = (
    "approach", "retreat", "orbit_clockwise", "orbit_anticlockwise",
    "touch_and_return", "leave_and_return", "converge", "diverge",
)


def _relation_path(relation: str, tau: np.ndarray, contact: float, travel: float,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Centres of the two actors (A, B) per frame, relative to B's mean position, for clip times
    ``tau`` in [-0.5, 0.5]; ``contact`` is the centre distance at which they nearly touch and
    ``travel`` how much that distance changes.

    Each class has a twin that is the same clip played backwards (approach/retreat, the two
    orbits, touch-and-return/leave-and-return, converge/diverge), and the distance between A and
    B runs over [contact, contact + travel] with the same spread in every class, so neither one
    frame nor the pair's spacing tells the class; the change of that spacing over time, and which
    objects move, do.
    """
    n = len(tau)
    theta = rng.uniform(0, 2 * math.pi)
    ray = np.array([math.cos(theta), math.sin(theta)])
    u = tau + 0.5                                  # 0 -> 1 over the clip
    vee = np.abs(2 * tau)                          # 1 -> 0 -> 1
    b = np.zeros((n, 2))
    if relation in ("approach", "retreat", "touch_and_return", "leave_and_return"):
        frac = {"approach": 1 - u, "retreat": u, "touch_and_return": vee,
                "leave_and_return": 1 - vee}[relation]
        a = (contact + travel * frac)[:, None] * ray[None, :]
    elif relation in ("converge", "diverge"):
        frac = 1 - u if relation == "converge" else u
        d = contact + travel * frac
        # Both move, symmetric about a fixed midpoint.
        a = 0.5 * d[:, None] * ray[None, :]
        b = -a
    elif relation in ("orbit_clockwise", "orbit_anticlockwise"):
        radius = contact + travel * rng.uniform(0, 1)
        # About the same path length as the radial classes, at most 200 degrees of arc.
        sweep = min(travel * rng.uniform(1.0, 1.4) / radius, math.radians(200))
        # Image y grows downwards: a growing angle turns clockwise on screen.
        sign = 1 if relation == "orbit_clockwise" else -1
        phi = theta + sign * sweep * tau
        a = radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    else:
        raise ValueError(f"unknown relation class {relation!r}; known: {', '.join(RELATION_CLASSES)}")
    return a, b


def render_relation_clip(relation: str, num_frames: int, height: int, width: int,
                         rng: np.random.Generator, noise_max: float = 4.0,
                         distractors: int = 1) -> np.ndarray:
    """Render one clip of a relation class: two actors (random shapes and colours, so neither
    identity nor look tells the class) doing the relation, plus static distractor shapes of the
    same look, on a dark background with a faint gradient and pixel noise.

    Args:
        relation: one of :data:`RELATION_CLASSES`.
        num_frames: frames in the clip.
        height: frame height.
        width: frame width.
        rng: the clip's random generator.
        noise_max: largest standard deviation of the per-frame pixel noise.
        distractors: static shapes besides the two actors.

    Returns:
        uint8 ``(num_frames, height, width, 3)``.
    """
    small = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.broadcast_to(_background(rng, xx, yy, small), (num_frames, height, width, 3)).copy()
    tau = np.arange(num_frames) / max(num_frames - 1, 1) - 0.5
    # Actors about one 8-pixel patch wide at the demo's 32-pixel input, and paths of 1.3 to 1.8
    # patches: smaller ones (radius 0.08-0.11, travel 0.24-0.36) left full fine-tuning at 25%
    # after 800 steps from scratch, these at 34%.
    radii = rng.uniform(0.10, 0.14, size=2) * small
    contact = radii.sum() + rng.uniform(0.01, 0.03) * small
    travel = rng.uniform(0.32, 0.44) * small
    a, b = _relation_path(relation, tau, contact, travel, rng)
    paths = [a, b]
    reach = radii.max() * 1.05
    lo = reach - np.minimum(a.min(axis=0), b.min(axis=0))
    hi = np.array([width, height]) - reach - np.maximum(a.max(axis=0), b.max(axis=0))
    origin = rng.uniform(lo, np.maximum(hi, lo))
    # Static distractors first (drawn under the actors), anywhere in the frame.
    _draw_static_shapes(img, distractors, xx, yy, rng)
    for path, r in zip(paths, radii):
        kind, aspect = _shape_kind(rng)
        angle = rng.uniform(0, 2 * math.pi)
        colour = rng.uniform(140, 255, size=3)
        for t in range(num_frames):
            cx, cy = origin + path[t]
            img[t][_shape_mask(kind, xx, yy, cx, cy, r, angle, aspect)] = colour
    return _add_noise(img, rng, noise_max)


# Pairs world: classes are relations between the motions of two objects.
PAIR_CLASSES: Tuple[str, ...] = (
    "move_same_way", "move_opposite_ways", "move_at_right_angles",
    "move_same_way_in_turn", "move_opposite_ways_in_turn", "move_at_right_angles_in_turn",
    "scale_same_way", "scale_opposite_ways",
)
_AXES = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # quarter turns apart, clockwise


def _pair_motions(relation: str, tau: np.ndarray, small: float, rng: np.random.Generator
                  ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``(shift (T, 2), scale (T,))`` of each of the two actors for clip times ``tau`` in
    [-0.5, 0.5]. The first actor's direction (or growing/shrinking) is drawn uniformly; the class
    fixes only how the second one's relates to it, so either actor alone looks the same in every
    class of its family (moving together, moving in turn, scaling)."""
    n = len(tau)
    u = tau + 0.5                                   # 0 -> 1 over the clip
    k = int(rng.integers(0, 4))
    if relation.startswith("scale_"):
        signs = (1 if k % 2 else -1,) * 2
        if relation == "scale_opposite_ways":
            signs = (signs[0], -signs[0])
        return [(np.zeros((n, 2)), rng.uniform(2.0, 2.6) ** (sign * tau)) for sign in signs]
    base = relation[:-len("_in_turn")] if relation.endswith("_in_turn") else relation
    turn = {"move_same_way": 0, "move_opposite_ways": 2,
            "move_at_right_angles": int(rng.choice([1, 3]))}[base]
    if relation.endswith("_in_turn"):
        # One moves during the first half while the other waits, then the other: each covers its
        # path at twice the speed of "together".
        fractions = (np.clip(2 * u, 0, 1), np.clip(2 * u - 1, 0, 1))
    else:
        fractions = (u, u)
    out = []
    for frac, axis in zip(fractions, (k, (k + turn) % 4)):
        travel = rng.uniform(0.3, 0.4) * small
        out.append(((frac - 0.5)[:, None] * travel * np.array(_AXES[axis])[None, :], np.ones(n)))
    return out


def render_pair_clip(relation: str, num_frames: int, height: int, width: int,
                     rng: np.random.Generator, noise_max: float = 4.0,
                     distractors: int = 0) -> np.ndarray:
    """Render one clip of a pairs class: two actors (random shapes, colours and sizes) whose
    motions relate as the class says (same way, opposite ways or at right angles, together or in
    turn; growing/shrinking the same way or opposite ways), on a dark background with a faint
    gradient and pixel noise, plus static distractor shapes.

    Each actor's own motion is drawn from the same distribution in every class of its family
    (a move along one of four directions, or a growth or shrinking), so neither one frame nor one
    actor tells the class: the class is the relation between the two motions (docs/WORLDS.md).

    Args:
        relation: one of :data:`PAIR_CLASSES`.
        num_frames: frames in the clip.
        height: frame height.
        width: frame width.
        rng: the clip's random generator.
        noise_max: largest standard deviation of the per-frame pixel noise.
        distractors: static shapes besides the two actors.

    Returns:
        uint8 ``(num_frames, height, width, 3)``.
    """
    if relation not in PAIR_CLASSES:
        raise ValueError(f"unknown pairs class {relation!r}; known: {', '.join(PAIR_CLASSES)}")
    small = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.broadcast_to(_background(rng, xx, yy, small), (num_frames, height, width, 3)).copy()
    tau = np.arange(num_frames) / max(num_frames - 1, 1) - 0.5
    radius_range = (0.08, 0.11) if relation.startswith("scale_") else (0.09, 0.12)
    actors = []
    for shift, scale in _pair_motions(relation, tau, small, rng):
        kind, aspect = _shape_kind(rng)
        actors.append(dict(kind=kind, aspect=aspect, r=rng.uniform(*radius_range) * small,
                           angle=rng.uniform(0, 2 * math.pi), colour=rng.uniform(140, 255, size=3),
                           shift=shift, scale=scale))
    # Place each path inside the frame; redraw (up to 50 times) until the two never touch, so
    # one does not hide the other.
    for _ in range(50):
        paths = []
        for a in actors:
            reach = a["r"] * a["scale"].max() * 1.05
            lo = reach - a["shift"].min(axis=0)
            hi = np.array([width, height]) - reach - a["shift"].max(axis=0)
            paths.append(rng.uniform(lo, np.maximum(hi, lo)) + a["shift"])
        gap = np.linalg.norm(paths[0] - paths[1], axis=1).min()
        if gap > sum(a["r"] * a["scale"].max() for a in actors) + 1:
            break
    _draw_static_shapes(img, distractors, xx, yy, rng)
    for a, path in zip(actors, paths):
        for t in range(num_frames):
            img[t][_shape_mask(a["kind"], xx, yy, path[t, 0], path[t, 1], a["r"] * a["scale"][t],
                               a["angle"], a["aspect"])] = a["colour"]
    return _add_noise(img, rng, noise_max)


# World name -> (class names in label order, renderer(class, num_frames, height, width, rng,
# distractors=...)). "motion": one kind of motion per class; "relations": how two objects move
# relative to each other, as in Something-Something-V2; "pairs": how the motions of two objects
# relate (same way, opposite ways, at right angles, together or in turn).
WORLDS = {"motion": (MOTION_CLASSES, render_clip),
          "relations": (RELATION_CLASSES, render_relation_clip),
          "pairs": (PAIR_CLASSES, render_pair_clip)}


def world_classes(world: str) -> Tuple[str, ...]:
    """Class names of a synthetic world, in label order."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; known: {', '.join(WORLDS)}")
    return WORLDS[world][0]


def render_clip_batch(per_class: int, seed: int, num_classes: int = 8, num_frames: int = 8,
                      video_size: int = 64, input_size: int = 32, world: str = "motion",
                      **render_kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Clips rendered in memory as a data loader would deliver them, for fast experiments and
    tests: ``num_frames`` frames spanning the whole motion (dense sampling over the whole video),
    drawn at ``video_size`` and area-averaged down to ``input_size``.

    Args:
        per_class: clips per class.
        seed: clip k of class c is a function of (seed, c, k) only.
        num_classes: the first ``num_classes`` of the world's classes.
        num_frames: frames per clip.
        video_size: drawing size (a multiple of ``input_size``).
        input_size: output size.
        world: a key of :data:`WORLDS`.
        **render_kwargs: passed to the world's renderer.

    Returns:
        ``(clips uint8 (B, T, input_size, input_size, 3), labels int64 (B,))``, classes
        interleaved.
    """
    if video_size % input_size:
        raise ValueError(f"video_size {video_size} must be a multiple of input_size {input_size}")
    f = video_size // input_size
    names, render = world_classes(world), WORLDS[world][1]
    clips, labels = [], []
    for k in range(per_class):
        for label in range(num_classes):
            frames = render(names[label], num_frames, video_size, video_size,
                            np.random.default_rng([seed, label, k]), **render_kwargs)
            frames = frames.reshape(num_frames, input_size, f, input_size, f, 3).mean(axis=(2, 4))
            clips.append(np.round(frames).astype(np.uint8))
            labels.append(label)
    return np.stack(clips), np.array(labels, dtype=np.int64)


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote.

    Args:
        out_dir: output folder (the ``--data_path`` to train on it).
        class_names: names in label order.
        counts: videos per split.
        list_files: list file per split.
    """

    out_dir: str
    class_names: List[str]
    counts: Dict[str, int] = field(default_factory=dict)
    list_files: Dict[str, str] = field(default_factory=dict)


def split_counts(videos_per_class: int, splits: Mapping[str, float]) -> Dict[str, int]:
    """Videos per class in each split: rounded fractions, at least one each, summing up."""
    names = list(splits)
    if videos_per_class < len(names):
        raise ValueError(f"videos_per_class ({videos_per_class}) must be >= the number of "
                         f"splits ({len(names)})")
    total = float(sum(splits.values()))
    counts = {n: max(1, int(round(videos_per_class * splits[n] / total))) for n in names[1:]}
    counts[names[0]] = videos_per_class - sum(counts.values())
    if counts[names[0]] < 1:
        raise ValueError(f"videos_per_class ({videos_per_class}) is too small for splits {dict(splits)}")
    return {n: counts[n] for n in names}


def _make_one(job: Tuple[str, str, str, int, int, int, int, Tuple[int, ...], int]) -> None:
    path, world, name, num_frames, height, width, fps, seed_key, distractors = job
    rng = np.random.default_rng(list(seed_key))
    write_video(path, WORLDS[world][1](name, num_frames, height, width, rng,
                                       distractors=distractors), fps=fps)


def make_synthetic_dataset(out_dir: str, num_classes: int = 8, videos_per_class: int = 20,
                           num_frames: int = 32, size: Union[int, Tuple[int, int]] = 64,
                           seed: int = 0, splits: Optional[Mapping[str, float]] = None,
                           fps: int = 25, workers: int = 1, distractors: int = 0,
                           world: str = "motion") -> SyntheticDataset:
    """Write the synthetic data set.

    Args:
        out_dir: output folder (created).
        num_classes: number of classes, the first of the world's (motion: at most 12;
            relations: at most 8).
        videos_per_class: videos per class over all splits.
        num_frames: frames per video.
        size: frame size, an int for square frames or ``(height, width)``; even numbers.
        seed: every video is a function of (seed, class, split, number) only.
        splits: split name -> fraction of each class's videos (default 60/20/20
            train/val/test); every split gets at least one video per class.
        fps: frame rate written into the files.
        workers: processes used to render and encode.
        distractors: shapes per video besides the class's actors (motion: dimmer shapes doing
            random motions; relations: static shapes of the actors' look).
        world: a key of :data:`WORLDS`.

    Returns:
        A :class:`SyntheticDataset` describing the files.
    """
    classes = world_classes(world)
    if not 1 <= num_classes <= len(classes):
        raise ValueError(f"num_classes must be in [1, {len(classes)}] for the {world} world, "
                         f"got {num_classes}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    per_split = split_counts(videos_per_class, splits)
    names = list(classes[:num_classes])
    os.makedirs(out_dir, exist_ok=True)
    jobs, lines = [], {s: [] for s in splits}
    for label, name in enumerate(names):
        os.makedirs(os.path.join(out_dir, "videos", name), exist_ok=True)
        for split_no, split in enumerate(splits):
            for k in range(per_split[split]):
                rel = f"videos/{name}/{split}_{k:04d}.mp4"
                # Seeded per video, so the result does not depend on order or worker count.
                jobs.append((os.path.join(out_dir, rel), world, name, num_frames, height, width, fps,
                             (seed, label, split_no, k), distractors))
                lines[split].append(f"{rel} {label}")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_make_one, jobs, chunksize=8))
    else:
        for job in jobs:
            _make_one(job)
    result = SyntheticDataset(out_dir=out_dir, class_names=names)
    for split, split_lines in lines.items():
        list_path = os.path.join(out_dir, f"{split}.csv")
        with open(list_path, "w", encoding="utf-8") as f:
            f.write("\n".join(split_lines) + "\n")
        result.list_files[split] = list_path
        result.counts[split] = len(split_lines)
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    logger.info("wrote %s videos of %d classes to %s", result.counts, num_classes, out_dir)
    return result
