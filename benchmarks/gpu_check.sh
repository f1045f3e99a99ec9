#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): DDP + amp, --eval of the checkpoint,
# fp16 + --clip_grad, DeepSpeed bf16 stage 0 and stage 2 (SGD, AdamW), --compile, and ViT-B APT
# training clips/s and peak memory; writes gpu_check.json and gpu_check.md into --out.
#   bash benchmarks/gpu_check.sh --out results/gpu_check          # GPU machine, under 8 minutes
#   bash benchmarks/gpu_check.sh --dry --out /tmp/gpu_check_dry   # CPU, gloo, smallest sizes
# PYTHON: the interpreter [.venv/bin/python of this checkout if present, else python].
set -eu
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "${REPO}/.venv/bin/python" ]; then PYTHON="${REPO}/.venv/bin/python"; else PYTHON=python; fi
fi
exec "${PYTHON}" "${REPO}/benchmarks/gpu_check.py" "$@"
