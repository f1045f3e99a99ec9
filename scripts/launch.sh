# Sourced by scripts/<data set>/<backbone>/*.sh (not run on its own): the node layout from the
# environment, and `launch FLAGS...`, which starts run_class_apt.py under torchrun with them.
#   NUM_GPUS     processes (GPUs) on this node [8]
#   NNODES       nodes [1];  NODE_RANK: this node's index [0]
#   MASTER_ADDR  address of node 0 [127.0.0.1];  MASTER_PORT [29500]
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
NUM_GPUS="${NUM_GPUS:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

launch() {
    mkdir -p "${OUTPUT_DIR}"
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" torchrun \
        --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NUM_GPUS}" \
        --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
        "${REPO}/run_class_apt.py" "$@"
}
