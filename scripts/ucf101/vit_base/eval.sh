#!/usr/bin/env bash
# Multi-view test (5x3 views) of a trained checkpoint on UCF101 (ViT-B/16).
# CHECKPOINT picks the file/folder to test (default: the newest in OUTPUT_DIR, i.e.
# checkpoint-last); the network flags (transfer type, prompts, ...) are read from it.
# MODEL_PATH is the backbone the checkpoint was trained on (its sha256 is checked).
# Adds one line with "Final top-1"/"Final top-5" to OUTPUT_DIR/log.txt.
#   CHECKPOINT   checkpoint to evaluate [newest in OUTPUT_DIR]
#
# Environment variables (default in brackets):
#   NUM_GPUS     processes (GPUs) on this node [8]
#   NNODES       nodes [1];  NODE_RANK: this node's index [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT [29500]
#   DATA_PATH    folder with train.csv / val.csv / test.csv [datasets/ucf101/lists]
#   MODEL_PATH   VideoMAE checkpoint to start from [checkpoints/videomae_k400_pretrain_base_patch16_224.pth]
#   OUTPUT_DIR   checkpoints, log.txt, TensorBoard events [experiments/APT/ucf101/vit_base]
#   EXTRA_ARGS   more flags appended to the command (e.g. "--device cpu"); so are this script's arguments
# Multi-node: run this script on every node with the same MASTER_ADDR/MASTER_PORT and NNODES, and
# NODE_RANK = 0..NNODES-1 (or see scripts/slurm/). GPUs are those CUDA_VISIBLE_DEVICES leaves visible.
set -eu

DATA_PATH="${DATA_PATH:-datasets/ucf101/lists}"
MODEL_PATH="${MODEL_PATH:-checkpoints/videomae_k400_pretrain_base_patch16_224.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-experiments/APT/ucf101/vit_base}"
CHECKPOINT="${CHECKPOINT:-}"
. "$(dirname "$0")/../../launch.sh"

launch \
    --model vit_base_patch16_224 \
    --transfer_type apt \
    --data_set UCF101 \
    --nb_classes 101 \
    --data_path "${DATA_PATH}" \
    --finetune "${MODEL_PATH}" \
    --log_dir "${OUTPUT_DIR}" \
    --output_dir "${OUTPUT_DIR}" \
    --eval \
    ${CHECKPOINT:+--resume "${CHECKPOINT}"} \
    --batch_size_val 8 \
    --input_size 224 \
    --short_side_size 224 \
    --num_frames 16 \
    --test_num_segment 5 \
    --test_num_crop 3 \
    --dist_eval \
    --pin_mem \
    ${EXTRA_ARGS:-} "$@"
