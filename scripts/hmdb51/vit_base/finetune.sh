#!/usr/bin/env bash
# APT (attention prompt tuning) on HMDB51 with a VideoMAE ViT-B/16 backbone, with the
# published settings: AdamW, lr 0.05 (for a total batch of 256, scaled by total batch / 256),
# weight decay 1e-5, 100 epochs with 10 of warm-up, P=400 key/value prompts in blocks 0-11,
# prompt dropout 0.1, prompt reparameterisation, RandAugment rand-m4-n2-mstd0.2-inc1,
# 8 videos per GPU x 2 augmented clips, 10x3-view test, DeepSpeed engine.
#
# Environment variables (default in brackets):
#   NUM_GPUS     processes (GPUs) on this node [8]
#   NNODES       nodes [1];  NODE_RANK: this node's index [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT [29500]
#   DATA_PATH    folder with train.csv / val.csv / test.csv [datasets/hmdb51/lists]
#   MODEL_PATH   VideoMAE checkpoint to start from [checkpoints/videomae_k400_pretrain_base_patch16_224.pth]
#   OUTPUT_DIR   checkpoints, log.txt, TensorBoard events [experiments/APT/hmdb51/vit_base]
#   EXTRA_ARGS   more flags appended to the command (e.g. "--device cpu"); so are this script's arguments
# Multi-node: run this script on every node with the same MASTER_ADDR/MASTER_PORT and NNODES, and
# NODE_RANK = 0..NNODES-1 (or see scripts/slurm/). GPUs are those CUDA_VISIBLE_DEVICES leaves visible.
set -eu

DATA_PATH="${DATA_PATH:-datasets/hmdb51/lists}"
MODEL_PATH="${MODEL_PATH:-checkpoints/videomae_k400_pretrain_base_patch16_224.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-experiments/APT/hmdb51/vit_base}"
. "$(dirname "$0")/../../launch.sh"

launch \
    --model vit_base_patch16_224 \
    --transfer_type apt \
    --prompt_start 0 \
    --prompt_end 11 \
    --prompt_num_tokens 400 \
    --prompt_dropout 0.1 \
    --data_set HMDB51 \
    --nb_classes 51 \
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
    --lr 0.05 \
    --weight_decay 0.00001 \
    --epochs 100 \
    --warmup_epochs 10 \
    --test_num_segment 10 \
    --test_num_crop 3 \
    --dist_eval \
    --pin_mem \
    --enable_deepspeed \
    --prompt_reparam \
    --is_aa \
    --aa rand-m4-n2-mstd0.2-inc1 \
    ${EXTRA_ARGS:-} "$@"
