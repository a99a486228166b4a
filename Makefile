# The two commands: `make demo` and `make test`. Each creates or updates .venv itself, with the tested
# versions of constraints.txt (`make lock` refreshes them).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The client notebook's kernel has an environment of its own: recent IPython needs a psutil newer
# than kserve 0.21 allows.
NOTEBOOK_VENV := .venv-notebook
NOTEBOOK_STAMP := $(NOTEBOOK_VENV)/.installed
DEMO_MODEL := .cache/tiny/sdxl
DEMO_VIDEO_MODEL := .cache/tiny/wan22-ti2v
DEMO_LORAS := .cache/tiny/loras
HTTP_PORT ?= 8080
GRPC_PORT ?= 8081

CONSTRAINTS := constraints.txt
NOTEBOOK_CONSTRAINTS := constraints-notebook.txt

.PHONY: install notebook-env find-redis find-s3rver find-chromium demo test test-fast docs lock fuzz bench bench-gpu gpu-check lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, from the pinned CPU build, so no resolver pulls the multi-GB CUDA wheels.
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[test]"
	$(PY) -m pip install -c $(CONSTRAINTS) --no-deps invisible-watermark  # the watermark; see pyproject.toml
	touch $(STAMP)

install: $(STAMP)

$(NOTEBOOK_STAMP): requirements-notebook.txt $(NOTEBOOK_CONSTRAINTS)
	$(PYTHON) -m venv $(NOTEBOOK_VENV)
	$(NOTEBOOK_VENV)/bin/python -m pip install -q --upgrade pip
	$(NOTEBOOK_VENV)/bin/python -m pip install -q -c $(NOTEBOOK_CONSTRAINTS) -r requirements-notebook.txt
	touch $(NOTEBOOK_STAMP)

notebook-env: $(NOTEBOOK_STAMP)

$(DEMO_MODEL)/model_index.json: | $(STAMP)
	$(PY) -m kserve_diffusion.testing.tiny --family sdxl --out $(DEMO_MODEL)

$(DEMO_VIDEO_MODEL)/model_index.json: | $(STAMP)
	$(PY) -m kserve_diffusion.testing.tiny --family wan22-ti2v --out $(DEMO_VIDEO_MODEL)

# The demo's LoRA adapters (the tiny models are rewritten beside them, identical: every weight has its seed).
$(DEMO_LORAS)/wan-kohya.safetensors: | $(STAMP)
	$(PY) -m kserve_diffusion.testing.tiny --family sdxl --out $(DEMO_MODEL) --loras $(DEMO_LORAS)
	$(PY) -m kserve_diffusion.testing.tiny --family wan22-ti2v --out $(DEMO_VIDEO_MODEL) --loras $(DEMO_LORAS)

demo: install $(DEMO_MODEL)/model_index.json $(DEMO_VIDEO_MODEL)/model_index.json $(DEMO_LORAS)/wan-kohya.safetensors
	@echo ""
	@echo "Serving a tiny random-weight SDXL + Wan2.2 TI2V-5B video, text or image to video (LoRA adapters in $(DEMO_LORAS)) as model 'sdxl' on http://localhost:$(HTTP_PORT) (gRPC $(GRPC_PORT))."
	@echo "Try, once it logs that it is ready:"
	@echo "  curl -s localhost:$(HTTP_PORT)/v1/models/sdxl:predict -d '{\"instances\": [{\"prompt\": \"a red fox\", \"height\": 512, \"width\": 512, \"num_inference_steps\": 4, \"seed\": 42}]}' | head -c 300; echo"
	@echo ""
	$(PY) -m kserve_diffusion --model_name sdxl --model_id $(DEMO_MODEL) --video_model_id $(DEMO_VIDEO_MODEL) \
		--lora_dir $(DEMO_LORAS) --device cpu --http_port $(HTTP_PORT) --grpc_port $(GRPC_PORT)

# The Redis job store tests start real redis-server processes: found on PATH, else installed with apt-get
# when this runs as root on Debian/Ubuntu; otherwise those tests are skipped, and say so.
find-redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (apt-get) for the Redis job store tests"; \
	    apt-get install -y -q redis-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; } || \
	      echo "note: apt-get could not install redis-server; the Redis job store tests will be skipped"; \
	  else \
	    echo "note: no redis-server on PATH; the Redis job store tests will be skipped (sudo apt-get install redis-server, or dnf install redis)"; \
	  fi; }

# s3rver (Node) is the S3 server that enforces presigned URLs' expiry (moto_server, from the test extras, does not):
# installed with npm into .tools/s3rver when npm is there; otherwise that one test is skipped, and says so.
S3RVER := .tools/s3rver/node_modules/.bin/s3rver
find-s3rver:
	@test -x $(S3RVER) || { 	  if command -v npm >/dev/null 2>&1; then 	    echo "installing s3rver (npm) for the presigned URL expiry test"; 	    npm install -s --no-audit --no-fund --prefix .tools/s3rver s3rver@3.7.1 >/dev/null 2>&1 || 	      echo "note: npm could not install s3rver; the presigned URL expiry test will be skipped"; 	  else 	    echo "note: no npm; the presigned URL expiry test will be skipped (apt-get install npm)"; 	  fi; }

# The playground's browser tests drive Debian's Chromium through Playwright (no browser download).
find-chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the playground's browser tests"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	      echo "note: apt-get could not install chromium; the playground's browser tests will be skipped"; \
	  else \
	    echo "note: no chromium on PATH; the playground's browser tests will be skipped (sudo apt-get install chromium, or set CHROMIUM=/path/to/chrome)"; \
	  fi; }

# -rs: say which checks were skipped and why (no GPU, no ../shared for the manifest validation, ...)
# Every tier: unit, model, server, deploy (docs/development.md).
test: install notebook-env find-redis find-s3rver find-chromium
	$(PY) -m pytest -q -rs

# The unit tier: no server process, no generation (seconds).
test-fast: install
	$(PY) -m pytest -q -rs tests/unit

# docs/configuration.md from the declared settings (a unit test fails when it is stale).
docs: install
	$(PY) -m kserve_diffusion.config.reference docs/configuration.md

# Schema-driven fuzzing of the running server (a few minutes): schemathesis in its own environment.
FUZZ_VENV := .venv-fuzz
$(FUZZ_VENV)/bin/schemathesis:
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install -q "schemathesis==4.32.5"

fuzz: install $(FUZZ_VENV)/bin/schemathesis
	tools/fuzz.sh

# Re-resolve pyproject.toml's ranges in fresh environments -> constraints.txt, constraints-notebook.txt.
lock:
	PYTHON=$(PYTHON) tools/lock.sh

# CPU figures with the tiny models (about 10 minutes on 2 cores) -> benchmarks/results/cpu.{json,md,png}
bench: install
	$(PY) -m benchmarks.bench

# Full-size architectures with random weights on a CUDA GPU -> benchmarks/results/gpu.{json,md,png}
bench-gpu: install
	$(PY) -m benchmarks.bench --gpu

# The one-call GPU acceptance run (under 8 minutes on one H100/H200, nothing downloaded): the gpu tests and a
# reduced matrix (SDXL, FLUX.1-dev with compile / fp8 / cache, Wan) -> benchmarks/results/gpu.{json,md,png}.
# Needs the GPU extras (torchao, bitsandbytes): pip install '.[gpu]' (docs/benchmarks.md: offline machines).
gpu-check: install
	$(PY) -m benchmarks.gpu_check

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(NOTEBOOK_VENV) $(FUZZ_VENV) .cache .pytest_cache
