#!/usr/bin/env bash
# SDXL base + refiner, both from checkpoint files, with sequential CPU offload, as the seed project
# ran them: layers move to the GPU one at a time (least VRAM, slowest). The refiner shares the
# base's second text encoder and VAE, so those load once.
# VRAM guide (docs/deploy.md, from parameter counts): 8 GB: this default, or DEVICE=group_offload (faster);
# 12 GB: DEVICE=enable_model_cpu_offload; 16, 24 GB and more: DEVICE=cuda.
#
#   ./start-refiner.sh                          # /mnt/models/sd_xl_{base,refiner}_1.0.safetensors
#   DEVICE=enable_model_cpu_offload ./start-refiner.sh --http_port 9000   # extra arguments pass through
#
# Environment: SINGLE_FILE_MODEL, REFINER_SINGLE_FILE_MODEL (the checkpoints), SINGLE_FILE_CONFIG,
# REFINER_SINGLE_FILE_CONFIG (local diffusers config folders for offline loading; without them the
# configs come from the hub), DEVICE, MODEL_NAME, KSERVE_DIFFUSION (the command; default:
# kserve-diffusion on PATH, else this checkout's .venv).
set -euo pipefail

PATH="$PATH:$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.venv/bin"
SINGLE_FILE_MODEL="${SINGLE_FILE_MODEL:-/mnt/models/sd_xl_base_1.0.safetensors}"
REFINER_SINGLE_FILE_MODEL="${REFINER_SINGLE_FILE_MODEL:-/mnt/models/sd_xl_refiner_1.0.safetensors}"
DEVICE="${DEVICE:-enable_sequential_cpu_offload}"
MODEL_NAME="${MODEL_NAME:-sdxl}"
configs=()
if [[ -n "${SINGLE_FILE_CONFIG:-}" ]]; then
  configs+=(--single_file_config "$SINGLE_FILE_CONFIG")
fi
if [[ -n "${REFINER_SINGLE_FILE_CONFIG:-}" ]]; then
  configs+=(--refiner_single_file_config "$REFINER_SINGLE_FILE_CONFIG")
fi

exec "${KSERVE_DIFFUSION:-kserve-diffusion}" --model_name "$MODEL_NAME" --single_file_model "$SINGLE_FILE_MODEL" \
  --use_refiner true --refiner_single_file_model "$REFINER_SINGLE_FILE_MODEL" \
  ${configs[@]+"${configs[@]}"} --device "$DEVICE" "$@"
