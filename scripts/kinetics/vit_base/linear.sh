#!/usr/bin/env bash
# Linear probing (only fc_norm and the head train) on Kinetics-400 with a frozen VideoMAE
# ViT-B/16: the APT recipe with --transfer_type linear and lr 0.01 (as the original code's
# linear-probe script).
#
# Environment variables (default in brackets):
#   NUM_GPUS     processes (GPUs) on this node [8]
#   NNODES       nodes [1];  NODE_RANK: this node's index [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT [29500]
#   DATA_PATH    folder with train.csv / val.csv / test.csv [datasets/kinetics400/lists]
#   MODEL_PATH   VideoMAE checkpoint to start from [checkpoints/videomae_k400_pretrain_base_patch16_224.pth]
#   OUTPUT_DIR   checkpoints, log.txt, TensorBoard events [experiments/Linear/kinetics/vit_base]
#   EXTRA_ARGS   more flags appended to the command (e.g. "--device cpu"); so are this script's arguments
# Multi-node: run this script on every node with the same MASTER_ADDR/MASTER_PORT and NNODES, and
# NODE_RANK = 0..NNODES-1 (or see scripts/slurm/). GPUs are those CUDA_VISIBLE_DEVICES leaves visible.
set -eu

DATA_PATH="${DATA_PATH:-datasets/kinetics400/lists}"
MODEL_PATH="${MODEL_PATH:-checkpoints/videomae_k400_pretrain_base_patch16_224.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-experiments/Linear/kinetics/vit_base}"
. "$(dirname "$0")/../../launch.sh"

launch \
    --model vit_base_patch16_224 \
    --transfer_type linear \
    --data_set Kinetics-400 \
    --nb_classes 400 \
    --data_path "${DATA_PATH}" \
    --finetune "${MODEL_PATH}" \
    --log_dir "${OUTPUT_DIR}" \
    --output_dir "${OUTPUT_DIR}" \
    --batch_size 8 \
    --batch_size_val 8 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 10 \
    --num_frames 16 \
    --opt adamw \
    --lr 0.01 \
    --weight_decay 0.00001 \
    --epochs 100 \
    --warmup_epochs 10 \
    --test_num_segment 5 \
    --test_num_crop 3 \
    --dist_eval \
    --pin_mem \
    --enable_deepspeed \
    --is_aa \
    --aa rand-m4-n2-mstd0.2-inc1 \
    ${EXTRA_ARGS:-} "$@"
