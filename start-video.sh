#!/usr/bin/env bash
# Wan2.1 text-to-video, 1.3B, as the seed project ran it: 480p videos, model CPU offload
# (the model card quotes 8.19 GB of VRAM for the 1.3B model at 480p).
# VRAM guide (docs/deploy.md, from parameter counts): 8 GB: this default with --vae_tiling true; 12 and
# 16 GB: this default; 24 GB and more: DEVICE=cuda. Wan2.2 and the 14B models: docs/video.md.
#
#   ./start-video.sh                                  # from the hub (needs network once)
#   MODEL_ID=/models/Wan2.1-T2V-1.3B-Diffusers ./start-video.sh --http_port 9000
#   DEVICE=cuda ./start-video.sh --vae_tiling true    # extra arguments go to kserve-diffusion
#
# Environment: MODEL_ID (diffusers folder or hub id), DEVICE, MODEL_NAME, KSERVE_DIFFUSION (the
# command to run; default: kserve-diffusion on PATH, else this checkout's .venv).
set -euo pipefail

PATH="$PATH:$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.venv/bin"
MODEL_ID="${MODEL_ID:-Wan-AI/Wan2.1-T2V-1.3B-Diffusers}"
DEVICE="${DEVICE:-enable_model_cpu_offload}"
MODEL_NAME="${MODEL_NAME:-wan}"

exec "${KSERVE_DIFFUSION:-kserve-diffusion}" --model_type wan --model_name "$MODEL_NAME" --model_id "$MODEL_ID" \
  --device "$DEVICE" "$@"
