"""The demo worlds: sizes, backbone and method rows of ``make demo`` and ``make compare``.

Synthetic worlds (:mod:`datasets.synthetic`), each a :class:`DemoConfig`; ``make demo`` and
``make compare`` run ``motion`` and ``pairs``:

- ``motion``: eight kinds of motion of a few shapes (move in four directions, turn both ways,
  grow, shrink). Local motion tells the class, so a frozen backbone that learned motion already
  separates the classes linearly (linear probing is a few points under full fine-tuning).
- ``pairs``: eight relations between the motions of two objects, as in Something-Something-V2
  (the same way, opposite ways or at right angles, together or in turn; growing/shrinking the
  same or opposite ways). Each object's own motion is drawn alike in every class, so neither one
  frame nor one object tells the class: the headroom world (adapting the backbone lands far
  above linear probing).
- ``relations``: eight relations between two objects over time (approach/retreat, orbits,
  touch-and-return/leave-and-return, converge/diverge), the first headroom world; kept for its
  measurements (docs/WORLDS.md), selectable with ``--world relations``.

A library module (no command line): ``tools/demo.py`` (``make demo``) and ``tools/sweep.py
--world`` (``make compare``: :func:`protocol_spec`) take the worlds from here, and the tests
build their clips from the same sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple

from datasets.synthetic import make_synthetic_dataset
from models import file_sha256
from utils.sweep import MethodSpec, SweepSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKBONE_DIR = os.path.join(ROOT, "assets", "demo_backbone")
BACKBONE_FILE = "pretrain_videomae_mini_patch8.pth"
# sha256 of the committed backbone; `make demo-backbone` regenerates the file and prints it.
BACKBONE_SHA256 = "82823127b627c0d48f2dc55bd2220ecb9e2d75cdf07e9fc777e72b91f7eae97f"


@dataclass
class Method:
    """One row of the table.

    Args:
        name: row label.
        transfer_type: ``--transfer_type``.
        pretrained: start from the pre-trained backbone (else a random one).
        lr: ``--lr`` before the batch/256 scaling.
        why: one line on how ``lr`` was chosen.
        flags: extra command-line flags.
    """

    name: str
    transfer_type: str
    pretrained: bool
    lr: float
    why: str
    flags: List[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.name.split(" (")[0].replace(" ", "_").lower() + ("" if self.pretrained else "_random")


@dataclass
class DemoConfig:
    """Sizes of one world's demo run. ``full()`` (motion) and ``pairs()`` are ``make demo``'s
    two worlds, ``relations()`` the earlier headroom world; ``quick()`` is the test suite's.

    Args:
        world: a world of :mod:`datasets.synthetic` (:data:`DEMO_WORLDS`).
        distractors: shapes besides the class's actors in every video.
        rows: names of the :func:`methods` rows ``make demo`` runs in this world (empty: all).
    """

    world: str = "motion"
    # data: 8 classes, 64x64 videos of 32 frames; 8 frames 4 apart span the whole video
    num_classes: int = 8
    videos_per_class: int = 40  # 20 train / 8 val / 12 test per class
    splits: Tuple[Tuple[str, float], ...] = (("train", 0.5), ("val", 0.2), ("test", 0.3))
    video_frames: int = 32
    video_size: int = 64
    num_frames: int = 8
    sampling_rate: int = 4
    input_size: int = 32
    data_seed: int = 0
    distractors: int = 0
    # the backbone: 32x32 clips in 8x8x2 tubelets, a 4x4x4 token grid
    model: str = "vit_mini_patch8"
    pretrain_model: str = "pretrain_videomae_mini_patch8"
    # pre-training (`make demo-backbone`, or `make demo` with --pretrain), on unlabelled videos
    # of another seed than the labelled set's
    pretrain_videos_per_class: int = 300
    pretrain_seed: int = 1000
    pretrain_epochs: int = 40  # 96,000 clips; the k-NN probe leaves chance after ~14 epochs
    pretrain_warmup_epochs: int = 2
    pretrain_batch: int = 32
    pretrain_lr: float = 1.6e-2  # before the batch/256 scaling: 2e-3 at batch 32
    mask_type: str = "tube"
    mask_ratio: float = 0.75  # of a 4x4 grid, 90% would leave one or two visible columns
    # adaptation
    finetune_epochs: int = 20  # 200 steps of 16 clips
    batch_size: int = 16
    num_prompts: int = 32  # APT then trains 1.2% of end2end's parameters
    test_num_segment: int = 2
    test_num_crop: int = 3
    workers: int = 2
    rows: Tuple[str, ...] = ()

    @classmethod
    def full(cls) -> "DemoConfig":
        return cls()

    @classmethod
    def relations(cls) -> "DemoConfig":
        # 150 train / 30 val / 60 test videos per class: 480 test videos, one is 0.21 points.
        # The backbone is the motion world's (see ``docs/WORLDS.md``: pre-training on this
        # world's own videos, same recipe, gave a worse one). 8 epochs of 1,200 clips keep the
        # five rows under 7 minutes on 2 cores.
        return cls(world="relations", videos_per_class=240,
                   splits=(("train", 0.625), ("val", 0.125), ("test", 0.25)), distractors=1,
                   finetune_epochs=8,
                   rows=("linear (random backbone)", "linear probing", "VPT-deep", "APT (ours)",
                         "end2end"))

    @classmethod
    def pairs(cls) -> "DemoConfig":
        # 300 train / 30 val / 60 test videos per class (480 test videos: one is 0.21 points).
        # The class is a relation between two motions, which the ViT learns only from thousands
        # of clips and steps (docs/WORLDS.md), hence the larger training split; 8 epochs keep the
        # five rows near 9 minutes on 2 cores.
        return cls(world="pairs", videos_per_class=390,
                   splits=(("train", 300), ("val", 30), ("test", 60)), finetune_epochs=8,
                   rows=("linear (random backbone)", "linear probing", "VPT-deep", "APT (ours)",
                         "end2end"))

    @classmethod
    def quick(cls, world: str = "motion") -> "DemoConfig":
        # 40-pixel videos: decord2 3.4 cannot return frames 16/24/32/48/96/144 pixels wide.
        base = cls.full() if world == "motion" else getattr(cls, world)()
        return replace(base, num_classes=3, videos_per_class=5, video_frames=12, video_size=40,
                       splits=(("train", 0.5), ("val", 0.2), ("test", 0.3)),
                       num_frames=4, sampling_rate=2, input_size=32, model="vit_micro_patch16",
                       pretrain_model="pretrain_videomae_micro_patch16",
                       pretrain_videos_per_class=4, pretrain_epochs=1, pretrain_warmup_epochs=0,
                       pretrain_batch=4, finetune_epochs=1, batch_size=4, num_prompts=2,
                       test_num_segment=2, test_num_crop=2, workers=0)


DEMO_WORLDS: Tuple[str, ...] = ("motion", "pairs", "relations")
# The headroom worlds: the targets of docs/WORLDS.md (end2end >= 70, headroom >= 25) apply.
HEADROOM_WORLDS: Tuple[str, ...] = ("pairs", "relations")


def world_config(world: str, quick: bool = False) -> DemoConfig:
    """The :class:`DemoConfig` of a world by name (:data:`DEMO_WORLDS`)."""
    if world not in DEMO_WORLDS:
        raise ValueError(f"unknown demo world {world!r}; known: {', '.join(DEMO_WORLDS)}")
    if quick:
        return DemoConfig.quick(world)
    return DemoConfig.full() if world == "motion" else getattr(DemoConfig, world)()


def methods(cfg: DemoConfig) -> List[Method]:
    """The rows. Learning rates (``--lr``, before the batch/256 scaling: 0.48 is 3e-2 at batch
    16) were chosen on the motion world's ``val`` split (``tools/demo.py --select``), never on
    ``test``; the rows without a sweep of their own take a neighbouring row's value (the ``why``
    of each says which). ``make compare`` tunes every row on each world's val split instead."""
    p = ["--prompt_num_tokens", str(cfg.num_prompts), "--prompt_dropout", "0.0"]
    rows = [
        Method("linear (random backbone)", "linear", False, 0.48,
               "the linear-probing value, so the two rows differ only in the backbone"),
        Method("linear probing", "linear", True, 0.48,
               "best val top-1 of 0.16/0.48 (79.7/85.9%, `--select`)"),
        Method("VPT-deep", "vpt", True, 0.48, "APT's value (same prompt count)",
               ["--vpt_mode", "deep", *p]),
        Method("APT (ours)", "apt", True, 0.48,
               "best val top-1 of 0.16/0.48 (81.2/85.9%, `--select`)",
               ["--prompt_reparam", *p]),
        Method("adapter", "adapter", True, 0.16, "1e-2 at batch 16, between APT's and end2end's"),
        Method("LoRA", "lora", True, 0.16, "1e-2 at batch 16, between APT's and end2end's"),
        Method("end2end", "end2end", True, 0.016,
               "1e-3 at batch 16, the usual AdamW value for a ViT trained whole"),
    ]
    return [m for m in rows if not cfg.rows or m.name in cfg.rows]


def make_data(cfg: DemoConfig, folder: str, videos_per_class: int, seed: int,
              splits: Dict[str, float]) -> None:
    """Write ``videos_per_class`` videos of each of the world's classes into ``folder``."""
    make_synthetic_dataset(folder, num_classes=cfg.num_classes, videos_per_class=videos_per_class,
                           num_frames=cfg.video_frames, size=cfg.video_size, seed=seed,
                           splits=splits, workers=max(cfg.workers, 1),
                           distractors=cfg.distractors, world=cfg.world)


def common_flags(cfg: DemoConfig, seed: int) -> List[str]:
    """``run_class_apt.py``/``run_mae_pretraining.py`` flags every stage of a world shares."""
    return ["--num_frames", str(cfg.num_frames), "--sampling_rate", str(cfg.sampling_rate),
            "--input_size", str(cfg.input_size), "--num_workers", str(cfg.workers),
            "--device", "cpu", "--seed", str(seed)]


def committed_backbone() -> str:
    """The committed demo backbone, checked against its recorded sha256."""
    path = os.path.join(BACKBONE_DIR, BACKBONE_FILE)
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is missing: run `make demo-backbone` to make it, or "
                         f"`make demo DEMO_ARGS=--pretrain` to pre-train inside the demo")
    digest = file_sha256(path)
    if digest != BACKBONE_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} differs from the recorded {BACKBONE_SHA256} "
                         f"(tools/worlds.py BACKBONE_SHA256); regenerate it with "
                         f"`make demo-backbone` or restore it with git")
    return path


# The comparison protocol's grids (``make compare``): four points per method, lr for all, lr x
# prompts for APT and VPT, lr x bottleneck for adapters, lr x rank for LoRA. Values are --lr
# before the batch/256 scaling (0.48 is 3e-2 at batch 16), around the demo's hand-picked ones.
PROTOCOL_GRIDS: Dict[str, Dict[str, List]] = {
    "linear (random backbone)": {"lr": [0.05, 0.16, 0.48, 1.6]},
    "linear probing": {"lr": [0.05, 0.16, 0.48, 1.6]},
    "VPT-deep": {"lr": [0.16, 0.48], "prompt_num_tokens": [8, 32]},
    "APT": {"lr": [0.16, 0.48], "prompt_num_tokens": [8, 32]},
    "adapter": {"lr": [0.05, 0.16], "adapter_dim": [16, 64]},
    "LoRA": {"lr": [0.05, 0.16], "lora_rank": [4, 8]},
    "full fine-tuning": {"lr": [0.0016, 0.005, 0.016, 0.048]},
}


def protocol_spec(cfg: DemoConfig, data_path: str, finetune: str,
                  cache_dir: str = "") -> SweepSpec:
    """The fair comparison of every method on one world (``make compare``): the demo's flags,
    each method with a grid of four points (:data:`PROTOCOL_GRIDS`), seeds 0-2.

    Args:
        cfg: the world.
        data_path: its labelled data set (``make_data``).
        finetune: the pre-trained backbone.
        cache_dir: ``--cache_dir`` of the runs ('' for none): the world is decoded once.
    """
    flags = {"data_set": "custom", "nb_classes": cfg.num_classes, "epochs": cfg.finetune_epochs,
             "batch_size": cfg.batch_size, "batch_size_val": 4 * cfg.batch_size,
             "num_sample": 1, "short_side_size": cfg.input_size, "opt": "adamw",
             "weight_decay": 1e-4, "warmup_epochs": 1, "smoothing": 0.0, "init_scale": 0.001,
             "test_num_segment": cfg.test_num_segment, "test_num_crop": cfg.test_num_crop,
             "save_ckpt_freq": 1000, "no_flip": True, "train_crop_scale": [0.6, 1.0],
             "num_frames": cfg.num_frames, "sampling_rate": cfg.sampling_rate,
             "input_size": cfg.input_size,
             # The decoded frames are shared through the page cache; loader processes would
             # only add start-up and copies for 32x32 clips.
             "num_workers": 0, "device": "cpu",
             "cache_videos": bool(cache_dir), "cache_dir": cache_dir or None}
    prompts = {"prompt_dropout": 0.0}
    methods_ = [
        MethodSpec("linear (random backbone)", "linear", pretrained=False),
        MethodSpec("linear probing", "linear"),
        MethodSpec("VPT-deep", "vpt", flags={"vpt_mode": "deep", **prompts}),
        MethodSpec("APT", "apt", flags={"prompt_reparam": True, **prompts}),
        MethodSpec("adapter", "adapter"),
        MethodSpec("LoRA", "lora"),
        MethodSpec("full fine-tuning", "end2end"),
    ]
    methods_ = [replace(m, grid=PROTOCOL_GRIDS[m.name]) for m in methods_]
    return SweepSpec(name=f"{cfg.world} world", data_path=data_path, model=cfg.model,
                     finetune=finetune, flags=flags, methods=tuple(methods_))
