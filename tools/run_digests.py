"""Fingerprints of short training runs, to prove a refactoring changed nothing a run computes.

``record`` trains one short run of every transfer type through the command line (fixed seeds,
a small synthetic data set, the committed demo backbone) and writes one JSON file holding, per
type, every number of ``log.txt`` (losses, learning rates, weight decays, accuracies; timings
left out) and the sha256 of every tensor of ``checkpoint-last.pth`` (model, optimizer and EMA
states). ``compare`` says which numbers or tensors differ between two such files; the same code
on the same machine gives bit-identical files, so any difference is a change of behaviour. A
``log.txt`` key that only the second file has (a metric added since the first was recorded,
such as ``Final mean-class top-1``) is listed but is no difference: every number of the first
file must still be there, equal.

Usage::

    python tools/run_digests.py record --out before.json    # on the old commit
    python tools/run_digests.py record --out after.json     # on the new one
    python tools/run_digests.py compare before.json after.json

Runs on CPU, one process, in a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONE = os.path.join(ROOT, "assets", "demo_backbone", "pretrain_videomae_mini_patch8.pth")

logger = logging.getLogger("run_digests")

# Every transfer type, with the settings a short run needs (APT with its reparameterisation).
RUNS: Dict[str, List[str]] = {
    "linear": ["--transfer_type", "linear"],
    # APT by its former name: the fingerprints of older commits were made with it, and it keeps
    # the alias exercised.
    "apt": ["--transfer_type", "prompt", "--prompt_num_tokens", "4", "--prompt_reparam",
            "--prompt_dropout", "0.1"],
    "vpt_deep": ["--transfer_type", "vpt", "--vpt_mode", "deep", "--prompt_num_tokens", "4"],
    "approx": ["--transfer_type", "approx", "--prompt_num_tokens", "4"],
    "adapter": ["--transfer_type", "adapter"],
    "lora": ["--transfer_type", "lora"],
    "end2end": ["--transfer_type", "end2end", "--model_ema", "--model_ema_decay", "0.9"],
    "random": ["--transfer_type", "random"],
}
COMMON = ["--model", "vit_mini_patch8", "--data_set", "custom", "--nb_classes", "4",
          "--batch_size", "4", "--batch_size_val", "8", "--num_sample", "2", "--input_size", "32",
          "--short_side_size", "32", "--num_frames", "8", "--sampling_rate", "2",
          "--test_num_segment", "2", "--test_num_crop", "2", "--opt", "adamw", "--lr", "0.1",
          "--weight_decay", "1e-4", "--epochs", "2", "--warmup_epochs", "1", "--smoothing", "0.1",
          "--mixup", "0.2", "--reprob", "0.25", "--is_aa", "--aa", "rand-m4-n2-mstd0.2-inc1",
          "--drop_path", "0.1", "--save_ckpt_freq", "1", "--num_workers", "0", "--device", "cpu",
          "--seed", "3", "--no_auto_resume", "--log_every", "1000"]
TIMING_KEYS = ("time", "eta")


def _tensor_digests(obj: Any, prefix: str, out: Dict[str, str]) -> None:
    """sha256 of the bytes, dtype and shape of every tensor in a nested checkpoint."""
    import torch  # heavy: only recording reads checkpoints; --help and compare need no torch
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h = hashlib.sha256(f"{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        out[prefix] = h.hexdigest()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensor_digests(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensor_digests(v, f"{prefix}[{i}]", out)


def _log_numbers(path: str) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)}
            for r in records]


def record(out: str, work: str) -> Dict[str, Any]:
    """Train every run of ``RUNS`` under ``work``; write and return their fingerprints."""
    import torch  # heavy: only recording reads checkpoints; --help and compare need no torch
    data = os.path.join(work, "data")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic.py"), "--out",
                    data, "--num_classes", "4", "--videos_per_class", "10", "--num_frames", "24",
                    "--size", "40", "--seed", "0"], check=True, capture_output=True)
    result: Dict[str, Any] = {}
    for name, flags in RUNS.items():
        run_dir = os.path.join(work, name)
        cmd = [sys.executable, os.path.join(ROOT, "run_class_apt.py"), *COMMON, *flags,
               "--data_path", data, "--finetune", BACKBONE, "--output_dir", run_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
        tensors: Dict[str, str] = {}
        ckpt = torch.load(os.path.join(run_dir, "checkpoint-last.pth"), map_location="cpu",
                          weights_only=True)
        for key in ("model", "optimizer", "scaler", "model_ema"):
            _tensor_digests(ckpt.get(key), key, tensors)
        result[name] = {"log": _log_numbers(os.path.join(run_dir, "log.txt")),
                        "tensors": tensors}
        logger.info("%s: %d log records, %d tensors", name, len(result[name]["log"]),
                    len(tensors))
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return result


def added_log_keys(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> Optional[List[str]]:
    """The keys the records of ``b`` add to those of ``a`` (a metric logged since ``a`` was
    recorded), when every record of ``a`` is in ``b`` unchanged; None when a number changed or
    went missing, or the records are not the same lines."""
    if len(a) != len(b):
        return None
    added = set()
    for ra, rb in zip(a, b):
        if any(k not in rb or rb[k] != v for k, v in ra.items()):
            return None
        added |= set(rb) - set(ra)
    return sorted(added)


def compare(a_path: str, b_path: str) -> Tuple[List[str], List[str]]:
    """The differences between two fingerprint files (empty: bit-identical), and the notes on
    ``log.txt`` keys that only ``b_path`` has (new numbers; every number of ``a_path`` equal)."""
    with open(a_path, encoding="utf-8") as f:
        a = json.load(f)
    with open(b_path, encoding="utf-8") as f:
        b = json.load(f)
    diffs: List[str] = []
    notes: List[str] = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            diffs.append(f"{name}: only in {a_path if name in a else b_path}")
            continue
        added = added_log_keys(a[name]["log"], b[name]["log"])
        if added is None:
            diffs.append(f"{name}: log.txt numbers differ")
        elif added:
            notes.append(f"{name}: log.txt adds {', '.join(added)} (not in {a_path})")
        ta, tb = a[name]["tensors"], b[name]["tensors"]
        for key in sorted(set(ta) | set(tb)):
            if ta.get(key) != tb.get(key):
                diffs.append(f"{name}: tensor {key} differs (or is missing)")
    return diffs, notes


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser("tools/run_digests.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="train every transfer type briefly; write fingerprints")
    r.add_argument("--out", required=True, help="the JSON file to write")
    r.add_argument("--work", default=None, help="folder for data and runs (default: a temp dir)")
    c = sub.add_parser("compare", help="differences between two fingerprint files")
    c.add_argument("files", nargs=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "record":
        if args.work:
            record(args.out, args.work)
        else:
            with tempfile.TemporaryDirectory() as work:
                record(args.out, work)
        return 0
    diffs, notes = compare(*args.files)
    for d in diffs + notes:
        logger.info("%s", d)
    logger.info("bit-identical" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
