"""Where a GPU's time goes in the network alone, and which arithmetic runs it fastest (issue 13).

    python benchmarks/gpu_network.py [--batch 4] [--output FILE.md] [--compile]

On an H200 the default model ran whole 1280x720 segments at about 50-60 ms each, with the
network 89% of the wall (BENCHMARKS_GPU.md, 2026-12-04): far above what its memory traffic
needs, and 2.5-3x too slow for the 5x real-time goal. This times the forward pass alone on
random voxels of (batch, 1, 8, 720, 1280) for the shipped size and the E-DeflareNet size, in
each variant below (median of ``--repeats`` after warm-up, CUDA-synchronised), and prints the
profiler's costliest kernels for the variant ``deflare`` runs today (bf16 autocast,
channels-last 3D). One call answers which change to make in ``engines.TorchEngine`` next. On a
CPU (``--device cpu``, small ``--height``/``--width``) it runs too, for testing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from deflare_cli.io import atomic_output
from deflare_cli.model import TrueResidualUNet3D, count_parameters
from deflare_cli.settings import ModelSettings

SIZES = {
    "default (16, 32, 64)": (16, 32, 64),
    "E-DeflareNet (32, 64, 128, 256)": (32, 64, 128, 256),
}
SEGMENT_MS = 20.0


def variants(device: torch.device, compile_too: bool) -> dict[str, dict]:
    """name -> how to run: autocast dtype, memory format, cuDNN autotuning, TF32, compile."""
    half = [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if device.type == "cuda" else [])
    table = {"fp32": {}, "fp32, channels-last": {"channels_last": True}}
    if device.type == "cuda":
        table["tf32, channels-last, cudnn.benchmark"] = {"channels_last": True, "tf32": True,
                                                        "benchmark": True}  # fmt: skip
    for name, dtype in half:
        table[f"{name} autocast"] = {"dtype": dtype}
        today = " (deflare today)" if name == "bf16" else ""
        table[f"{name} autocast, channels-last{today}"] = {"dtype": dtype, "channels_last": True}
        table[f"{name} weights and input, channels-last"] = {"cast": dtype, "channels_last": True}
        if device.type == "cuda":
            table[f"{name} autocast, channels-last, cudnn.benchmark"] = {
                "dtype": dtype, "channels_last": True, "benchmark": True}  # fmt: skip
    if compile_too:
        table["bf16 autocast, channels-last, torch.compile"] = {
            "dtype": torch.bfloat16, "channels_last": True, "compile": True}  # fmt: skip
    return table


def runner(model: torch.nn.Module, batch: torch.Tensor, how: dict) -> Callable[[], None]:
    """A no-argument forward pass set up as ``how`` says (the model is copied as needed)."""
    torch.backends.cudnn.benchmark = how.get("benchmark", False)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = how.get("tf32", False)
    memory_format = torch.channels_last_3d if how.get("channels_last") else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=memory_format)  # .to() works in place
    batch = batch.contiguous(memory_format=memory_format)
    if "cast" in how:
        model, batch = model.to(how["cast"]), batch.to(how["cast"])
    if how.get("compile"):
        model = torch.compile(model)
    dtype = how.get("dtype")
    context = (lambda: torch.autocast(batch.device.type, dtype=dtype)) if dtype else nullcontext

    def forward() -> None:
        with torch.inference_mode(), context():
            model(batch)

    return forward


def timed(forward: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of one call, after three warm-up calls."""
    times = []
    for k in range(3 + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def top_kernels(forward: Callable[[], None], device: torch.device, rows: int = 12) -> str:
    """The profiler's table of the costliest operations of one forward pass."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    forward()
    with torch.profiler.profile(activities=activities) as profile:
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return profile.key_averages().table(sort_by=key, row_limit=rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=4, help="segments per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or give --device cpu", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"Network forward alone, random voxels ({args.batch}, 1, 8, {args.height}, "
             f"{args.width}), {name}, torch {torch.__version__}; x real time = "
             f"{SEGMENT_MS:g} ms of recording per segment / ms per segment.", "",
             "| model | variant | ms per segment | x real time |",
             "|---|---|---:|---:|"]  # fmt: skip
    profiles = []
    for label, f_maps in SIZES.items():
        model = TrueResidualUNet3D(ModelSettings(f_maps=list(f_maps))).to(device).eval()
        batch = torch.randint(-2, 3, (args.batch, 1, 8, args.height, args.width), device=device)
        batch = batch.float()
        for variant, how in variants(device, args.compile).items():
            seconds = timed(runner(model, batch, how), device, args.repeats) / args.batch
            ms = 1000 * seconds
            lines.append(f"| {label}, {count_parameters(model):,} parameters | {variant} | "
                         f"{ms:.2f} | {SEGMENT_MS / ms:.2f} |")  # fmt: skip
            print(lines[-1], flush=True)
        today = {"dtype": torch.bfloat16, "channels_last": True}
        profiles.append(f"{label}, bf16 autocast, channels-last:\n\n```\n"
                        f"{top_kernels(runner(model, batch, today), device)}\n```")  # fmt: skip
    text = "\n".join(lines) + "\n\n" + "\n\n".join(profiles) + "\n"
    print(text)
    if args.output is not None:
        with atomic_output(args.output) as temporary:
            temporary.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
