"""deflare benchmarks: `make bench` runs them and writes the table to BENCHMARKS.md.

Each benchmark runs in a fresh subprocess so that its peak memory (VmHWM) is its own.
Timings are the best of a few repeats; throughput is in millions of events per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from deflare_cli.codec import events_to_voxel, voxel_to_events
from deflare_cli.events import Events, make_events
from deflare_cli.io import atomic_output, read_events, write_events

SENSOR = (480, 640)
BINS = 8


def synthetic_events(count: int, seed: int = 0) -> Events:
    """`count` random events inside one 20 ms segment of a 480x640 sensor."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 20_000, count))
    return make_events(
        t, rng.integers(0, SENSOR[1], count), rng.integers(0, SENSOR[0], count),
        rng.integers(0, 2, count), SENSOR,
    )  # fmt: skip


def best_of(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def np_add_at(events: Events) -> np.ndarray:
    """The obvious numpy encoder, as the reference speed."""
    grid = np.zeros((1, BINS) + SENSOR, np.float32)
    global_bin = (events.t - events.t[0]) // (20_000 // BINS)
    np.add.at(grid, (global_bin // BINS, global_bin % BINS, events.y, events.x), events.p)
    return grid


def bench_encode(count: int) -> dict:
    events = synthetic_events(count)
    # Memory first, before any other work has grown the heap that later runs would reuse.
    baseline = rss_bytes("VmRSS")
    reset_peak()
    voxels = events_to_voxel(events)
    extra = rss_bytes("VmHWM") - baseline
    assert np.array_equal(voxels.data.numpy(), np_add_at(events)), "encoders disagree"
    repeats = 3 if count <= 1_000_000 else 2
    reference = best_of(lambda: np_add_at(events), 1 if count > 1_000_000 else 2)
    seconds = best_of(lambda: events_to_voxel(events), repeats)
    event_bytes = sum(getattr(events, k).nbytes for k in "txyp")
    voxel_bytes = voxels.data.numel() * 4
    return {
        "name": f"encode {count / 1e6:g} M events -> (8, 480, 640)",
        "seconds": seconds,
        "mevents_per_s": count / seconds / 1e6,
        "np_add_at_mevents_per_s": count / reference / 1e6,
        "speedup_vs_np_add_at": reference / seconds,
        "peak_bytes": event_bytes + extra,
        "events_plus_voxels_bytes": event_bytes + voxel_bytes,
    }


def bench_decode(count: int) -> dict:
    voxels = events_to_voxel(synthetic_events(count))
    total = int(voxels.data.abs().sum())
    seconds = best_of(lambda: voxel_to_events(voxels, seed=0), 3)
    return {
        "name": f"decode (8, 480, 640) -> {total / 1e6:.2f} M events",
        "seconds": seconds,
        "mevents_per_s": total / seconds / 1e6,
    }


def bench_hdf5(count: int, compression: str) -> list[dict]:
    from deflare_cli.settings import WriteSettings

    events = synthetic_events(count)
    megabytes = sum(getattr(events, k).nbytes for k in "txyp") / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.h5"
        settings = WriteSettings(compression=compression)
        write_seconds = best_of(lambda: write_events(path, events, settings), 3)
        read_seconds = best_of(lambda: read_events(path), 3)
        size_mb = path.stat().st_size / 1e6
    for verb, seconds in (("write", write_seconds), ("read", read_seconds)):
        rows.append({
            "name": f"HDF5 {verb} {count / 1e6:g} M events ({compression}, {size_mb:.0f} MB file)",
            "seconds": seconds,
            "mevents_per_s": count / seconds / 1e6,
            "mb_per_s": megabytes / seconds,
        })  # fmt: skip
    return rows


def bench_train_step(
    batch: int, bins_hw: tuple[int, int, int], steps: int, keep_freed: bool = True
) -> list[dict]:
    """Optimizer steps of the default model (f_maps 16,32,64) on CPU, as the trainer does them
    (``keep_freed``: glibc keeps freed memory, ``deflare_cli.devices.freed_memory_kept``)."""
    from deflare_cli.devices import freed_memory_kept

    cpu = torch.device("cpu")
    with freed_memory_kept(cpu) if keep_freed else contextlib.nullcontext():
        row = _train_steps(batch, bins_hw, steps)
    if not keep_freed:
        row["name"] += ", glibc's default allocator (before 2026-12-05)"
    return [row]


def _train_steps(batch: int, bins_hw: tuple[int, int, int], steps: int) -> dict:
    from deflare_cli.devices import autocast_dtype
    from deflare_cli.model import TrueResidualUNet3D

    torch.manual_seed(0)
    model = TrueResidualUNet3D()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    assert autocast_dtype("auto", torch.device("cpu")) is None  # fp32 on CPU
    shape = (batch, 1, *bins_hw)
    inputs = torch.randint(-2, 3, shape).float() * (torch.rand(shape) < 0.05)
    targets = inputs * (torch.rand(shape) < 0.7)
    # as the trainer does: channels-last 3D memory
    model = model.to(memory_format=torch.channels_last_3d)
    inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    targets = targets.contiguous(memory_format=torch.channels_last_3d)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    baseline = rss_bytes("VmRSS")
    reset_peak()
    step()  # warm-up, and the memory peak
    extra = rss_bytes("VmHWM") - baseline
    seconds = best_of(step, steps)
    return {
        "name": f"train step CPU fp32, batch {batch} x {bins_hw}",
        "seconds": seconds,
        "samples_per_s": batch / seconds,
        "peak_bytes": extra,
    }


def bench_infer(count: int, mode: str) -> list[dict]:
    """`deflare deflare` on a 100 ms 640x480 file: seconds per stage and the real-time factor.

    The model is the default architecture with a randomly perturbed last layer, so that preserve
    mode has real edits to make (an untrained model would change nothing); the row names how
    many events came out.
    """
    from deflare_cli.checkpoint import CHECKPOINT_FORMAT
    from deflare_cli.infer import STAGES, deflare
    from deflare_cli.model import TrueResidualUNet3D
    from deflare_cli.settings import CodecSettings, InferSettings, ModelSettings, RuntimeSettings

    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 100_000, count))
    events = make_events(
        t, rng.integers(0, SENSOR[1], count), rng.integers(0, SENSOR[0], count),
        rng.integers(0, 2, count), SENSOR,
    )  # fmt: skip
    torch.manual_seed(0)
    model = TrueResidualUNet3D()
    with torch.no_grad():
        model.backbone.final_conv.weight.normal_(0, 0.1)
    settings = {"model": ModelSettings().model_dump(mode="json"),
                "codec": CodecSettings().model_dump(mode="json")}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source, checkpoint = Path(folder) / "in.h5", Path(folder) / "model.pt"
        write_events(source, events)
        torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "settings": settings},
                   checkpoint)  # fmt: skip
        infer = InferSettings(
            checkpoint=checkpoint, output_mode=mode, runtime=RuntimeSettings(device="cpu")
        )
        [result] = deflare(source, Path(folder) / "out.h5", infer)
    total = result.seconds
    row = {
        "name": f"deflare {count / 1e6:g} M events / 100 ms -> {result.output_events / 1e6:.2f} M, "
        f"{mode}, CPU fp32 batch 1",
        "seconds": total,
        "realtime_factor": result.duration_s / total,
        "process_peak_bytes": rss_bytes("VmHWM"),
        "non_model_share": 1 - result.stage_seconds["model"] / total,
    }
    row.update({f"stage_{stage}": result.stage_seconds[stage] for stage in STAGES})
    return [row]


def bench_synth(pairs: int) -> list[dict]:
    """Seconds per 100 ms pair on one core (mean over pairs), events per pair: 640x480 pairs of
    the default recipe (all regimes) and 1280x720 night pairs (issue 12: no dearer), also with
    every scene lit by mains light (``--scene-flicker 1``)."""
    from deflare_cli.settings import SynthSettings
    from deflare_cli.synth import synthesise_pair

    torch.set_num_threads(1)
    cases = {
        "640x480, default regimes": SynthSettings(out_dir=Path("unused"), seed=0),
        "1280x720, night": SynthSettings(
            out_dir=Path("unused"), seed=0, sensor_sizes=((720, 1280),), regimes={"night": 1.0}
        ),
        "1280x720, night, lit by mains light": SynthSettings(
            out_dir=Path("unused"),
            seed=0,
            sensor_sizes=((720, 1280),),
            regimes={"night": 1.0},
            scene_flicker=1.0,
        ),
    }
    rows = []
    for label, settings in cases.items():
        seconds, inputs, targets = [], [], []
        for index in range(pairs):
            started = time.perf_counter()
            pair, _ = synthesise_pair(settings, index)
            seconds.append(time.perf_counter() - started)
            inputs.append(len(pair.flare_input))
            targets.append(len(pair.clean_target))
        rows.append({
            "name": f"synth 100 ms pair {label}, 1 core (mean of {pairs}, slowest "
            f"{max(seconds):.1f} s; {np.mean(inputs) / 1e6:.3f} M input, "
            f"{np.mean(targets) / 1e6:.3f} M target events)",
            "seconds": float(np.mean(seconds)),
            "process_peak_bytes": rss_bytes("VmHWM"),
        })  # fmt: skip
    return rows


def bench_visualize(count: int) -> list[dict]:
    """All pictures of a 100 ms 640x480 file with ``count`` events."""
    from deflare_cli.settings import VisualizeSettings
    from deflare_cli.viz import visualize_file

    rng = np.random.default_rng(0)
    events = make_events(
        np.sort(rng.integers(0, 100_000, count)), rng.integers(0, SENSOR[1], count),
        rng.integers(0, SENSOR[0], count), rng.integers(0, 2, count), SENSOR,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "events.h5"
        write_events(source, events)
        seconds = best_of(lambda: visualize_file(source, Path(folder), VisualizeSettings()), 2)
    return [{"name": f"visualize {count / 1e6:g} M events (4 pictures)", "seconds": seconds}]


# ../shared/realdata beside the checkout; DEFLARE_REALDATA names another place (a GPU machine).
REALDATA = Path(
    os.environ.get("DEFLARE_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata")
)
NIGHT_SENSOR = (720, 1280)
NIGHT_SOURCE = REALDATA / "evt3_dim_indoor.h5"  # the real part of night_stream, where present
NIGHT_NOISE_PER_S = 3_000  # stray events over the frame: ~65% of 128 px tiles get one per 20 ms


def night_stream(seconds: float, seed: int = 0) -> Iterator[Events]:
    """A sparse 1280x720 stream like the kept night recording (0.16 M events/s, 0.3% of pixels
    active per 20 ms), in 2 s pieces: the real dim indoor EVT3 recording (0.17 M events/s)
    placed in the middle of a 1280x720 frame, plus stray noise over the whole frame. Without
    ../shared/realdata, noise alone at the same rate."""
    rng = np.random.default_rng(seed)
    real = read_events(NIGHT_SOURCE) if NIGHT_SOURCE.exists() else None
    for start in range(0, round(seconds * 1e6), 2_000_000):
        length = min(2_000_000, round(seconds * 1e6) - start)
        parts = []
        if real is not None:
            piece = real.time_slice(0, length)
            parts.append((piece.t + start, piece.x + 320, piece.y + 120, piece.p))
        noise = rng.poisson((NIGHT_NOISE_PER_S if real is not None else 170_000) * length / 1e6)
        parts.append((start + rng.integers(0, length, noise), rng.integers(0, 1280, noise),
                      rng.integers(0, 720, noise), rng.choice([-1, 1], noise)))  # fmt: skip
        t, x, y, p = (np.concatenate(column) for column in zip(*parts, strict=True))
        order = np.argsort(t, kind="stable")
        yield make_events(t[order], x[order], y[order], p[order], NIGHT_SENSOR)


def write_stream(path: Path, pieces: Iterator[Events], sensor_size: tuple[int, int]) -> int:
    from deflare_cli.io import EventFileWriter

    with EventFileWriter(path, sensor_size) as writer:
        for piece in pieces:
            writer.append(piece)
        writer.finish()
        return writer.count


def engine_recording(name: str, folder: Path) -> Path:
    """The recordings the engines are compared on: a dense synthetic 640x480 pair input
    (100 ms) and the first 200 ms of the sparse 1280x720 night-like stream."""
    path = folder / f"{name}.h5"
    if name == "dense":
        from deflare_cli.settings import SynthSettings
        from deflare_cli.synth import synthesise_pair

        day = SynthSettings(out_dir=folder, seed=0, regimes={"day": 1.0})
        pair, _ = synthesise_pair(day, 0)
        write_events(path, pair.flare_input)
    else:
        write_stream(path, night_stream(0.2), NIGHT_SENSOR)
    return path


# (engine, tiling, precision). The first is deflare 0.1's path, the baseline of every ratio: torch
# fp32 on whole frames, also where the CPU computes bf16 (auto: bf16 there, fp32 elsewhere).
ENGINE_CONFIGS = [("torch", "frame", "fp32"), ("torch", "auto", "auto"),
                  ("openvino", "frame", "auto"), ("openvino", "auto", "fp32"),
                  ("openvino", "auto", "auto")]  # fmt: skip
# The engines are compared on the U-Net that was the default model until 2026-12-07 (issue 13's
# figures): the default model since, fitted trees, runs in torch alone, in its own rows.
CANDIDATES = Path(__file__).resolve().parents[1] / "candidates"
ENGINE_CHECKPOINT = CANDIDATES / "unet_mask_2026-11-29.calibrated.pt"
RECORDING_NAMES = {
    "dense": "dense synthetic 640x480 (100 ms, 1.8 M events)",
    "night": "sparse 1280x720 night-like (first 200 ms: 15 k events)",
}


def bench_engine(
    recording: str,
    engine: str,
    tiling: str,
    precision: str = "auto",
    min_events: int | None = None,
    checkpoint: Path | None = ENGINE_CHECKPOINT,
) -> list[dict]:
    """deflare with one model (default: the U-Net of :data:`ENGINE_CHECKPOINT`; None: the
    shipped default model), engine, tiling and precision, on one recording (``min_events``:
    the tiles' --tile-min-events, else the default)."""
    from deflare_cli.infer import deflare, load_deflarer
    from deflare_cli.settings import InferSettings, RuntimeSettings, TileSettings

    with tempfile.TemporaryDirectory() as folder:
        source = engine_recording(recording, Path(folder))
        # whole 1280x720 frames need about 3.4 GB, over the default --memory-gb: allowed here,
        # as deflare 0.1 ran them (the machine has the memory); the other rows keep the default
        memory = {"memory_gb": 8.0} if tiling == "frame" else {}
        tiles = TileSettings(mode=tiling, **({"min_events": min_events} if min_events else {}))
        runtime = RuntimeSettings(device="cpu", engine=engine, precision=precision)
        settings = InferSettings(checkpoint=checkpoint, runtime=runtime, tiles=tiles, **memory)
        load_deflarer(settings)  # converts (once per checkpoint) and compiles (once per process)
        reset_peak()
        [result] = deflare(source, Path(folder) / "out.h5", settings)
    return [{
        "name": f"{RECORDING_NAMES[recording]}: "
        + ("the U-Net, " if checkpoint else "**the default model (trees)**, ")
        + f"{engine}, {tiling}"
        + (f", --precision {precision}" if precision != "auto" else "")
        + (f", --tile-min-events {min_events}" if min_events else ""),
        "baseline": (engine, tiling, precision) == ENGINE_CONFIGS[0] and checkpoint is not None,
        "group": recording, "engine": result.engine, "tiling": tiling,
        "seconds": result.seconds, "realtime_factor": result.duration_s / result.seconds,
        "segment_seconds": result.seconds / result.segments,
        "kept": result.output_events / result.input_events,
        "process_peak_bytes": rss_bytes("VmHWM"),
    }]  # fmt: skip


class _Enough(Exception):
    pass


def bench_stream_memory(minutes: float, processed_s: float) -> list[dict]:
    """Peak memory of deflaring a long sparse 1280x720 recording read as a stream.

    The whole file is written and opened; the run stops after ``processed_s`` of it (memory
    does not grow with the windows: the row says the peak at half way too)."""
    from deflare_cli.infer import deflare
    from deflare_cli.settings import InferSettings, RuntimeSettings

    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "long.h5"
        count = write_stream(source, night_stream(minutes * 60), NIGHT_SENSOR)
        windows = round(processed_s * 50)

        def stop_after(stage: str, done: int, total: int, detail: str = "") -> None:
            if done == windows // 2:
                peaks["half"] = rss_bytes("VmHWM")
            if done >= windows:
                raise _Enough

        reset_peak()
        started = time.perf_counter()
        try:
            deflare(source, Path(folder) / "out.h5",
                    InferSettings(runtime=RuntimeSettings(device="cpu")), stop_after)  # fmt: skip
        except _Enough:
            pass
        seconds = time.perf_counter() - started
    return [{
        "name": f"deflare a {minutes:g}-minute sparse 1280x720 recording ({count / 1e6:.0f} M "
        f"events) as a stream, first {processed_s:g} s (peak at half way: "
        f"{peaks.get('half', 0) / 2**20:.0f} MiB)",
        "seconds": seconds, "process_peak_bytes": rss_bytes("VmHWM"),
    }]  # fmt: skip


BENCHMARKS: dict[str, Callable[[], list[dict]]] = {
    "encode-1M": lambda: [bench_encode(1_000_000)],
    "encode-10M": lambda: [bench_encode(10_000_000)],
    "decode-1M": lambda: [bench_decode(1_000_000)],
    "hdf5-none": lambda: bench_hdf5(10_000_000, "none"),
    "hdf5-zstd": lambda: bench_hdf5(10_000_000, "zstd"),
    "synth": lambda: bench_synth(6),
    "train-crop": lambda: bench_train_step(4, (8, 128, 128), 3),
    "train-recipe": lambda: bench_train_step(16, (8, 128, 128), 3),
    "train-recipe-default-malloc": lambda: bench_train_step(16, (8, 128, 128), 3, False),
    "train-full": lambda: bench_train_step(1, (8, 480, 640), 1),
    "visualize": lambda: bench_visualize(1_000_000),
    "infer-preserve": lambda: bench_infer(1_000_000, "preserve"),
    "infer-resample": lambda: bench_infer(1_000_000, "resample"),
    **{
        f"engine-{recording}-{engine}-{tiling}-{precision}": (
            lambda recording=recording, config=(engine, tiling, precision): bench_engine(
                recording, *config
            )
        )
        for recording in RECORDING_NAMES
        for engine, tiling, precision in ENGINE_CONFIGS
    },
    "engine-night-openvino-auto-min32": lambda: bench_engine(
        "night", "openvino", "auto", min_events=32
    ),
    **{
        f"engine-{recording}-default": (
            lambda recording=recording: bench_engine(recording, "torch", "auto", checkpoint=None)
        )
        for recording in RECORDING_NAMES
    },
    "stream-10min": lambda: bench_stream_memory(10, 0.4),
}


def run_isolated(name: str) -> list[dict]:
    """Run one benchmark in a fresh interpreter and return its rows."""
    output = subprocess.run(
        [sys.executable, __file__, "--one", name], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def machine() -> str:
    """The CPU, its widest vector unit (figures differ between AVX2 and bf16 CPUs), versions."""
    from deflare_cli.engines import cpu_flags

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags, widest = cpu_flags(), ("amx_bf16", "avx512_bf16", "avx512f", "avx2")
    units = [name.upper().replace("_", "-") for name in widest if name in flags]
    if units:
        cpu += f" ({', '.join(units)})"
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}"
    )


def gpu_line() -> str:
    """Where the GPU figures are: `benchmarks/gpu.py`, run on a GPU machine."""
    present = "none here"
    if torch.cuda.is_available():
        present = f"{torch.cuda.get_device_name()} present"
    return f"BENCHMARKS_GPU.md, by `python benchmarks/gpu.py` on a GPU machine ({present})."


def table(rows: list[dict]) -> str:
    header = [
        "benchmark", "seconds", "M events/s", "samples/s", "vs np.add.at", "MB/s",
        "peak memory", "2 x (events + voxels)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for row in (row for row in rows if "group" not in row):
        cells = [
            row["name"],
            f"{row['seconds']:.3f}",
            _cell(row, "mevents_per_s", "{:.0f}"),
            _cell(row, "samples_per_s", "{:.2f}"),
            f"{row['speedup_vs_np_add_at']:.1f}x ({row['np_add_at_mevents_per_s']:.0f} M/s)"
            if "speedup_vs_np_add_at" in row
            else "",
            _cell(row, "mb_per_s", "{:.0f}"),
            _memory(row),
            f"{2 * row['events_plus_voxels_bytes'] / 2**20:.0f} MiB"
            if "events_plus_voxels_bytes" in row
            else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    stage_rows = [row for row in rows if "non_model_share" in row]
    if stage_rows:
        lines += [
            "",
            "Inference per stage (seconds) and real-time factor (recording s / wall s):",
            "",
        ]
        stages = [key.removeprefix("stage_") for key in stage_rows[0] if key.startswith("stage_")]
        lines.append("| run | " + " | ".join(stages) + " | total | x real time | all but model |")
        lines.append("|---" + "|---:" * (len(stages) + 3) + "|")
        for row in stage_rows:
            cells = [f"{row['stage_' + stage]:.3f}" for stage in stages]
            cells += [f"{row['seconds']:.2f}", f"{row['realtime_factor']:.4f}",
                      f"{100 * row['non_model_share']:.1f}%"]  # fmt: skip
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + engine_table([row for row in rows if "group" in row]))


def engine_table(rows: list[dict]) -> list[str]:
    """Engines and tilings side by side, as speed ratios to torch on whole frames (the path of
    deflare 0.1) on the same recording in the same run."""
    if not rows:
        return []
    lines = [
        "",
        "Inference engines and tiling, batch 1: the U-Net that was the default model until "
        "2026-12-07 (`candidates/`) in every engine, and the default model since (gradient-"
        "boosted trees, torch only). Speed: against the U-Net in torch fp32 on whole frames, the "
        "path of deflare 0.1, measured in the same run:",
        "",
        "| recording: engine, tiling | engine as reported | s per 20 ms | x real time | speed "
        "| kept | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next((r for r in rows if r["group"] == row["group"] and r["baseline"]), row)
        lines.append(
            f"| {row['name']} | {row['engine']} | {row['segment_seconds']:.3f} | "
            f"{row['realtime_factor']:.4f} | {base['seconds'] / row['seconds']:.1f}x | "
            f"{100 * row['kept']:.1f}% | {_memory(row)} |"
        )
    return lines


def _memory(row: dict) -> str:
    if "peak_bytes" in row:
        return f"{row['peak_bytes'] / 2**20:.0f} MiB"
    if "process_peak_bytes" in row:
        return f"{row['process_peak_bytes'] / 2**20:.0f} MiB (process)"
    return ""


def _cell(row: dict, key: str, pattern: str) -> str:
    return pattern.format(row[key]) if key in row else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, help="write the table to this Markdown file")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run these only")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(BENCHMARKS[args.one]()))
        return
    rows: list[dict] = []
    for name in args.only or BENCHMARKS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(run_isolated(name))
    text = (
        "# deflare benchmarks\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` on: {machine()}.\n\n"
        "Encode target: at least 4x `np.add.at` measured in the same run; peak memory of the\n"
        "encoding process at most twice the events plus voxels. Peak memory of a training step is\n"
        "what the step adds to the process (model, activations, gradients, Adam state).\n"
        f"GPU figures: {gpu_line()}\n\n"
        f"{table(rows)}\n"
    )
    print(text)
    if args.output:
        with atomic_output(args.output) as temp_path:  # a run cut off keeps the table before
            temp_path.write_text(text)


if __name__ == "__main__":
    main()
