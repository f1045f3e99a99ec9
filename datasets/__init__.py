"""Video data pipeline (docs/DATA.md): list files, decoding, sampling, augmentation, bad videos.

Public entry points:

* :func:`build_dataset` ``(is_train, test_mode, cfg) -> (dataset, nb_classes)``, ``cfg`` a
  ``utils.config.DataConfig`` (``DataConfig.from_args`` of the flags)
* :func:`collate_train`, :func:`collate_eval`: DataLoader collate functions
* :func:`seed_worker`: DataLoader ``worker_init_fn``
* :class:`BadVideoTracker`, :class:`TooManyBadVideos`: bad-video accounting per split
* :class:`Mixup`: timm Mixup/CutMix for video batches
* :class:`CacheBudget`: the run's ``--cache_max_gb``, shared by the lists it caches
  (``--cache_videos``, :mod:`datasets.frame_cache`)
"""

from .bad_videos import BadVideoTracker, TooManyBadVideos
from utils.config import DATASET_NUM_CLASSES, num_classes_for

from .build import build_dataset
from .decoders import VideoDecodeError, open_video
from .frame_cache import CacheBudget, CacheTooLarge
from .listfile import ListFileError, VideoRecord, parse_list_file
from .mixup import Mixup
from .video_dataset import VideoClsDataset, collate_eval, collate_train, seed_worker

__all__ = [
    "BadVideoTracker", "TooManyBadVideos", "DATASET_NUM_CLASSES", "build_dataset",
    "num_classes_for", "VideoDecodeError", "open_video", "ListFileError",
    "VideoRecord", "parse_list_file", "Mixup", "VideoClsDataset",
    "collate_eval", "collate_train", "seed_worker", "CacheBudget", "CacheTooLarge",
]
