#!/usr/bin/env bash
# SDXL base from one checkpoint file with model CPU offload, as the seed project ran it: the GPU
# holds one model at a time, so SDXL base fits in 8 GB of VRAM.
# VRAM guide (docs/deploy.md, from parameter counts): 8 GB: this default, or DEVICE=group_offload;
# 12, 16, 24 GB and more: DEVICE=cuda.
#
#   ./start-base.sh                                            # /mnt/models/sd_xl_base_1.0.safetensors
#   SINGLE_FILE_MODEL=/models/sd_xl_base_1.0.safetensors SINGLE_FILE_CONFIG=/models/sdxl-config ./start-base.sh
#   DEVICE=cuda ./start-base.sh --http_port 9000               # extra arguments go to kserve-diffusion
#
# Environment: SINGLE_FILE_MODEL (the checkpoint), SINGLE_FILE_CONFIG (a local diffusers config folder
# for offline loading; without it the configs come from the hub), DEVICE, MODEL_NAME, KSERVE_DIFFUSION
# (the command; default: kserve-diffusion on PATH, else this checkout's .venv).
set -euo pipefail

PATH="$PATH:$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.venv/bin"
SINGLE_FILE_MODEL="${SINGLE_FILE_MODEL:-/mnt/models/sd_xl_base_1.0.safetensors}"
DEVICE="${DEVICE:-enable_model_cpu_offload}"
MODEL_NAME="${MODEL_NAME:-sdxl}"
config=()
if [[ -n "${SINGLE_FILE_CONFIG:-}" ]]; then
  config=(--single_file_config "$SINGLE_FILE_CONFIG")
fi

exec "${KSERVE_DIFFUSION:-kserve-diffusion}" --model_name "$MODEL_NAME" --single_file_model "$SINGLE_FILE_MODEL" \
  ${config[@]+"${config[@]}"} --device "$DEVICE" "$@"
