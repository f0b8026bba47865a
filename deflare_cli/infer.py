"""Inference: ``deflare deflare IN OUT`` removes flare from event files with a trained model.

A recording is streamed in batches of segments — read a time window, encode it, run the model,
turn the predicted voxels back into events, append them to the output — so a 10-minute DSEC
recording needs no more memory than one batch.

Two ways back from predicted voxels to events:

- ``preserve`` (default): keep the input's own events, with their exact timestamps, and edit each
  (bin, pixel) cell as little as the prediction allows. Where the predicted net count is below the
  input's, positive events are removed (negative where above); only where the prediction asks for
  more events than the cell holds are events synthesised, with uniform timestamps in the bin.
  The untrained (identity) model therefore returns the input exactly. Downstream tools that use
  precise timing (optical flow, tracking) keep it wherever flare was not found.
- ``resample``: the seed's decode: |n| new events per cell with uniform random timestamps. It
  loses the timing inside each 2.5 ms bin and all events whose polarities cancel in a cell.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .budget import fit_tiling
from .checkpoint import calibrated_margin, model_from_checkpoint
from .codec import (
    Voxels,
    cell_index,
    cells_to_events,
    decode_segment,
    events_to_voxel,
    segment_grid,
    segment_windows,
)
from .devices import Cluster, cluster_from_env
from .engines import Engine, describe, make_engine
from .errors import DeflareError, InputError, OutputError, SettingsError
from .events import Events, concat_events
from .io import (
    EventFileReader,
    check_distinct,
    file_sha256,
    list_event_files,
    make_folder,
    open_writer,
    output_format,
    output_suffix,
)
from .model import TrueResidualUNet3D
from .progress import Progress, no_progress
from .settings import CodecSettings, InferSettings, ModelSettings, Removal, TileSettings
from .tiles import Core, TiledVoxels, encode_tiles, run_network, run_tiles

log = logging.getLogger(__name__)

# A window of segments as encoded (whole grids, or only the tiles' windows: see
# :func:`~.tiles.encode_tiles`) and the model's output on it (whole grids, or the regions' cores).
Encoded = Voxels | TiledVoxels
Predicted = torch.Tensor | list[Core]

DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "default.pt"
STAGES = ("read", "encode", "model", "decode", "write")
# removal threshold: shares this close below 0.5 + margin count as reaching it (float rounding)
SHARE_TOLERANCE = 1e-6
LONE_EVENT_MARGIN = 0.5  # removal_counts: above it a one-event cell never loses its event


@dataclass
class FileResult:
    """What deflaring one file did."""

    source: Path
    target: Path
    input_events: int = 0
    output_events: int = 0
    dropped_events: int = 0  # left out by --drop-invalid: not in input_events
    segments: int = 0
    duration_s: float = 0.0  # of the recording
    skipped: bool = False
    engine: str = ""  # engine, precision and why
    wall_seconds: float = 0.0  # the stages overlap: their sum is more than this
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def seconds(self) -> float:
        return self.wall_seconds or sum(self.stage_seconds.values())


@dataclass
class Deflarer:
    """A loaded model with everything needed to deflare files."""

    model: TrueResidualUNet3D
    codec: CodecSettings
    settings: InferSettings
    cluster: Cluster
    provenance: dict[str, str]
    engine: Engine
    margin: float = 0.0  # of removal_counts: the setting, else the checkpoint's calibrated one

    @property
    def removal(self) -> Removal:
        """How the model's output becomes removed events (:func:`removal_counts`' rule)."""
        return self.model.settings.removal

    @property
    def engine_description(self) -> str:
        """Engine, precision and why, for the user."""
        return describe(self.engine, self.cluster.device)


def load_deflarer(settings: InferSettings) -> Deflarer:
    """Load the checkpoint (or the shipped default model) onto this process's device."""
    checkpoint = settings.checkpoint or DEFAULT_CHECKPOINT
    if settings.checkpoint is None and not DEFAULT_CHECKPOINT.exists():
        raise DeflareError(
            "no default model ships with this version of deflare yet: pass --checkpoint "
            "(e.g. RUN_DIR/best.pt from `deflare train`)"
        )
    model, codec = model_from_checkpoint(checkpoint)
    margin = settings.margin if settings.margin is not None else calibrated_margin(checkpoint)
    settings = settings.model_copy(update={"tiles": _tiles_for(settings.tiles, model.settings)})
    cluster = cluster_from_env(settings.runtime.device)
    digest = file_sha256(Path(checkpoint))
    runtime = settings.runtime
    engine = make_engine(model, runtime.engine, runtime.precision, cluster.device, digest[:16])
    provenance = {
        "deflare_version": __version__,
        "deflare_checkpoint": Path(checkpoint).name,
        "deflare_checkpoint_sha256": digest,
        "deflare_settings": json.dumps(
            {
                "output_mode": settings.output_mode,
                "seed": settings.seed,
                "margin": margin,
                "engine": f"{engine.name} {engine.precision}",
                "tiles": settings.tiles.model_dump(mode="json"),
                "model": model.settings.model_dump(mode="json"),
                "codec": codec.model_dump(mode="json"),
            }
        ),
    }
    deflarer = Deflarer(model, codec, settings, cluster, provenance, engine, margin)
    log.info("engine: %s", deflarer.engine_description)
    return deflarer


def _tiles_for(tiles: TileSettings, model: ModelSettings) -> TileSettings:
    """Tile settings that fit the network: sizes on its pooling grid, and by default a halo of
    its reach (rounded up to that grid), so that each tile sees what the whole frame would."""
    multiple = model.size_multiple
    halo = tiles.halo if tiles.halo is not None else -(-model.reach_px // multiple) * multiple
    if tiles.size % multiple or halo % multiple:
        raise SettingsError(
            f"tile size ({tiles.size}) and halo ({halo}) must be multiples of {multiple} for a "
            f"network of {model.depth} levels"
        )
    return tiles.model_copy(update={"halo": halo})


def deflare(
    source: Path, target: Path, settings: InferSettings, progress: Progress = no_progress
) -> list[FileResult]:
    """Deflare one file, or every event file of a folder into another folder.

    Under torchrun the files of a folder are shared out among the ranks.
    """
    deflarer = load_deflarer(settings)
    jobs = list(_jobs(source, target, settings))
    mine = jobs[deflarer.cluster.rank :: deflarer.cluster.world_size]
    results = []
    for done, (file_source, file_target) in enumerate(mine, start=1):
        if file_target.exists() and not settings.overwrite:
            results.append(FileResult(file_source, file_target, skipped=True))
        else:
            results.append(deflare_file(deflarer, file_source, file_target, progress))
        if len(mine) > 1:
            progress("files", done, len(mine))
    return results


def _jobs(source: Path, target: Path, settings: InferSettings) -> Iterator[tuple[Path, Path]]:
    check_distinct(source, target)
    if not source.exists():
        raise InputError(source, "file or folder not found")
    if not source.is_dir():
        if target.is_dir():
            target = target / (source.stem + output_suffix(settings.write.format, source))
        if target.exists() and not settings.overwrite:
            raise OutputError(f"{target}: exists already; pass --overwrite to replace it")
        yield source, target
        return
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: the input is a folder, so the output must be a folder too")
    files = list_event_files(source)
    if not files:
        raise InputError(source, "no event files in this folder")
    targets = [target / (path.stem + output_suffix(settings.write.format, path)) for path in files]
    by_target: dict[Path, Path] = {}
    for path, output in zip(files, targets, strict=True):
        if output in by_target:
            raise OutputError(
                f"{output}: both {by_target[output].name} and {path.name} would be written "
                "there; rename one or choose another --output-format"
            )
        by_target[output] = path
    make_folder(target)
    yield from zip(files, targets, strict=True)


def deflare_file(
    deflarer: Deflarer, source: Path, target: Path, progress: Progress = no_progress
) -> FileResult:
    """Stream one recording through the model into ``target`` (written atomically).

    The stages overlap: while the model runs on one window of segments, a reader thread reads
    and encodes the next, and a writer thread decodes and writes the previous (at most one
    window each way, so memory stays bounded by three windows).
    """
    check_distinct(source, target)
    result = FileResult(source, target, engine=deflarer.engine_description)
    timer = _StageTimer(result.stage_seconds)
    codec = deflarer.codec
    started = time.perf_counter()
    with EventFileReader(source, deflarer.settings.read) as reader:
        tiles = _tiles_within_budget(deflarer, reader)
        grid = segment_grid(reader.span_us, codec.segment_us)
        windows = segment_windows(reader.span_us, codec.segment_us, deflarer.settings.batch_size)

        def load(window: tuple[int, int]) -> tuple[Events, Encoded]:
            with timer("read"):
                events = reader.read(*window)
            return events, _encode_window(deflarer, events, timer, tiles)

        # Inner blocks close first: on an error the threads finish before the writer closes.
        with (
            _writer(deflarer.settings, target, reader) as writer,
            ThreadPoolExecutor(1, "deflare-read") as reading,
            ThreadPoolExecutor(1, "deflare-write") as writing,
        ):

            def store(events: Events, voxels: Encoded, predicted: Predicted, first: int) -> None:
                output = _decode_window(deflarer, events, voxels, predicted, first, timer)
                with timer("write"):
                    writer.append(output)
                result.input_events += len(events)
                result.output_events += len(output)

            loading = reading.submit(load, windows[0][1])
            storing = None
            for done, (first, _) in enumerate(windows, start=1):
                events, voxels = loading.result()
                if done < len(windows):
                    loading = reading.submit(load, windows[done][1])
                with timer("model"):
                    predicted = _predict_window(deflarer, voxels, tiles)
                if storing is not None:
                    storing.result()
                storing = writing.submit(store, events, voxels, predicted, first)
                progress(f"deflaring {source.name}", done, len(windows))
            if storing is not None:
                storing.result()
            _check_all_read(reader, result)
            with timer("write"):
                writer.finish(grid, {**deflarer.provenance, "deflare_source": str(source)})
        start, end = reader.span_us
    result.wall_seconds = time.perf_counter() - started
    result.segments = (grid[1] - grid[0]) // codec.segment_us
    result.duration_s = (end - start) / 1e6
    return result


def _predict_window(deflarer: Deflarer, voxels: Encoded, tiles: TileSettings) -> Predicted:
    """The model on one encoded window: the regions' cores where it was encoded on tiles,
    else the whole (S, B, H, W) output."""
    if isinstance(voxels, TiledVoxels):
        return run_tiles(deflarer.engine.run, voxels)
    return run_model(deflarer, voxels.data, tiles)


def _tiles_within_budget(deflarer: Deflarer, reader: EventFileReader) -> TileSettings:
    """The tiling that deflares this recording inside ``--memory-gb`` (see :mod:`.budget`)."""
    settings = deflarer.settings
    return fit_tiling(
        reader.label,
        deflarer.model.settings,
        deflarer.codec.num_bins,
        reader.sensor_size,
        settings.batch_size,
        settings.tiles,
        settings.memory_gb,
        forward_on_host=deflarer.cluster.device.type == "cpu",
    )


def _check_all_read(reader: EventFileReader, result: FileResult) -> None:
    """Never lose events silently: every event of the file must have gone through (apart from
    those ``--drop-invalid`` left out, which are counted in the result)."""
    result.dropped_events = reader.dropped.count if reader.dropped else 0
    expected = reader.event_count
    if expected is not None and result.input_events != expected:
        raise InputError(
            result.source,
            f"read {result.input_events:,} of its {expected:,} events: some lie outside the "
            "time span found for it (no output written)",
        )


def _writer(settings: InferSettings, target: Path, reader: EventFileReader):
    """The writer of the output's format: ``--output-format``, else the target's suffix, else
    the input's own format (DSEC keeps its ``t_offset``). Without ``--overwrite`` the output is
    created exclusively: a run that finds it made by another run meanwhile fails."""
    chosen = output_format(settings.write.format, target, reader.format)
    return open_writer(
        target, reader.sensor_size, settings.write, chosen, reader.t_offset, not settings.overwrite
    )


def deflare_events(
    deflarer: Deflarer, events: Events, span_us: tuple[int, int] | None = None
) -> Events:
    """Deflare an in-memory stream on the grid starting at ``span_us`` (default: its own span),
    in batches of segments exactly as :func:`deflare_file` does with a file."""
    span = span_us or events.time_span()
    pieces = [
        decode_window(deflarer, *window) for window in predict_windows(deflarer, events, span)
    ]
    return replace(
        concat_events(pieces, events), span_us=segment_grid(span, deflarer.codec.segment_us)
    )


def predict_windows(
    deflarer: Deflarer, events: Events, span_us: tuple[int, int]
) -> Iterator[tuple[Events, Voxels, torch.Tensor, int]]:
    """The model's predictions of an in-memory stream, batch by batch of segments: (events of the
    window, their voxels, the predicted voxels, index of the window's first segment)."""
    timer = _StageTimer(dict.fromkeys(STAGES, 0.0))
    for first, window in segment_windows(
        span_us, deflarer.codec.segment_us, deflarer.settings.batch_size
    ):
        window_events = events.time_slice(*window)
        voxels = _encode_window(deflarer, window_events, timer)
        yield window_events, voxels, run_model(deflarer, voxels.data), first


def decode_window(
    deflarer: Deflarer, events: Events, voxels: Voxels, predicted: torch.Tensor, first_segment: int
) -> Events:
    """The output events of one window of predictions (see :func:`predict_windows`)."""
    timer = _StageTimer(dict.fromkeys(STAGES, 0.0))
    return _decode_window(deflarer, events, voxels, predicted, first_segment, timer)


def _encode_window(
    deflarer: Deflarer, events: Events, timer: _StageTimer, tiles: TileSettings | None = None
) -> Encoded:
    """The voxels of a window of whole segments (``events.span_us``): only inside the tiles'
    windows where ``tiles`` (given) run tiles and the output keeps the input's events
    (:func:`~.tiles.encode_tiles`), else the whole grid."""
    with timer("encode"):
        if tiles is not None and deflarer.settings.output_mode == "preserve":
            tiled = encode_tiles(events, deflarer.codec, tiles)
            if tiled is not None:
                return tiled
        return events_to_voxel(events, deflarer.codec)


def _decode_window(
    deflarer: Deflarer,
    events: Events,
    voxels: Encoded,
    predicted: Predicted,
    first_segment: int,
    timer: _StageTimer,
) -> Events:
    """The output events of a window: the input edited (preserve) or new events (resample)."""
    if isinstance(voxels, TiledVoxels):
        with timer("decode"):
            return _preserve_tiled(deflarer, events, voxels, predicted, first_segment)
    with timer("decode"):
        predicted_voxels = Voxels(predicted, voxels.t0_us, voxels.segment_us)
        pieces = []
        for index in range(voxels.num_segments):
            single = predicted_voxels.segment(index)
            segment_events = events.time_slice(*single.span_us)
            rng = _segment_rng(deflarer, first_segment + index)
            if deflarer.settings.output_mode == "preserve":
                pieces.append(
                    preserve_events(
                        segment_events,
                        voxels.data[index],
                        single,
                        rng,
                        deflarer.margin,
                        deflarer.removal,
                    )
                )
            else:
                pieces.append(_as_events(decode_segment(single, 0, rng), events))
        return concat_events(pieces, events)


def run_model(
    deflarer: Deflarer, voxels: torch.Tensor, tiles: TileSettings | None = None
) -> torch.Tensor:
    """(S, B, H, W) voxels through the model (on the tiles that hold events, or whole frames:
    see :mod:`deflare_cli.tiles`; ``tiles`` default: the settings'); returns (S, B, H, W)
    float32 on the CPU."""
    return run_network(deflarer.engine.run, voxels, tiles or deflarer.settings.tiles)


def removal_counts(
    net: torch.Tensor, predicted: torch.Tensor, margin: float, rule: Removal = "rounded"
) -> torch.Tensor:
    """Net count to take out of each cell: ``net - predicted`` rounded towards zero by
    ``margin`` (0: plain rounding; 0.3: a one-event cell loses its event only where the model
    predicts at most 0.2). Cells the model leaves alone give 0.

    ``rule`` ``threshold`` (``ModelSettings.removal``, mask models): a cell is edited only where
    the share it would lose, ``(net - predicted) / net``, is at least ``0.5 + margin``, and then
    loses that excess rounded. A lone event goes at the same shares under both rules; a cell of
    several events that the model scores at 0.5 keeps them all, where rounding takes some. A
    model that gives every event of a pixel one score says "all flare or none" by it, and
    rounding turned its uncertain shares of dense scene cells into removals
    (docs/experiments.md, 2026-12-07)."""
    excess = net - predicted
    if rule == "threshold":
        sure = excess.abs() >= (0.5 + margin - SHARE_TOLERANCE) * net.abs()
        rounded = torch.sign(excess) * torch.floor(excess.abs() + 0.5)
        return torch.where(sure & (net != 0), rounded, torch.zeros_like(excess))
    return torch.sign(excess) * torch.floor(excess.abs() + (0.5 - margin)).clamp_min(0)


def preserve_events(
    events: Events,
    input_voxel: torch.Tensor,
    predicted: Voxels,
    rng: np.random.Generator,
    margin: float = 0.0,
    rule: Removal = "rounded",
) -> Events:
    """The input events of one segment, edited as little as possible to match the prediction.

    Args:
        events: the segment's input events.
        input_voxel: (B, H, W) their voxel.
        predicted: the model's voxel of the segment (1, B, H, W); rounded per cell.
        rng: chooses which events go and the timestamps of new ones.
        margin: how sure the model must be before it edits a cell (:func:`removal_counts`).
        rule: :func:`removal_counts`' rule (the model's ``removal`` setting).

    Per cell, with ``P``/``N`` input events of each polarity and ``d`` from
    :func:`removal_counts` (with margin 0: ``(P - N) - round(predicted)``):
    ``d > 0`` removes ``min(d, P)`` positive events and adds ``d - P`` negative ones if that is not
    enough; ``d < 0`` likewise with the polarities swapped; ``d == 0`` keeps the cell as it is.
    Only cells whose prediction differs from their input can change (cells outside the tiles
    that ran pass through as they were, and a mask model leaves empty cells at 0), so the grid is
    scanned once for those and everything after follows them and the events, not the sensor
    size: at 1280x720 the whole-grid arithmetic cost ~20 ms per sparse segment.
    """
    input_grid = input_voxel.flatten()
    predicted_grid = predicted.data[0].flatten()
    differs = input_grid != predicted_grid
    if 4 * int(differs.count_nonzero()) > len(input_grid):  # a residual model: everywhere
        return _edit_cells(events, None, input_grid, predicted_grid, predicted, rng, margin, rule)
    cells = torch.nonzero(differs).flatten()
    return _edit_cells(
        events, cells, input_grid[cells], predicted_grid[cells], predicted, rng, margin, rule
    )


def _edit_cells(
    events: Events,
    cells: torch.Tensor | None,
    net_values: torch.Tensor,
    predicted_values: torch.Tensor,
    layout: Voxels,
    rng: np.random.Generator,
    margin: float,
    rule: Removal,
) -> Events:
    """:func:`preserve_events` on the flat cells ``cells`` of the segment laid out as ``layout``
    (ascending; ``None``: all of them), whose input and predicted values are given."""
    excess_all = removal_counts(net_values, predicted_values, margin, rule)
    edited = torch.nonzero(excess_all).flatten()
    if not len(edited):
        return events
    changed = (edited if cells is None else cells[edited]).numpy()  # ascending cell indices
    excess = excess_all[edited].numpy().astype(np.int64)
    net = net_values[edited].numpy().astype(np.int64)
    event_cells = cell_index(events, layout.t0_us, layout.bin_us)
    event_slot = _slots(event_cells, changed, layout.data[0].numel())
    positive = events.p > 0
    count_positive = np.bincount(event_slot[positive & (event_slot >= 0)], minlength=len(changed))
    remove_positive = np.clip(excess, 0, count_positive)
    remove_negative = np.clip(-excess, 0, count_positive - net)
    keep = ~_choose_removed(event_slot, positive, remove_positive, remove_negative, rng)
    added = np.where(excess > 0, remove_positive - excess, -excess - remove_negative)
    new = np.flatnonzero(added)
    synthesised = cells_to_events(changed[new], added[new], layout.t0_us, layout, rng)
    return concat_events([events.select(keep), _as_events(synthesised, events)], events)


def _preserve_tiled(
    deflarer: Deflarer,
    events: Events,
    tiled: TiledVoxels,
    cores: list[Core],
    first_segment: int,
) -> Events:
    """:func:`preserve_events` segment by segment, from the regions' cores alone (every other
    cell passed through): the same events, bit for bit, as the whole grids would give."""
    height, width = tiled.sensor_size
    codec = deflarer.codec
    by_segment: dict[int, list[Core]] = {}
    for core in cores:
        by_segment.setdefault(core.region.segment, []).append(core)
    pieces = []
    for index in range(tiled.num_segments):
        start = tiled.t0_us + index * codec.segment_us
        segment_events = events.time_slice(start, start + codec.segment_us)
        rng = _segment_rng(deflarer, first_segment + index)
        # the shape of one segment's grid without its memory: cells_to_events needs the layout
        layout = Voxels(
            torch.zeros(()).expand(1, codec.num_bins, height, width), start, codec.segment_us
        )
        cells, before, after = _differing_cells(by_segment.get(index, []), height, width)
        pieces.append(
            _edit_cells(
                segment_events, cells, before, after, layout, rng, deflarer.margin, deflarer.removal
            )
        )
    return concat_events(pieces, events)


def _segment_rng(deflarer: Deflarer, segment: int) -> np.random.Generator:
    """The generator that decodes segment ``segment`` of a recording (counted from its first):
    one rule for the whole-grid and the tiled decoders, so that both give the same events."""
    return np.random.default_rng([deflarer.settings.seed, segment])


def _differing_cells(
    cores: list[Core], height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flat cells ``(bin * H + y) * W + x`` of one segment where a core's output differs
    from its input, ascending, with their input and output values."""
    cells, before, after = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0)], [torch.zeros(0)]
    for core in cores:
        bins, rows, cols = torch.nonzero(core.input != core.output, as_tuple=True)
        cells.append((bins * height + rows + core.region.top) * width + cols + core.region.left)
        before.append(core.input[bins, rows, cols])
        after.append(core.output[bins, rows, cols])
    flat = torch.cat(cells)
    order = torch.argsort(flat)
    return flat[order], torch.cat(before)[order], torch.cat(after)[order]


def _slots(cells: np.ndarray, changed: np.ndarray, grid_cells: int) -> np.ndarray:
    """Index into ``changed`` (ascending) of each cell, -1 for cells not in it (int32): by a
    table of the whole grid, unless the grid is so much larger than the events (a sparse
    1280x720 segment) that filling the table costs more than a binary search per event (~100
    ns each against ~0.4 ns per cell, measured)."""
    if grid_cells <= 256 * len(cells):
        table = np.full(grid_cells, -1, np.int32)
        table[changed] = np.arange(len(changed), dtype=np.int32)
        return table[cells]
    found = np.searchsorted(changed, cells).clip(max=len(changed) - 1)
    return np.where(changed[found] == cells, found, -1).astype(np.int32)


def _choose_removed(
    event_slot: np.ndarray,
    positive: np.ndarray,
    remove_positive: np.ndarray,
    remove_negative: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mask of the events to remove: a random ``remove_*[slot]`` of each changed cell's events
    of that polarity (``event_slot`` is -1 for events in unchanged cells)."""
    in_changed = event_slot >= 0
    quota = np.zeros(len(event_slot), np.int64)
    slots = event_slot[in_changed]
    quota[in_changed] = np.where(
        positive[in_changed], remove_positive[slots], remove_negative[slots]
    )
    candidates = np.flatnonzero(quota > 0)
    removed = np.zeros(len(event_slot), bool)
    if not len(candidates):
        return removed
    group = event_slot[candidates].astype(np.int64) * 2 + positive[candidates]
    order = np.lexsort((rng.random(len(candidates)), group))
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.arange(len(order)) - group_start
    removed[candidates[order[rank < quota[candidates[order]]]]] = True
    return removed


def _as_events(columns: tuple[np.ndarray, ...], like: Events) -> Events:
    """``cells_to_events`` columns (already t int64, x/y uint16, p int8) as Events."""
    return Events(*columns, like.height, like.width)


class _StageTimer:
    """Adds the wall time of ``with timer("stage"):`` blocks to a dict (one thread per stage)."""

    def __init__(self, totals: dict[str, float]) -> None:
        self.totals = totals

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - started
