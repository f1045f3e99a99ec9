#!/usr/bin/env bash
# Full fine-tuning (every parameter trains) of a VideoMAE ViT-S/16 on Something-Something-V2, with
# VideoMAE's fine-tuning recipe: AdamW (0.9, 0.999), lr 1e-3 per 256, layer decay 0.7,
# weight decay 0.05, drop path 0.1, mixup 0.8 / cutmix 1.0, random erasing 0.25,
# RandAugment rand-m7-n4-mstd0.5-inc1, 40 epochs with 5 of warm-up.
#
# Environment variables (default in brackets):
#   NUM_GPUS     processes (GPUs) on this node [8]
#   NNODES       nodes [1];  NODE_RANK: this node's index [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT [29500]
#   DATA_PATH    folder with train.csv / val.csv / test.csv [datasets/ssv2/lists]
#   MODEL_PATH   VideoMAE checkpoint to start from [checkpoints/videomae_ssv2_pretrain_small_patch16_224.pth]
#   OUTPUT_DIR   checkpoints, log.txt, TensorBoard events [experiments/End2End/ssv2/vit_small]
#   EXTRA_ARGS   more flags appended to the command (e.g. "--device cpu"); so are this script's arguments
# Multi-node: run this script on every node with the same MASTER_ADDR/MASTER_PORT and NNODES, and
# NODE_RANK = 0..NNODES-1 (or see scripts/slurm/). GPUs are those CUDA_VISIBLE_DEVICES leaves visible.
set -eu

DATA_PATH="${DATA_PATH:-datasets/ssv2/lists}"
MODEL_PATH="${MODEL_PATH:-checkpoints/videomae_ssv2_pretrain_small_patch16_224.pth}"
OUTPUT_DIR="${OUTPUT_DIR:-experiments/End2End/ssv2/vit_small}"
. "$(dirname "$0")/../../launch.sh"

launch \
    --model vit_small_patch16_224 \
    --transfer_type end2end \
    --data_set SSV2 \
    --nb_classes 174 \
    --data_path "${DATA_PATH}" \
    --finetune "${MODEL_PATH}" \
    --log_dir "${OUTPUT_DIR}" \
    --output_dir "${OUTPUT_DIR}" \
    --batch_size 12 \
    --batch_size_val 8 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 10 \
    --num_frames 16 \
    --opt adamw \
    --opt_betas 0.9 0.999 \
    --lr 1e-3 \
    --layer_decay 0.7 \
    --weight_decay 0.05 \
    --drop_path 0.1 \
    --mixup 0.8 \
    --cutmix 1.0 \
    --reprob 0.25 \
    --epochs 40 \
    --warmup_epochs 5 \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    --pin_mem \
    --enable_deepspeed \
    --is_aa \
    --aa rand-m7-n4-mstd0.5-inc1 \
    ${EXTRA_ARGS:-} "$@"
