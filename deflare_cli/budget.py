"""How much memory a job will need, checked before anything large is allocated (issue 15).

No input may make deflare use more than about 2 GB on its own (``--memory-gb``); a larger but
real need (a huge sensor, whole frames of a big one, a long recording encoded at once) gets one
line that says how much it would take and the way round, instead of an allocator traceback or
the kernel's OOM killer.

The constants come from peak resident memory measured with ``/usr/bin/time`` on
``deflare deflare`` of 2,000 events (AMD EPYC, torch 2.13 CPU, OpenVINO 2026.4; the engines
within 10% of each other), rounded up so that the estimate errs on the safe side:
- a process with torch and OpenVINO loaded, 128x128 frames: 405 MB;
- whole frames: 1,378 MB at 480x640 and 3,433 MB at 720x1280, i.e. a forward pass takes about
  6.5 x its first level's float32 activations (3.3 KB per pixel for the default network);
- tiles (4 per pass, 176x176 with their halo): 958-1,088 MB at 480x640, 1,484 MB at 720x1280;
  tiles cut at the sensor's edges come in several shapes, each with buffers of its own;
- a 3000x3000 sensor in tiles: 3.2 GB, of which about 2 GB are voxel windows of 288 MB per
  segment held at once (input, tile counts, prediction, output, the removal arithmetic, and the
  windows read ahead and written behind);
- ``deflare encode`` of one second at 480x640 (491 MB of voxels): 747 MB;
- DensityNet (the default model), whole 720x1280 frames: 660 MB at one segment per pass,
  1,256 MB at four, i.e. 200 MB (6.8 voxel grids) a segment, which the window copies already
  cover; its features are a few images of the frame, not a U-Net's activations (2026-12-08).
"""

from __future__ import annotations

from .errors import InputError
from .settings import ModelSettings, TileSettings

GB = 1e9
PROCESS_BYTES = 600e6  # torch and OpenVINO loaded, with a small window
FRAME_FACTOR = 6.5  # peak bytes of a whole-frame pass / its first level's float32 activations
TILE_FACTOR = 10.0  # the same for a pass over tiles
WINDOW_COPIES = 9  # voxel windows held at once while deflaring
ENCODE_COPIES = 1.2  # an encoded recording, and what writing it adds
DENSITY_COPIES = 2.0  # DensityNet's forward pass, in voxel grids of its input, on top of those


def voxel_bytes(segments: int, num_bins: int, sensor_size: tuple[int, int]) -> float:
    """Bytes of float32 voxels: (segments, bins, H, W)."""
    return 4.0 * segments * num_bins * sensor_size[0] * sensor_size[1]


def activation_bytes(
    model: ModelSettings, batch: int, num_bins: int, height: int, width: int
) -> float:
    """Bytes of the first level's float32 activations for ``batch`` inputs of (bins, H, W),
    scaled up for a network that pools space alone (its deeper levels keep every bin: the
    factors above were measured with time halved too)."""
    first = model.f_maps[0] * voxel_bytes(batch, num_bins, (height, width))
    return first * _all_levels(model, model.pooling == "xyt") / _all_levels(model, True)


def _all_levels(model: ModelSettings, halve_time: bool) -> float:
    """Activations of every level over the first's: each level down has its own features
    (``f_maps``) on a quarter of the pixels, and half the bins where time is halved."""
    return sum(
        features / model.f_maps[0] / 4**level / (2**level if halve_time else 1)
        for level, features in enumerate(model.f_maps)
    )


def deflare_bytes(
    model: ModelSettings,
    num_bins: int,
    sensor_size: tuple[int, int],
    segments_per_window: int,
    tiles: TileSettings | None,
    forward_on_host: bool = True,
) -> float:
    """Peak memory of deflaring a recording on this sensor: whole frames (``tiles`` None) or
    tiles, at most ``tiles.pass_pixels`` of windows per pass. ``forward_on_host``
    False (a GPU): the forward pass's memory is the GPU's, not counted."""
    if not forward_on_host:
        forward = 0.0
    elif model.backbone == "DensityNet" and tiles is None:
        forward = DENSITY_COPIES * voxel_bytes(segments_per_window, num_bins, sensor_size)
    elif model.backbone == "DensityNet":
        forward = DENSITY_COPIES * voxel_bytes(1, num_bins, (1, tiles.pass_pixels))
    elif tiles is None:
        frames = activation_bytes(model, segments_per_window, num_bins, *sensor_size)
        forward = FRAME_FACTOR * frames
    else:
        forward = TILE_FACTOR * activation_bytes(model, 1, num_bins, 1, tiles.pass_pixels)
    window = WINDOW_COPIES * voxel_bytes(segments_per_window, num_bins, sensor_size)
    return PROCESS_BYTES + window + forward


def fit_tiling(
    label: str,
    model: ModelSettings,
    num_bins: int,
    sensor_size: tuple[int, int],
    segments_per_window: int,
    tiles: TileSettings,
    budget_gb: float,
    forward_on_host: bool = True,
) -> TileSettings:
    """The tiling to deflare this recording with inside the budget: ``auto`` becomes ``tiles``
    where whole frames would not fit, with fewer pixels per pass if need be (down to one tile
    and its halo); a need no tiling can meet is refused."""
    sides = "x".join(map(str, sensor_size))
    way_round = f"allow more with --memory-gb (now {budget_gb:g})"

    def need(tiling: TileSettings | None) -> float:
        return deflare_bytes(
            model, num_bins, sensor_size, segments_per_window, tiling, forward_on_host
        )

    budget = budget_gb * GB
    if tiles.mode != "tiles" and need(None) <= budget:
        return tiles
    if tiles.mode == "frame":
        raise InputError(
            label,
            f"whole {sides} frames need about {need(None) / GB:.1f} GB, over the memory budget: "
            f"run tiles (--tiling auto) or {way_round}",
        )
    pixels, least = tiles.pass_pixels, (tiles.size + 2 * (tiles.halo or 0)) ** 2
    while pixels > least and need(tiles.model_copy(update={"pass_pixels": pixels})) > budget:
        pixels = max(pixels // 2, least)  # fewer pixels per pass: slower, but inside the budget
    fitted = tiles.model_copy(update={"mode": "tiles", "pass_pixels": pixels})
    if need(fitted) > budget_gb * GB:
        smaller = " or fewer segments per pass (--batch-size)" if segments_per_window > 1 else ""
        raise InputError(
            label,
            f"deflaring a {sides} sensor needs about {need(fitted) / GB:.1f} GB, over the memory "
            f"budget: {way_round}{smaller}",
        )
    return fitted


def check_encode(
    label: str, segments: int, num_bins: int, sensor_size: tuple[int, int], budget_gb: float
) -> None:
    """Refuse to encode a recording whose voxels (held whole) would not fit the budget."""
    need = PROCESS_BYTES + ENCODE_COPIES * voxel_bytes(segments, num_bins, sensor_size)
    if need > budget_gb * GB:
        raise InputError(
            label,
            f"its {segments:,} segments of {sensor_size[0]}x{sensor_size[1]} voxels need about "
            f"{need / GB:.1f} GB, over the memory budget: encode a part (--time-window), "
            f"deflare the events directly (which streams), or allow more with --memory-gb "
            f"(now {budget_gb:g})",
        )
