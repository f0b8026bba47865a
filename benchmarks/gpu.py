"""Real-time factor of deflare on a CUDA GPU at 1280x720 (issue 13).

    python benchmarks/gpu.py [--seconds 2] [--output FILE.md]

Deflares the sparse 1280x720 night-like stream of ``benchmarks/run.py`` (``night_stream``) and a
dense 1280x720 stream (a synthetic 640x480 input pair tiled 2x2 and stretched to 1280x720 is not
physical, so the dense case is uniform noise at 10 M events/s instead) with three models: the
shipped default model (gradient-boosted trees since 2026-12-07), the U-Net shipped before it
(``run.ENGINE_CHECKPOINT``) and an E-DeflareNet-sized U-Net (f_maps 32, 64, 128, 256, random
weights: speed does not depend on them). Each case runs once to warm up (CUDA kernels, autotuning)
and is then timed end to end: reading, encoding, the model, decoding and writing. Real-time factor
= recording seconds / wall seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deflare_cli.checkpoint import CHECKPOINT_FORMAT, model_from_checkpoint, save_checkpoint
from deflare_cli.events import make_events
from deflare_cli.infer import DEFAULT_CHECKPOINT, deflare
from deflare_cli.io import atomic_output
from deflare_cli.model import TrueResidualUNet3D, count_parameters
from deflare_cli.settings import (
    CodecSettings,
    InferSettings,
    ModelSettings,
    RuntimeSettings,
    TileSettings,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    ENGINE_CHECKPOINT,
    NIGHT_SENSOR,
    NIGHT_SOURCE,
    machine,
    night_stream,
    write_stream,
)

E_DEFLARENET = (32, 64, 128, 256)
# whole 1280x720 frames need ~5 GB of host memory per batch, over the 2 GB default budget (set
# for laptops); a GPU server has far more
HOST_MEMORY_GB = 32.0


def dense_stream(seconds: float, rate: float = 10e6, seed: int = 0):
    """Uniform noise over 1280x720 at ``rate`` events/s, in 1 s pieces."""
    rng = np.random.default_rng(seed)
    height, width = NIGHT_SENSOR
    for start in range(0, round(seconds * 1e6), 1_000_000):
        count = round(rate)
        t = np.sort(start + rng.integers(0, 1_000_000, count))
        x, y = rng.integers(0, width, count), rng.integers(0, height, count)
        yield make_events(t, x, y, rng.choice([-1, 1], count), NIGHT_SENSOR)


def random_model(folder: Path, f_maps: tuple[int, ...]) -> Path:
    """A checkpoint of the given size with random weights (speed does not depend on them)."""
    settings = ModelSettings(f_maps=list(f_maps))
    model = TrueResidualUNet3D(settings)
    path = folder / f"random_{'_'.join(map(str, f_maps))}.pt"
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "settings": {"model": settings.model_dump(mode="json"),
                     "codec": CodecSettings().model_dump(mode="json")},
    })  # fmt: skip
    return path


def measure(source: Path, seconds: float, checkpoint: Path | None, tiling: str, batch: int):
    settings = InferSettings(
        checkpoint=checkpoint,
        batch_size=batch,
        overwrite=True,
        memory_gb=HOST_MEMORY_GB,
        runtime=RuntimeSettings(device="cuda"),
        tiles=TileSettings(mode=tiling, pass_pixels=TileSettings().pass_pixels * batch),
    )
    with tempfile.TemporaryDirectory() as folder:
        deflare(source, Path(folder) / "warmup.h5", settings)
        torch.cuda.synchronize()
        start = time.perf_counter()
        [result] = deflare(source, Path(folder) / "out.h5", settings)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return {
        "wall": wall,
        "realtime": seconds / wall,
        "engine": result.engine,
        "model_share": result.stage_seconds.get("model", float("nan")) / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="recording length")
    parser.add_argument("--batch", type=int, default=16, help="segments per forward pass")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--streams",
        choices=["both", "sparse", "dense"],
        default="both",
        help="which recordings to time (sparse alone takes a third of the time)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    lines = [
        f"GPU: {torch.cuda.get_device_name()}; host {machine()}. Recordings 1280x720, "
        f"{args.seconds:g} s; {args.batch} segments per forward pass; warm (second) run timed.",
        "",
        "| recording | model (f_maps) | parameters | tiling | engine | wall s | x real time "
        "| model share |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        models = {
            "shipped default (trees)": DEFAULT_CHECKPOINT,
            "U-Net shipped until 2026-12-07": ENGINE_CHECKPOINT,
            "E-DeflareNet size, random weights": random_model(folder, E_DEFLARENET),
        }
        # without the real recording, the night stream is stray noise alone, in which no tile
        # holds enough events to run (the model share is then 0%): name which one was timed
        night = (
            "sparse night, 0.17 M ev/s"
            if NIGHT_SOURCE.exists()
            else "noise alone, 0.17 M ev/s (no real recording here)"
        )
        streams = {}  # generators: a stream left out is never made
        if args.streams in ("both", "sparse"):
            streams[night] = night_stream(args.seconds)
        if args.streams in ("both", "dense"):
            streams["dense noise, 10 M ev/s"] = dense_stream(args.seconds)
        for name, stream in streams.items():
            source = folder / f"{name.split(',')[0].replace(' ', '_')}.h5"
            write_stream(source, stream, NIGHT_SENSOR)
            for model_name, checkpoint in models.items():
                model, _codec = model_from_checkpoint(checkpoint)
                for tiling in ("frame", "tiles"):
                    row = measure(source, args.seconds, checkpoint, tiling, args.batch)
                    lines.append(
                        f"| {name} | {model_name} {tuple(model.settings.f_maps)} | "
                        f"{count_parameters(model):,} | {tiling} | "
                        f"{row['engine']} | {row['wall']:.2f} | {row['realtime']:.2f} | "
                        f"{row['model_share']:.0%} |"
                    )
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with atomic_output(args.output) as temp_path:
            temp_path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
