"""The frame cache (``--cache_videos``, ``--cache_dir``; datasets/frame_cache.py): the same items
and the same run with or without it, decoded once and shared by the workers and by later runs,
bad videos handled as without it, the limit and the flags refused with their names."""
import dataclasses
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from datasets import build_dataset, decoders
from datasets.frame_cache import CacheBudget, CacheTooLarge, FrameStore, cache_key
from datasets.video_dataset import collate_train, seed_worker
from tests.data_helpers import make_args
from tests.engine_helpers import read_log, run_main, tiny_argv
from utils.config import ConfigError, DataConfig

MODES = {"train": (True, False), "val": (False, False), "test": (False, True)}


def _seed(i):
    np.random.seed(i)
    random.seed(i)  # RandAugment draws from Python's generator
    torch.manual_seed(i)


def _items(ds, seeds):
    out = []
    for i in seeds:
        _seed(i)
        out.append(ds[i % len(ds)])
    return out


def _equal(a, b):
    for x, y in zip(a, b):
        if torch.is_tensor(x):
            assert torch.equal(x, y)
        else:
            assert x == y


def _dataset(data, mode, **flags):
    flags.setdefault("num_workers", 0)  # decoded in this process unless a test says otherwise
    return build_dataset(*MODES[mode], make_args(data, nb_classes=3, **flags))[0]


def _no_decoding(monkeypatch):
    def refuse(path, backend="decord"):
        raise AssertionError(f"decoded {path} although it is cached")
    monkeypatch.setattr(decoders, "open_video", refuse)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_cached_items_are_the_uncached_ones(data, tmp_path, monkeypatch, mode, backend):
    # RandAugment, flips, random crops and the dense/test sampling all run per item.
    flags = dict(video_backend=backend, is_aa=True, aa="rand-m7-n4-mstd0.5-inc1", num_sample=2)
    plain = _dataset(data, mode, **flags)
    memory = _dataset(data, mode, cache_videos=True, **flags)
    disk = _dataset(data, mode, cache_videos=True, cache_dir=str(tmp_path), **flags)
    assert len(memory.frames) == len(disk.frames) == len(plain)
    expected = _items(plain, range(2 * len(plain)))
    _no_decoding(monkeypatch)
    for cached in (memory, disk):
        for a, b in zip(expected, _items(cached, range(2 * len(plain)))):
            _equal(a, b)


@pytest.mark.parametrize("mode", ["val", "test"])
def test_segment_sampling_takes_the_same_frames_from_the_cache(data, mode):
    flags = dict(data_set="SSV2", nb_classes=None, allow_duplicates=True)
    plain = build_dataset(*MODES[mode], make_args(data, **flags))[0]
    cached = build_dataset(*MODES[mode], make_args(data, cache_videos=True, **flags))[0]
    assert cached.config.segment_sampling
    for a, b in zip(_items(plain, range(len(plain))), _items(cached, range(len(plain)))):
        _equal(a, b)


def test_loader_workers_share_the_cache_and_never_decode(data, monkeypatch):
    plain = _dataset(data, "train")
    cached = _dataset(data, "train", cache_videos=True)

    def batches(ds):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=3, shuffle=True, num_workers=2, worker_init_fn=seed_worker,
            collate_fn=collate_train, generator=torch.Generator().manual_seed(5))
        return [b for _epoch in range(2) for b in loader]

    expected = batches(plain)
    _no_decoding(monkeypatch)  # forked workers inherit it: a decode there fails the loader
    got = batches(cached)
    assert len(got) == len(expected) == 6
    for a, b in zip(expected, got):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_filling_the_cache_draws_no_random_numbers(data):
    torch.manual_seed(3)
    np.random.seed(3)
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    _dataset(data, "val", cache_videos=True, num_workers=1)
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_disk_cache_is_decoded_once_and_keyed_by_the_videos(data, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = _dataset(data, "val", cache_videos=True, cache_dir=cache)
    files = sorted(os.listdir(cache))
    assert [f for f in files if f.endswith((".npy", ".json"))] and not first.frames.failed
    expected = _items(first, range(len(first)))
    with monkeypatch.context() as m:
        _no_decoding(m)
        again = _dataset(data, "val", cache_videos=True, cache_dir=cache)  # mapped, not decoded
        assert again.frames.file and not again.frames.buffer.flags.writeable
        for a, b in zip(expected, _items(again, range(len(again)))):
            _equal(a, b)
    assert sorted(os.listdir(cache)) == files
    # A video re-rendered in place gives another key: the old file is not reused.
    paths = [r.path for r in first.records]
    key = cache_key(paths, "decord")
    os.utime(paths[0], ns=(1, 1))
    assert cache_key(paths, "decord") != key and cache_key(paths, "pyav") != key


def test_store_pickles_by_file_not_by_content(data, tmp_path):
    disk = _dataset(data, "val", cache_videos=True, cache_dir=str(tmp_path)).frames
    memory = _dataset(data, "val", cache_videos=True).frames
    assert len(pickle.dumps(disk)) < disk.nbytes / 10 < len(pickle.dumps(memory))
    back = pickle.loads(pickle.dumps(disk))
    assert isinstance(back, FrameStore)
    assert np.array_equal(back.get(disk.paths[0]), memory.get(disk.paths[0]))


def test_bad_videos_are_reported_and_replaced_as_without_the_cache(data, tmp_path):
    copy = str(tmp_path / "data")
    shutil.copytree(data, copy)
    bad = {}
    for split in ("train", "val"):
        rel = open(os.path.join(copy, f"{split}.csv")).readline().split()[0]
        bad[split] = os.path.join(copy, rel)
        with open(bad[split], "wb") as f:
            f.write(b"not a video")
    for mode in ("train", "val"):
        plain = _dataset(copy, mode)
        cached = _dataset(copy, mode, cache_videos=True, cache_dir=str(tmp_path / "c"))
        assert list(cached.frames.failed) == [bad[mode]]  # left to the per-item path
        assert len(cached.frames) == len(plain) - 1
        a, b = _items(plain, [0])[0], _items(cached, [0])[0]
        _equal(a, b)
        assert a[-1] == [bad[mode]]  # reported in the item, as the engine counts them


def test_the_limit_stops_the_run_naming_the_flags(data):
    with pytest.raises(CacheTooLarge, match="--cache_max_gb .*--cache_videos"):
        _dataset(data, "train", cache_videos=True, cache_max_gb=1e-5)
    # The limit is the run's: the splits cached before count against it.
    budget = CacheBudget(1.0)
    train = _dataset(data, "train", cache_videos=True)
    budget.take(train.frames.nbytes, "train")
    assert budget.left == 2 ** 30 - train.frames.nbytes


def test_cache_flags_are_checked():
    with pytest.raises(ConfigError, match="--cache_dir .* needs --cache_videos"):
        DataConfig(cache_dir="somewhere")
    with pytest.raises(ConfigError, match="--cache_max_gb"):
        DataConfig(cache_videos=True, cache_max_gb=0)


def _numbers(out):
    return [{k: v for k, v in r.items() if "time" not in k and "eta" not in k}
            for r in read_log(out)]


def _weights(out):
    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    return ckpt["model"]


def test_a_run_logs_the_same_numbers_with_the_cache(tmp_path, data, backbone):
    flags = dict(finetune=backbone, epochs=2, num_workers=1, is_aa=True,
                 aa="rand-m4-n2-mstd0.2-inc1", reprob=0.25, mixup=0.2)
    runs = {"plain": {}, "memory": {"cache_videos": True},
            "disk": {"cache_videos": True, "cache_dir": str(tmp_path / "cache")},
            "mapped": {"cache_videos": True, "cache_dir": str(tmp_path / "cache")}}
    for name, extra in runs.items():
        run_main(tiny_argv(data, str(tmp_path / name), "prompt", **flags, **extra))
    expected, weights = _numbers(str(tmp_path / "plain")), _weights(str(tmp_path / "plain"))
    assert any("val_acc1" in r for r in expected) and any("Final top-1" in r for r in expected)
    for name in ("memory", "disk", "mapped"):
        assert _numbers(str(tmp_path / name)) == expected, name
        got = _weights(str(tmp_path / name))
        assert all(torch.equal(got[k], v) for k, v in weights.items()), name
