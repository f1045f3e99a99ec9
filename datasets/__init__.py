"""Video data pipeline (docs/DATA.md): list files, decoding, sampling, augmentation, bad videos.

Public entry points:

* :func:`build_dataset` ``(is_train, test_mode, cfg) -> (dataset, nb_classes)``, ``cfg`` a
  ``utils.config.DataConfig`` (``DataConfig.from_args`` of the flags)
* :func:`collate_train`, :func:`collate_eval`: DataLoader collate functions
* :func:`seed_worker`: DataLoader ``worker_init_fn``
* :class:`BadVideoTracker`, :class:`TooManyBadVideos`: bad-video accounting per split
* :class:`Mixup`: timm Mixup/CutMix for video batches
* :class:`CacheBudget`, :class:`CacheTooLarge`: the run's ``--cache_max_gb``, shared by the
  lists it caches (``--cache_videos``, :mod:`datasets.frame_cache`)
* :mod:`datasets.splits`: lists from a class-per-folder tree, seeded stratified splits, K-shot
  training lists (``tools/build_lists.py folder`` and ``shots``)

The names below are re-exported lazily (:func:`utils.lazy.lazy_exports`): a light submodule
(``datasets.listfile``, ``datasets.synthetic``) imports without torch and timm.
"""
from utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".bad_videos": ["BadVideoTracker", "TooManyBadVideos"],
    ".build": ["build_dataset"],
    ".decoders": ["VideoDecodeError", "open_video"],
    ".frame_cache": ["CacheBudget", "CacheTooLarge"],
    ".listfile": ["ListFileError", "VideoRecord", "parse_list_file"],
    ".mixup": ["Mixup"],
    ".video_dataset": ["VideoClsDataset", "collate_eval", "collate_train", "seed_worker"],
    "utils.config": ["DATASET_NUM_CLASSES", "num_classes_for"],
})
