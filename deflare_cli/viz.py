"""Pictures of events and voxels (headless, matplotlib Agg).

Conventions: positive events red, negative blue; axes in pixels and milliseconds; voxel bins on
one shared, zero-centred diverging colour scale so that bins compare at a glance.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, and deterministic output

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .codec import events_to_voxel, voxel_to_events  # noqa: E402
from .errors import DeflareError  # noqa: E402
from .events import Events, pixel_index, window_us  # noqa: E402
from .io import atomic_output, make_folder, read_events, read_voxels  # noqa: E402
from .settings import ReadSettings, VisualizeSettings  # noqa: E402

POSITIVE = (0.85, 0.1, 0.1)
NEGATIVE = (0.1, 0.25, 0.85)
MAX_SCATTER_POINTS = 30_000


def event_frame(events: Events) -> np.ndarray:
    """(H, W, 3) RGB image: white background, red where net polarity > 0, blue where < 0."""
    height, width = events.sensor_size
    net = np.zeros(height * width, np.float32)
    np.add.at(net, pixel_index(events), events.p)
    net = net.reshape(height, width)
    image = np.ones((height, width, 3), np.float32)
    image[net > 0] = POSITIVE
    image[net < 0] = NEGATIVE
    return image


def plot_event_frames(events: Events, path: Path, num_windows: int = 4, title: str = "") -> Path:
    """Red/blue event frames over ``num_windows`` successive equal time windows."""
    start, end = events.time_span()
    edges = np.linspace(start, end, num_windows + 1).round().astype(np.int64)
    figure, axes = plt.subplots(1, num_windows, figsize=(4 * num_windows, 3.6), squeeze=False)
    for axis, lo, hi in zip(axes[0], edges[:-1], edges[1:], strict=True):
        window = events.time_slice(int(lo), int(hi))
        axis.imshow(event_frame(window), interpolation="nearest")
        axis.set_title(f"{(lo - start) / 1000:.1f}-{(hi - start) / 1000:.1f} ms, {len(window)} ev")
        axis.set_xlabel("x (px)")
        axis.set_ylabel("y (px)")
    _polarity_legend(figure)
    return _save(figure, path, title or "event frames")


def plot_events_3d(events: Events, path: Path, title: str = "") -> Path:
    """A spatio-temporal scatter (x, time, y), subsampled to at most 30k points."""
    chosen = _subsample(len(events), MAX_SCATTER_POINTS)
    start = events.time_span()[0]
    figure = plt.figure(figsize=(8, 6))
    axis = figure.add_subplot(projection="3d")
    colours = np.where(events.p[chosen] > 0, "tab:red", "tab:blue")
    axis.scatter(
        events.x[chosen], (events.t[chosen] - start) / 1000, events.y[chosen], s=0.5, c=colours
    )
    axis.set_xlabel("x (px)")
    axis.set_ylabel("time (ms)")
    axis.set_zlabel("y (px)")
    axis.set_xlim(0, events.width)
    axis.set_zlim(events.height, 0)
    _polarity_legend(figure)
    note = f" ({len(chosen)} of {len(events)} events)" if len(chosen) < len(events) else ""
    return _save(figure, path, (title or "events in space and time") + note)


def plot_event_rate(events: Events, path: Path, bin_ms: float = 1.0, title: str = "") -> Path:
    """Events per millisecond over time, positive and negative separately."""
    start, end = events.time_span()
    edges = np.arange(start, end + bin_ms * 1000, bin_ms * 1000)
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for sign, colour, label in ((1, POSITIVE, "positive"), (-1, NEGATIVE, "negative")):
        counts, _ = np.histogram(events.t[events.p == sign], bins=edges)
        axis.plot((edges[:-1] - start) / 1000, counts / bin_ms, color=colour, label=label)
    axis.set_xlabel("time (ms)")
    axis.set_ylabel("events / ms")
    axis.legend(loc="upper right")
    return _save(figure, path, title or "event rate")


def plot_voxel_bins(voxel: torch.Tensor, path: Path, title: str = "", bin_ms: float = 2.5) -> Path:
    """The time bins of one (B, H, W) voxel as a grid, one shared zero-centred colour scale."""
    grid = voxel.detach().float().cpu().numpy()
    bins = grid.shape[0]
    columns = min(bins, 4)
    rows = -(-bins // columns)
    magnitudes = np.abs(grid[grid != 0])
    # A few hot cells (a light source) would wash everything else out: clip at the 99.5th
    # percentile of the non-zero cells and say so in the colour bar.
    limit = max(float(np.percentile(magnitudes, 99.5)) if magnitudes.size else 0.0, 1.0)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    image = None
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < bins:
            image = axis.imshow(grid[index], cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_title(f"bin {index}: {index * bin_ms:g}-{(index + 1) * bin_ms:g} ms")
    figure.colorbar(image, ax=axes, shrink=0.8, label=f"net polarity (clipped at +-{limit:.3g})")
    peak = float(np.abs(grid).max())
    stats = f"sum {grid.sum():+.1f}, |max| {peak:.2f}, non-zero {np.count_nonzero(grid)}"
    return _save(figure, path, f"{title or 'voxel bins'} ({stats})", tight=False)


def draw_events(events: Events, folder: Path, title: str = "") -> list[Path]:
    """The full set of event pictures into a folder: 3D scatter, 2D frames, rate."""
    folder.mkdir(parents=True, exist_ok=True)
    if not len(events):
        (folder / "empty.txt").write_text(f"{title}: no events (every voxel cell rounds to 0)\n")
        return [folder / "empty.txt"]
    return [
        plot_events_3d(events, folder / "events_3d.png", title),
        plot_event_frames(events, folder / "event_frames.png", title=title),
        plot_event_rate(events, folder / "event_rate.png", title=title),
    ]


def _subsample(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def _polarity_legend(figure: plt.Figure) -> None:
    handles = [
        plt.Line2D([], [], marker="s", ls="", color=POSITIVE, label="positive (ON)"),
        plt.Line2D([], [], marker="s", ls="", color=NEGATIVE, label="negative (OFF)"),
    ]
    figure.legend(handles=handles, loc="lower right", fontsize="small")


def _save(figure: plt.Figure, path: Path, title: str, tight: bool = True) -> Path:
    figure.suptitle(title)
    if tight:
        figure.tight_layout()
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, dpi=100, format="png")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- files


def visualize_file(path: Path, out_dir: Path, settings: VisualizeSettings) -> list[Path]:
    """All pictures of one event file (3D, frames, rate, one segment's voxel) or voxel file
    (the segment's bins and its decoded events), named ``STEM_*.png`` in ``out_dir``."""
    make_folder(out_dir)
    stem = Path(path).stem
    if Path(path).suffix == ".pt":
        voxels = read_voxels(path)
        segment = _segment_index(settings.segment, voxels.num_segments, path)
        events = voxel_to_events(voxels.segment(segment))
        bins = voxels.data[segment]
        title = f"{stem}, segment {segment} (decoded)"
    else:
        events = read_events(path, settings.read)
        voxels = events_to_voxel(events)
        segment = _segment_index(settings.segment, voxels.num_segments, path)
        bins = voxels.data[segment]
        title = stem
    bin_ms = voxels.bin_us / 1000
    written = [
        plot_events_3d(events, out_dir / f"{stem}_events_3d.png", title),
        plot_event_frames(events, out_dir / f"{stem}_frames.png", settings.num_windows, title),
        plot_event_rate(events, out_dir / f"{stem}_rate.png", title=title),
        plot_voxel_bins(
            bins,
            out_dir / f"{stem}_voxel_segment{segment}.png",
            f"{stem}, segment {segment}",
            bin_ms,
        ),  # fmt: skip
    ]
    return written


def _segment_index(segment: int, count: int, path: Path) -> int:
    if not -count <= segment < count:
        raise DeflareError(f"{path}: has {count} segments; --segment {segment} does not exist")
    return segment % count


def compare_files(paths: list[Path], out_dir: Path, settings: VisualizeSettings) -> list[Path]:
    """Input, output and (optionally) target side by side over time windows, with difference
    maps: what the method removed (input - output) and what it got wrong (output - target).
    Writes ``compare.png`` and, with ``gif``, ``compare.gif``."""
    if not 2 <= len(paths) <= 3:
        raise DeflareError("--compare takes INPUT OUTPUT [TARGET]")
    whole = ReadSettings(sensor_size=settings.read.sensor_size)  # windows are cut below
    streams = [read_events(path, whole) for path in paths]
    sizes = {stream.sensor_size for stream in streams}
    if len(sizes) > 1:
        raise DeflareError(f"the files have different sensor sizes: {sorted(sizes)}")
    start = min(stream.time_span()[0] for stream in streams)
    end = max(stream.time_span()[1] for stream in streams)
    if settings.read.time_window_ms is not None:
        start, end = window_us(start, settings.read.time_window_ms)
    edges = np.linspace(start, end, settings.num_windows + 1).round().astype(np.int64)
    names = ["input", "output", "target"][: len(paths)]
    make_folder(out_dir)
    figure = _compare_figure(streams, names, edges, start)
    written = [_save(figure, out_dir / "compare.png", "comparison", tight=False)]
    if settings.gif:
        written.append(_compare_gif(streams, names, edges, start, out_dir / "compare.gif"))
    return written


def _count_map(events: Events, lo: int, hi: int) -> np.ndarray:
    window = events.time_slice(lo, hi)
    counts = np.zeros(events.height * events.width, np.int32)
    np.add.at(counts, pixel_index(window), 1)
    return counts.reshape(events.sensor_size)


def _compare_row(
    axes: np.ndarray, streams: list[Events], names: list[str], lo: int, hi: int, start: int
) -> None:
    """One time window: the streams' frames, then the difference maps."""
    label = f"{(lo - start) / 1000:.1f}-{(hi - start) / 1000:.1f} ms"
    for axis, stream, name in zip(axes, streams, names, strict=False):
        window = stream.time_slice(lo, hi)
        axis.imshow(event_frame(window), interpolation="nearest")
        axis.set_title(f"{name}, {label}: {len(window)} ev", fontsize="small")
    removed = _count_map(streams[0], lo, hi) - _count_map(streams[1], lo, hi)
    panels = [("removed (input - output)", removed)]
    if len(streams) == 3:
        error = _count_map(streams[1], lo, hi) - _count_map(streams[2], lo, hi)
        panels.append(("error (output - target)", error))
    for axis, (title, difference) in zip(axes[len(streams) :], panels, strict=True):
        limit = max(1, int(np.percentile(np.abs(difference), 99.5)))
        image = axis.imshow(difference, cmap="PuOr_r", vmin=-limit, vmax=limit)
        axis.set_title(title, fontsize="small")
        plt.colorbar(image, ax=axis, fraction=0.046, label="events per pixel")
    for axis in axes:
        axis.set_xlabel("x (px)")
        axis.set_ylabel("y (px)")


def _compare_figure(
    streams: list[Events], names: list[str], edges: np.ndarray, start: int
) -> plt.Figure:
    columns = len(streams) + len(streams) - 1
    rows = len(edges) - 1
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows), squeeze=False)
    for row, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        _compare_row(axes[row], streams, names, int(lo), int(hi), start)
    _polarity_legend(figure)
    figure.tight_layout()
    return figure


def _compare_gif(
    streams: list[Events], names: list[str], edges: np.ndarray, start: int, path: Path
) -> Path:
    """An animation over the time windows: each window's comparison row is one frame."""
    import io

    from PIL import Image

    frames = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        figure = _compare_figure(streams, names, np.array([lo, hi]), start)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        buffer.seek(0)
        frames.append(Image.open(buffer).convert("RGB"))
    with atomic_output(path) as temp_path:
        frames[0].save(temp_path, format="GIF", save_all=True, append_images=frames[1:],
                       duration=700, loop=0)  # fmt: skip
    return path
