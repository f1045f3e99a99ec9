"""``build_dataset(is_train, test_mode, cfg)``: the entry point used by the engine."""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

from utils.config import DataConfig, num_classes_for

from .frame_cache import CacheBudget
from .listfile import parse_list_file
from .video_dataset import VideoClsDataset

logger = logging.getLogger(__name__)


def build_dataset(is_train: bool, test_mode: bool, cfg: DataConfig,
                  budget: Optional[CacheBudget] = None) -> Tuple[VideoClsDataset, int]:
    """Build the training, validation or test dataset; with ``--cache_videos``, its videos'
    frames are decoded (or mapped from ``--cache_dir``) now, in this process, before any
    DataLoader worker starts, so the workers share them.

    Args:
        is_train: training split (``train.csv``); takes precedence over ``test_mode``.
        test_mode: test split (``test.csv``, multi-view items); otherwise validation (``val.csv``).
        cfg: the data settings (``DataConfig.from_args`` of the command line).
        budget: the run's ``--cache_max_gb``, shared by its splits (default: this split's own).

    Returns:
        ``(dataset, nb_classes)``.

    Raises:
        ListFileError: a list file problem, naming the file and line.
        ValueError: an invalid flag, naming it (``CacheTooLarge`` past ``--cache_max_gb``).
    """
    mode = "train" if is_train else ("test" if test_mode else "val")
    nb_classes = num_classes_for(cfg.data_set, cfg.nb_classes)
    if not cfg.data_path:
        raise ValueError("--data_path (the folder with train.csv, val.csv and test.csv) is required")
    list_path = os.path.join(cfg.data_path, f"{mode}.csv")
    records = parse_list_file(list_path, nb_classes, cfg.data_root,
                              require_all_classes=(mode == "train"),
                              allow_duplicates=cfg.allow_duplicates)
    dataset = VideoClsDataset(records, mode, cfg, list_path)
    if cfg.cache_videos:
        dataset.cache_frames(budget or CacheBudget(cfg.cache_max_gb))
    logger.info("%s split: %d videos from %s (%d classes, backend %s)", mode, len(dataset),
                list_path, nb_classes, dataset.config.video_backend)
    return dataset, nb_classes
