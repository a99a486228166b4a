"""`make bench`: measure, then write benchmarks/results/{cpu,gpu}.{json,md,png}.

python -m benchmarks.bench            # CPU: serving overhead, throughput, health, encoding, cold start, jobs, LoRA,
                                      # the shared queue, answers as URLs
python -m benchmarks.bench --gpu      # CUDA: full-size SDXL, FLUX.1-dev and Wan2.1-1.3B, random weights
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks import encoding, gpu, jobs, loras, marks, outputs, parallel, queue, report, serving  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def cpu_results(plan: serving.Plan) -> dict[str, Any]:
    """Every CPU figure, as report sections."""
    figures = serving.measure(plan)
    job_figures = jobs.measure(plan)
    lora_rows = loras.measure(plan)
    queue_rows = queue.measure(plan)
    output_rows = outputs.measure(plan)
    mark_rows = marks.measure(plan)
    return {
        "machine": report.machine(),
        "sections": [
            {
                "title": "a. Latency overhead: one request at a time",
                "note": "HTTP v1 end to end (PNG answer, read and parsed) over the in-process pipeline call, "
                "tiny SDXL (VAE downsamples by 8), medians, the two measured alternately. The pipeline runs on "
                f"{figures['pipeline_threads']} torch thread(s), in the server and in-process alike: those cores "
                "play the GPU, the one left plays the host CPU that answers HTTP and encodes.",
                "rows": figures["latency"],
            },
            {
                "title": "b, c. Saturated: 8 concurrent clients",
                "note": "Accelerator busy = the server's own generation time (its generation_seconds metric) over "
                "the wall time of the run: 1.0 means the accelerator thread never waited for HTTP, decoding or "
                "encoding. Throughput x in-process latency is shown beside it, but it is no ceiling: the in-process "
                "baseline drifts on this shared VM (it came out 1.018 and 1.023). Health p99: GET /v2/health/ready "
                "every 20 ms meanwhile. Both encoding modes in the same run: the encode pool (default) and encoding "
                "on the accelerator thread (`--encode_threads 0`).",
                "rows": figures["saturated"],
            },
            {
                "title": "d. Encoding",
                "note": "The server's encoders on a smooth synthetic 1024x1024 picture (and 81 panning frames).",
                "rows": encoding.measure(repeats=max(1, plan.repeats // 2)),
            },
            {"title": "e. Cold start", "note": "Process start to ready, tiny SDXL.", "rows": figures["cold_start"]},
            {
                "title": "f. Speed options",
                "note": "The GPU mode's loop with the tiny SDXL on the CPU: what each option does to a small "
                "model on a CPU, not what it does on a GPU (see gpu.md). First call includes any compilation.",
                "rows": speed_options(plan),
            },
            {
                "title": "g. Jobs: overhead over :predict",
                "note": "The same request as a synchronous :predict and as a job (submit, follow its Server-Sent "
                "Events to the end, GET the predictions), alternately; the ratio is the median of adjacent pairs' "
                "ratios (a pair sees the same drift of this shared VM); memory store, and Redis when "
                "redis-server is installed.",
                "rows": job_figures["overhead"],
            },
            {
                "title": "h. Jobs: from a step to its event",
                "note": f"A {jobs.EVENT_SIZE}x{jobs.EVENT_SIZE} job of {jobs.EVENT_STEPS} steps (about 0.1 s a step): "
                "each progress event's arrival at the client minus the time its step finished on the "
                "accelerator thread (`step_at`).",
                "rows": job_figures["delay"],
            },
            {
                "title": "i. LoRA adapters: first use, switching, the same adapter",
                "note": "Tiny SDXL with four rank-4 adapters in --lora_dir; each request with an adapter is paired "
                "with the next request without one, and the ratio is the median of those pairs (goal for switching "
                "between loaded adapters: <= 1.05). Eager mode; with --compile the switch is a hot-swap into a slot.",
                "rows": lora_rows,
            },
            {
                "title": "j. Shared job queue: three replicas on one Redis",
                "note": f"{queue.JOBS} jobs submitted to one of {queue.REPLICAS} replicas: the makespan over the "
                "ideal (the jobs' own run times in this run, summed, / 3; before the shared queue about 3); then a "
                "long job's replica killed mid-run: from the kill to its second try running elsewhere. Needs "
                "redis-server; not in --quick.",
                "rows": queue_rows,
            },
            {
                "title": "k. Results as URLs: b64_json against url",
                "note": "One server with --output_store on a moto_server process (S3 over real HTTP): the same "
                "request answered inline (b64_json) and as presigned URLs (url), alternately, same seeds; the "
                "ratio is the median of the pairs' ratios (goal <= 1.05), time from sending to the parsed answer. "
                "The client's own fetch of the files from the store is shown apart. Needs moto_server (the test "
                "extras); not in --quick.",
                "rows": output_rows,
            },
            {
                "title": "l. Marks: C2PA credentials and the invisible watermark, per file",
                "note": "The marks' cost on the server's own code (in-process, photo-like picture and panning frames): "
                "encoding alone, the watermark (in the pixels, before encoding), signing the C2PA manifest into the "
                "file, and all of it over encoding alone; the watermark's PSNR against the unmarked pixels. Sections "
                "a-k run with --provenance off.",
                "rows": mark_rows["files"],
            },
            {
                "title": "l. Marks: a request end to end",
                "note": "One server with the marks on (the default): a 1024x1024 JPEG request of 4 steps (tiny SDXL) "
                "marked and with `provenance: off` (--allow_unmarked_requests), alternately, same seeds, median of "
                "the pairs' ratios (goal on a GPU at 30 steps: <= 1.05).",
                "rows": mark_rows["request"],
            },
        ],
    }


def speed_options(plan: serving.Plan) -> list[dict[str, Any]]:
    """Each speed option on the tiny SDXL, CPU."""
    size = plan.sizes[0]
    case = gpu.Case(
        f"tiny SDXL {size}x{size}, {plan.steps} steps",
        "sdxl",
        {"height": size, "width": size, "num_inference_steps": plan.steps},
    )
    # SDXL's options: the caches and the attention backends are FLUX's and Wan's, quantization is for GPUs.
    options = ("eager", "fuse_qkv") if plan is serving.QUICK else gpu.SDXL_CPU_OPTIONS
    rows = gpu.measure((case,), ("cpu",), options, gpu.TINY, runs=max(1, plan.repeats // 2), build_device="cpu")
    drop = ("GPU", "H100", "cache skipped")
    return [{key: value for key, value in row.items() if not any(word in key for word in drop)} for row in rows]


def cpu_chart(results: dict[str, Any], path: Path) -> None:
    """Accelerator busy fraction per size and encoding mode, and encode milliseconds."""
    saturated, encoded = results["sections"][1]["rows"], results["sections"][2]["rows"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{row['size']}\n{row['encoding']}" for row in saturated]
    left.bar(labels, [row["accelerator busy (goal >= 0.97)"] for row in saturated], color="#4a78b0")
    left.axhline(0.97, color="#c0392b", linestyle="--", label="goal 0.97")
    left.set_title("Saturated: accelerator thread busy fraction")
    left.legend()
    left.tick_params(axis="x", labelsize=7)
    right.barh([row["encoding"] for row in encoded], [row["ms"] for row in encoded], color="#6aa84f")
    right.set_xlabel("ms")
    right.set_title("Encoding cost")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def gpu_chart(results: dict[str, Any], path: Path) -> None:
    """Latency per case, device mode and option."""
    rows = [row for row in results["sections"][0]["rows"] if isinstance(row.get("latency (s)"), float)]
    figure, axis = plt.subplots(figsize=(12, max(3, 0.35 * len(rows))))
    labels = [f"{row['case']} | {row['device mode']} | {row['option']}" for row in rows]
    axis.barh(labels, [row["latency (s)"] for row in rows])
    axis.set_xlabel("seconds")
    axis.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the CPU or the GPU benchmarks and write their results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="full-size architectures on CUDA")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (a smoke test)")
    parser.add_argument("--cases", default="", help="GPU: comma-separated case numbers (default: all)")
    parser.add_argument("--modes", default=",".join(gpu.DEVICE_MODES), help="GPU: device modes")
    parser.add_argument("--options", default=",".join(gpu.SPEED_OPTIONS), help="GPU: speed options")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu needs CUDA; this machine has none", file=sys.stderr)
            return 2
        chosen = [int(n) for n in args.cases.split(",") if n] or range(1, len(gpu.CASES) + 1)
        rows = gpu.measure(
            cases=tuple(gpu.CASES[n - 1] for n in chosen),
            modes=tuple(args.modes.split(",")),
            options=tuple(args.options.split(",")),
        )
        sections = [{"title": "Full-size, random weights", "rows": rows}]
        sections.append({"title": "One request on several GPUs (Ulysses)", "rows": parallel.measure()})
        results = {"machine": report.machine(), "sections": sections}
        paths = report.write("gpu", "GPU benchmarks", results, args.out, gpu_chart)
    else:
        results = cpu_results(serving.QUICK if args.quick else serving.Plan())
        paths = report.write("cpu", "CPU benchmarks", results, args.out, cpu_chart)
    print("\n".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
