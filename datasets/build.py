"""``build_dataset(is_train, test_mode, args)``: the entry point used by the engine."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, Optional, Tuple

from .listfile import parse_list_file
from .video_dataset import VideoClsDataset, VideoDataConfig

logger = logging.getLogger(__name__)

# Class counts of the known data sets; 'custom' takes --nb_classes.
DATASET_NUM_CLASSES: Dict[str, int] = {"Kinetics-400": 400, "SSV2": 174, "UCF101": 101, "HMDB51": 51}
DATA_SETS = tuple(DATASET_NUM_CLASSES) + ("custom",)
# Data sets whose labels depend on left/right (e.g. "pushing something from left to right"):
# they use segment sampling and are never flipped.
SEGMENT_SAMPLED = ("SSV2",)


def num_classes_for(args: argparse.Namespace) -> int:
    """Class count from ``--data_set``, checked against ``--nb_classes`` when that is given.

    Args:
        args: needs ``data_set``; ``nb_classes`` is required for 'custom'.

    Raises:
        ValueError: unknown data set, or ``--nb_classes`` contradicting it.
    """
    data_set = getattr(args, "data_set", None)
    given: Optional[int] = getattr(args, "nb_classes", None)
    if data_set == "custom":
        if given is None or int(given) < 1:
            raise ValueError("--data_set custom needs --nb_classes (a positive class count)")
        return int(given)
    if data_set not in DATASET_NUM_CLASSES:
        raise ValueError(f"unknown --data_set {data_set!r}; choose one of {', '.join(DATA_SETS)}")
    expected = DATASET_NUM_CLASSES[data_set]
    if given is not None and int(given) != expected:
        raise ValueError(f"--nb_classes {given} contradicts --data_set {data_set} ({expected} "
                         f"classes); use --data_set custom for another class count")
    return expected


def config_from_args(args: argparse.Namespace, mode: str) -> VideoDataConfig:
    """Data options from the command-line namespace (missing newer flags take their defaults).

    RandAugment is on only in training and only when ``--is_aa`` is set (the original APT
    scripts pass ``--is_aa --aa rand-m4-n2-mstd0.2-inc1``); ``--aa`` alone does nothing.

    Args:
        args: parsed flags.
        mode: 'train', 'val' or 'test'.
    """
    default = VideoDataConfig()  # the one declaration of each option's default

    def option(name: str, value_name: Optional[str] = None) -> Any:
        value = getattr(args, name, None)
        return getattr(default, value_name or name) if value is None else value

    data_set = getattr(args, "data_set", "custom")
    aa = getattr(args, "aa", None)
    use_aa = mode == "train" and bool(getattr(args, "is_aa", False)) and aa not in (None, "", "None", "none")
    num_segments = int(getattr(args, "num_segments", 1) or 1)
    if num_segments != 1:
        raise ValueError(f"--num_segments {num_segments} is not supported: clips have "
                         f"--num_frames frames from one window (use 1)")
    return VideoDataConfig(
        num_frames=int(option("num_frames")),
        sampling_rate=int(option("sampling_rate")),
        segment_sampling=data_set in SEGMENT_SAMPLED,
        input_size=int(option("input_size")),
        short_side_size=int(option("short_side_size")),
        test_num_segment=int(option("test_num_segment")),
        test_num_crop=int(option("test_num_crop")),
        num_sample=int(option("num_sample")),
        auto_augment=aa if use_aa else None,
        train_interpolation=option("train_interpolation"),
        # Never flip SSV2 (left/right are part of its labels); --no_flip for other such sets.
        flip=data_set not in SEGMENT_SAMPLED and not getattr(args, "no_flip", False),
        crop_scale=tuple(option("train_crop_scale", "crop_scale")),
        reprob=float(option("reprob")) if mode == "train" else 0.0,
        remode=option("remode"),
        recount=int(option("recount")),
        video_backend=option("video_backend"),
        max_bad_fraction=float(option("max_bad_fraction")),
        allow_duplicates=bool(option("allow_duplicates")),
    )


def build_dataset(is_train: bool, test_mode: bool, args: argparse.Namespace
                  ) -> Tuple[VideoClsDataset, int]:
    """Build the training, validation or test dataset.

    Args:
        is_train: training split (``train.csv``); takes precedence over ``test_mode``.
        test_mode: test split (``test.csv``, multi-view items); otherwise validation (``val.csv``).
        args: argparse namespace with the data flags (``data_set``, ``data_path``, ``data_root``,
            ``nb_classes``, ``num_frames``, ``sampling_rate``, ``input_size``,
            ``short_side_size``, ``test_num_segment``, ``test_num_crop``, ``num_sample``,
            ``is_aa``, ``aa``, ``train_interpolation``, ``reprob``, ``remode``, ``recount``,
            ``video_backend``, ``max_bad_fraction``, ``allow_duplicates``).

    Returns:
        ``(dataset, nb_classes)``.

    Raises:
        ListFileError: a list file problem, naming the file and line.
        ValueError: an invalid flag, naming it.
    """
    mode = "train" if is_train else ("test" if test_mode else "val")
    nb_classes = num_classes_for(args)
    data_path = getattr(args, "data_path", None)
    if not data_path:
        raise ValueError("--data_path (the folder with train.csv, val.csv and test.csv) is required")
    list_path = os.path.join(data_path, f"{mode}.csv")
    config = config_from_args(args, mode)
    records = parse_list_file(list_path, nb_classes, getattr(args, "data_root", "") or "",
                              require_all_classes=(mode == "train"),
                              allow_duplicates=config.allow_duplicates)
    dataset = VideoClsDataset(records, mode, config, list_path)
    logger.info("%s split: %d videos from %s (%d classes, backend %s)", mode, len(dataset),
                list_path, nb_classes, dataset.config.video_backend)
    return dataset, nb_classes
