"""The ``deflare`` command: a thin Typer skin over the library.

Each command reads its options, builds one settings object, calls one library function and
prints a short summary. Progress, warnings and errors go to stderr, so that ``-o -`` can stream
data on stdout: ``deflare encode in.h5 -o - | deflare decode - -o out.h5``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressBar
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import DeflareError, InputError, OutputError
from .io import check_distinct, check_writable, decode_file, encode_file
from .methods import METHODS, resolve_methods
from .progress import ProgressLines
from .settings import (
    Backbone,
    CalibrateSettings,
    Compression,
    DecodeSettings,
    Device,
    EncodeSettings,
    EngineName,
    EvaluateSettings,
    EventFormat,
    InferSettings,
    Loss,
    OutputMode,
    Pooling,
    Precision,
    ReadSettings,
    SynthSettings,
    Tiling,
    TrainSettings,
    VisualizeSettings,
    load_settings,
    parse_int_list,
    parse_sensor_size,
    parse_time_window,
)

if TYPE_CHECKING:
    from .calibrate import Calibration

app = typer.Typer(
    name="deflare",
    help="Remove lens flare from event-camera recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
STDIO = "-"  # as an input: stdin; as an output: stdout


def open_source(argument: str) -> tuple[Path | BinaryIO, str]:
    """A command-line input and its name for messages: ``-`` is stdin (read whole, so that it
    can be seeked), else a path."""
    if argument == STDIO:
        if sys.stdin.isatty():  # reading would wait, silently, for keystrokes
            raise InputError(
                "<stdin>",
                "is a terminal: pipe a file in (e.g. `cat rec.h5 | deflare encode - "
                "-o rec.pt`) or give its path",
            )
        return io.BytesIO(sys.stdin.buffer.read()), "<stdin>"
    return Path(argument), argument


def open_target(argument: str) -> Path | BinaryIO:
    """A command-line output: ``-`` is stdout, anything else a path."""
    if argument == STDIO:
        return sys.stdout.buffer
    return Path(argument)


# Options shared by several commands, declared once.
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file; flags override its values."),
]
SensorSizeOption = Annotated[
    str | None,
    typer.Option(
        "--sensor-size",
        help="Sensor size HEIGHTxWIDTH in pixels, e.g. 720x1280 [default: from the file, "
        "else 480x640].",
    ),
]
TimeWindowOption = Annotated[
    str | None,
    typer.Option(
        "--time-window",
        help="Read only START:END milliseconds from the recording's start, e.g. 0:100.",
    ),
]
DropInvalidOption = Annotated[
    bool,
    typer.Option(
        "--drop-invalid",
        help="Leave out events that cannot be placed (timestamp NaN, infinite, negative or out "
        "of range; off the sensor) and report how many, instead of refusing the file.",
    ),
]
MemoryOption = Annotated[
    float | None,
    typer.Option(
        "--memory-gb",
        help="Memory the job may use; a larger need is refused up front with a way round "
        "[default: 2].",
    ),
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed of the random timestamp generator [default: 0].")
]
DeviceOption = Annotated[
    Device | None, typer.Option("--device", help="auto: CUDA when present, else CPU.")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding background_with_flare_events/ and background_with_light_events/.",
    ),
]
FlareDirOption = Annotated[
    Path | None,
    typer.Option("--flare-dir", help="Folder of inputs with flare (instead of --data-dir)."),
]
CleanDirOption = Annotated[
    Path | None, typer.Option("--clean-dir", help="Folder of clean targets (with --flare-dir).")
]
EngineOption = Annotated[
    EngineName | None,
    typer.Option(
        "--engine",
        help="Inference engine; auto: OpenVINO on CPU when installed (deflare[fast]), else torch.",
    ),
]
InferPrecisionOption = Annotated[
    Precision | None,
    typer.Option(
        "--precision",
        help="auto: bf16 where the GPU or CPU has it (AVX512-BF16, AMX), else fp32.",
    ),
]
TilingOption = Annotated[
    Tiling | None,
    typer.Option(
        "--tiling",
        help="Run the model on tiles that hold events, on whole frames, or auto: tiles when "
        "their windows cover at most half the frame [auto].",
    ),
]
CompressionOption = Annotated[
    Compression | None,
    typer.Option("--compression", help="Compression of written event files [default: none]."),
]


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    """Remove lens flare from event-camera recordings."""
    if version:
        typer.echo(f"deflare {__version__}")
        raise typer.Exit()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)],
        force=True,
    )


@app.command()
def encode(
    events_file: Annotated[str, typer.Argument(help="Event file to encode ('-' for stdin).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Voxel file to write (.pt, '-' for stdout).")
    ],
    bins: Annotated[
        int | None, typer.Option("--bins", help="Time bins per segment [default: 8].")
    ] = None,
    segment_ms: Annotated[
        float | None, typer.Option("--segment-ms", help="Segment length in ms [default: 20].")
    ] = None,
    sensor_size: SensorSizeOption = None,
    time_window: TimeWindowOption = None,
    drop_invalid: DropInvalidOption = False,
    memory_gb: MemoryOption = None,
    config: ConfigOption = None,
) -> None:
    """Encode events into voxel grids: 20 ms segments of 8 bins, net polarity per pixel."""
    with reporting_errors():
        settings = load_settings(
            EncodeSettings,
            config,
            {
                "read": {
                    "sensor_size": _parsed(parse_sensor_size, sensor_size),
                    "time_window_ms": _parsed(parse_time_window, time_window),
                    "drop_invalid": drop_invalid or None,
                },
                "memory_gb": memory_gb,
                "codec": {
                    "num_bins": bins,
                    "segment_us": round(segment_ms * 1000) if segment_ms is not None else None,
                },
            },
        )
        source, name = open_source(events_file)
        with progress_bar() as progress:
            voxels = encode_file(source, open_target(output), settings, progress, name)
    print_summary(
        output,
        f"[green]encoded[/] {escape(name)} -> {escape(output)}: {voxels.num_segments} segments x "
        f"{voxels.num_bins} bins x {voxels.sensor_size[0]}x{voxels.sensor_size[1]}, "
        f"net polarity {voxels.data.sum().item():+.0f}",
    )


@app.command()
def decode(
    voxel_file: Annotated[str, typer.Argument(help="Voxel file to decode ('-' for stdin).")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Event file to write (.h5, '-' for stdout).")
    ],
    seed: SeedOption = None,
    compression: CompressionOption = None,
    config: ConfigOption = None,
) -> None:
    """Decode voxel grids into events: |n| events per cell, timestamps uniform in the bin."""
    with reporting_errors():
        settings = load_settings(
            DecodeSettings, config, {"seed": seed, "write": {"compression": compression}}
        )
        source, name = open_source(voxel_file)
        with progress_bar() as progress:
            events = decode_file(source, open_target(output), settings, progress, name)
    print_summary(
        output,
        f"[green]decoded[/] {escape(name)} -> {escape(output)}: {len(events)} events, "
        f"{events.height}x{events.width} sensor",
    )


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the pairs and manifest.json.")],
    num_files: Annotated[
        int | None, typer.Option("--num-files", "-n", help="Pairs to make [10].")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of every scene [0].")] = None,
    sensor_sizes: Annotated[
        list[str] | None,
        typer.Option(
            "--sensor-size",
            help="HEIGHTxWIDTH of the pairs, e.g. 720x1280; repeat it to mix sizes [480x640].",
        ),
    ] = None,
    duration_ms: Annotated[
        float | None, typer.Option("--duration-ms", help="Length of each pair [100].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Parallel processes [1].")
    ] = None,
    background_dir: Annotated[
        Path | None,
        typer.Option("--background-dir", help="Take backgrounds from real recordings here."),
    ] = None,
    scene_flicker: Annotated[
        float | None,
        typer.Option(
            "--scene-flicker",
            help="Share of pairs whose whole scene is lit by mains light and flickers with it "
            "(scene events, kept in the target) [0].",
        ),
    ] = None,
    scene_flicker_depth: Annotated[
        tuple[float, float] | None,
        typer.Option(
            "--scene-flicker-depth",
            help="LOW HIGH: range of that flicker's depth, drawn log-uniform [0.02 0.25].",
        ),
    ] = None,
    compression: CompressionOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a folder that holds pairs.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Synthesise paired flare/clean event recordings (E-Deflare layout) from a physical model."""
    from .synth import synthesise

    with reporting_errors():
        settings = load_settings(
            SynthSettings,
            config,
            {
                "out_dir": out_dir,
                "num_files": num_files,
                "seed": seed,
                "sensor_sizes": [parse_sensor_size(size) for size in sensor_sizes or []] or None,
                "duration_ms": duration_ms,
                "runtime": {"workers": workers},
                "background_dir": background_dir,
                "scene_flicker": scene_flicker,
                "scene_flicker_depth": scene_flicker_depth,
                "write": {"compression": compression},
                "overwrite": overwrite or None,
            },
        )
        with progress_bar() as progress:
            manifest = synthesise(settings, progress)
    pairs = manifest["pairs"]
    inputs = sum(pair["counts"]["input_events"] for pair in pairs)
    targets = sum(pair["counts"]["target_events"] for pair in pairs)
    print_summary(
        "",
        f"[green]synthesised[/] {len(pairs)} pairs in {escape(str(out_dir))}: "
        f"{inputs / len(pairs):,.0f} input and {targets / len(pairs):,.0f} target events per "
        "pair on average; parameters in manifest.json",
    )


@app.command("deflare")
def deflare_command(
    source: Annotated[Path, typer.Argument(help="Event file, or a folder of them.")],
    target: Annotated[Path, typer.Argument(help="Output .h5 file, or a folder.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Trained model (RUN_DIR/best.pt) [default: shipped]."),
    ] = None,
    device: DeviceOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Segments per forward pass (more: faster on GPU) [1]."),
    ] = None,
    precision: InferPrecisionOption = None,
    engine: EngineOption = None,
    tiling: TilingOption = None,
    tile_size: Annotated[
        int | None, typer.Option("--tile-size", help="Tile side in pixels [32].")
    ] = None,
    tile_min_events: Annotated[
        int | None,
        typer.Option("--tile-min-events", help="Events a tile needs to be run; fewer: kept [16]."),
    ] = None,
    output_mode: Annotated[
        OutputMode | None,
        typer.Option(
            "--output-mode",
            help="preserve: keep input events and their timestamps, edit cells minimally; "
            "resample: new events, uniform timestamps per bin [preserve].",
        ),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            "--margin",
            help="How sure the model must be to remove an event: 0 rounds its prediction, "
            "0.3 removes a lone event only where it predicts <= 0.2 (models with removal "
            "threshold, as the default: edits a cell only where its removal share is >= 0.8) "
            "[the model's calibrated margin, else 0].",
        ),
    ] = None,
    sensor_size: SensorSizeOption = None,
    drop_invalid: DropInvalidOption = False,
    memory_gb: MemoryOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.")
    ] = False,
    seed: SeedOption = None,
    output_format: Annotated[
        EventFormat | None,
        typer.Option(
            "--output-format",
            help="auto: the format the output's suffix names, else the input's own (DSEC gives "
            "DSEC, a .raw gives a .raw) [auto].",
        ),
    ] = None,
    compression: CompressionOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove flare from event files with a trained model (streamed, any sensor size)."""
    from .infer import deflare  # torch-heavy: import only when needed

    with reporting_errors():
        settings = load_settings(
            InferSettings,
            config,
            {
                "checkpoint": checkpoint,
                "batch_size": batch_size,
                "output_mode": output_mode,
                "overwrite": overwrite or None,
                "seed": seed,
                "margin": margin,
                "memory_gb": memory_gb,
                "tiles": {"mode": tiling, "size": tile_size, "min_events": tile_min_events},
                "read": {
                    "sensor_size": _parsed(parse_sensor_size, sensor_size),
                    "drop_invalid": drop_invalid or None,
                },
                "write": {"compression": compression, "format": output_format},
                "runtime": {"device": device, "precision": precision, "engine": engine},
            },
        )
        with progress_bar() as progress:
            results = deflare(source, target, settings, progress)
    _print_deflared(results)


def _print_deflared(results) -> None:
    table = Table(title="deflare", caption=f"outputs in {escape(str(results[0].target.parent))}")
    dropped = any(result.dropped_events for result in results)
    columns = ("file", "events in", "events out", "kept", "seconds", "x real time")
    for column in columns + (("left out",) if dropped else ()):
        table.add_column(column, justify="left" if column == "file" else "right", no_wrap=True)
    for result in results:
        if result.skipped:
            table.add_row(escape(result.source.name), "[yellow]output exists: skipped[/]")
            continue
        kept = result.output_events / result.input_events if result.input_events else 0.0
        table.add_row(
            escape(result.source.name),
            f"{result.input_events:,}",
            f"{result.output_events:,}",
            f"{100 * kept:.1f}%",
            f"{result.seconds:.2f}",
            f"{result.duration_s / result.seconds:.3f}" if result.seconds else "",
            *([f"{result.dropped_events:,}"] if dropped else []),
        )
    Console().print(table)
    for engine in sorted({result.engine for result in results if result.engine}):
        say(f"engine: {escape(engine)}")


@app.command()
def info(
    sources: Annotated[list[Path], typer.Argument(help="Event files or folders of them.")],
    sensor_size: SensorSizeOption = None,
    drop_invalid: DropInvalidOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="One line per argument: min / median / max.")
    ] = False,
) -> None:
    """Statistics of recordings: size, duration, rate, pixels active per 20 ms, ON share, flips
    (events whose pixel fires next with the opposite polarity within 20 ms)."""
    from .stats import collect_stats

    with reporting_errors():
        size = _parsed(parse_sensor_size, sensor_size)
        read = load_settings(
            ReadSettings, None, {"sensor_size": size, "drop_invalid": drop_invalid or None}
        )
        groups = [collect_stats([source], read) for source in sources]
    rows = [row for group in groups for row in group]
    if summary:
        _print_stats_summary(sources, groups)
        return
    if as_json:
        for row in rows:
            say(escape(json.dumps(row.as_dict())))
        return
    table = Table(title="recordings")
    for column in ("file", "format", "sensor", "duration", "events", "M ev/s", "active/20 ms",
                   "ON", "ev/active px p50/p90/p99", "flips"):  # fmt: skip
        table.add_column(column, justify="left" if column == "file" else "right", no_wrap=True)
    for row in rows:
        table.add_row(escape(row.name), row.format, f"{row.width}x{row.height}",
                      f"{row.duration_s:.3f} s", f"{row.events:,}", f"{row.rate_meps:.3f}",
                      f"{row.active_percent:.2f}%", f"{row.on_percent:.1f}%",
                      "/".join(f"{q:g}" for q in row.per_active_pixel),
                      f"{row.flip_percent:.1f}%")  # fmt: skip
    _wide_console().print(table)
    for row in rows:
        if row.provenance:
            made = row.provenance
            say(
                f"{escape(row.name)}: written by deflare {escape(made.get('deflare_version', '?'))}"
                f" with {escape(made.get('deflare_checkpoint', '?'))} "
                f"(sha256 {escape(made.get('deflare_checkpoint_sha256', '?')[:12])}) "
                f"from {escape(made.get('deflare_source', '?'))}"
            )


def _wide_console() -> Console:
    """A console for wide tables: a pipe or file gets the whole table, not rich's 80 columns."""
    return Console(width=None if sys.stdout.isatty() else 200)


def _print_stats_summary(sources: list[Path], groups: list) -> None:
    from .stats import summarise

    table = Table(title="recordings: min / median / max over files")
    for column in ("source", "files", "M ev/s", "active/20 ms", "median ev/active px", "flips"):
        table.add_column(column, justify="left" if column == "source" else "right", no_wrap=True)
    for source, rows in zip(sources, groups, strict=True):
        ranges = summarise(rows)
        cells = [
            "/".join(f"{v:{fmt}}" for v in ranges[name])
            for name, fmt in (
                ("rate_meps", ".2f"),
                ("active_percent", ".1f"),
                ("median_per_active_pixel", "g"),
                ("flip_percent", ".1f"),
            )
        ]
        table.add_row(escape(str(source)), str(len(rows)), *cells)
    _wide_console().print(table)


@app.command()
def visualize(
    files: Annotated[
        list[Path],
        typer.Argument(help="Event or voxel (.pt) files; with --compare: IN OUT [TARGET]."),
    ],
    out_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the pictures.")
    ] = Path("pictures"),
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare input, output [and target] side by side.")
    ] = False,
    gif: Annotated[bool, typer.Option("--gif", help="With --compare: an animation too.")] = False,
    segment: Annotated[
        int | None, typer.Option("--segment", help="Segment whose voxel bins to draw [0].")
    ] = None,
    windows: Annotated[
        int | None, typer.Option("--windows", help="Time windows of the frame panels [4].")
    ] = None,
    time_window: TimeWindowOption = None,
    sensor_size: SensorSizeOption = None,
) -> None:
    """Draw events and voxels: 3D scatter, red/blue frames, event rate, voxel bins."""
    from .viz import compare_files, visualize_file

    with reporting_errors():
        settings = load_settings(
            VisualizeSettings,
            None,
            {
                "segment": segment,
                "num_windows": windows,
                "read": {
                    "time_window_ms": _parsed(parse_time_window, time_window),
                    "sensor_size": _parsed(parse_sensor_size, sensor_size),
                },
                "gif": gif or None,
            },
        )
        if compare:
            written = compare_files(files, out_dir, settings)
        else:
            written = [path for file in files for path in visualize_file(file, out_dir, settings)]
    for path in written:
        say(f"wrote {escape(str(path))}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Training checkpoint (RUN_DIR/best.pt).")],
    output: Annotated[Path, typer.Argument(help="Model file to write (.pt).")],
) -> None:
    """Keep only the model of a training checkpoint (a few MB), for sharing or shipping."""
    from .checkpoint import export_checkpoint

    with reporting_errors():
        check_distinct(checkpoint, output)
        size = export_checkpoint(checkpoint, output)
    say(f"[green]exported[/] {escape(str(output))} ({size / 2**20:.1f} MiB)")


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="Trained model (RUN_DIR/best.pt).")],
    data_dir: Annotated[
        Path,
        typer.Argument(help="Labelled validation pairs from deflare synth (not the test set)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Model to write [CHECKPOINT's name + .calibrated.pt]."),
    ] = None,
    min_kept: Annotated[
        float | None,
        typer.Option("--min-kept", help="Share of non-flare events to keep [0.97]."),
    ] = None,
    max_share_below: Annotated[
        float | None,
        typer.Option(
            "--max-share-below",
            help="Share of pairs that may keep less than --min-kept on their own, beside the "
            "mean; 0: every pair must keep it [1: no bound].",
        ),
    ] = None,
    min_light_kept: Annotated[
        float | None,
        typer.Option(
            "--min-light-kept",
            help="Share of the light sources' own events to keep (e.g. 0.9); --min-kept then "
            "applies to the background alone [unset: both count as non-flare].",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write every pair's flare removed and non-flare kept at every margin to "
            "this CSV: the pairs below --min-kept are the ones that hold the margin up.",
        ),
    ] = None,
    device: DeviceOption = None,
    precision: InferPrecisionOption = None,
    engine: EngineOption = None,
    tiling: TilingOption = None,
    config: ConfigOption = None,
) -> None:
    """Choose the removal margin that keeps --min-kept of the non-flare events; export the model
    with it (deflare deflare then uses it by default)."""
    from .calibrate import calibrate as run_calibration
    from .calibrate import default_output
    from .infer import LONE_EVENT_MARGIN

    with reporting_errors():
        target = output or default_output(checkpoint)
        written = [target] if report is None else [target, report]
        for path in written:
            check_distinct(checkpoint, path)
            check_writable(path)  # now, not after the whole calibration
        if report is not None and report.resolve() == target.resolve():
            raise OutputError(f"{report}: --report and the model's output name the same file")
        settings = load_settings(
            CalibrateSettings,
            config,
            {
                "data_dir": data_dir,
                "min_kept": min_kept,
                "max_share_below": max_share_below,
                "min_light_kept": min_light_kept,
                "output": target,
                "report": report,
                "infer": {
                    "checkpoint": checkpoint,
                    "tiles": {"mode": tiling},
                    "runtime": {"device": device, "precision": precision, "engine": engine},
                },
            },
        )
        with progress_bar() as progress:
            result = run_calibration(settings, progress)
    _wide_console().print(_calibration_table(result, settings))
    if report is not None:
        say(f"every pair at every margin: {escape(str(report))}")
    if result.margin is not None and result.margin > LONE_EVENT_MARGIN:
        picked = next(score for score in result.scores if score.margin == result.margin)
        say(
            f"[yellow]note:[/] above margin {LONE_EVENT_MARGIN} no cell holding a single event "
            f"loses it: a perfect model could remove only {picked.reachable:.1%} of these pairs' "
            "flare there, and sparse flare (one event per cell, as at night) stays in place"
        )
    if result.margin is None:
        bound = (
            f" with at most {settings.max_share_below:.0%} of the pairs below it"
            if settings.max_share_below < 1
            else ""
        )
        kept = f"{settings.min_kept:.1%} of the non-flare events"
        if settings.min_light_kept is not None:
            kept = (f"{settings.min_kept:.1%} of the background and "
                    f"{settings.min_light_kept:.1%} of the light's events")  # fmt: skip
        say(f"[red]error:[/] no margin keeps {kept}{bound}")
        raise typer.Exit(1)
    say(f"[green]margin {result.margin:.2f}[/]: model written to {escape(str(target))}")


def _calibration_table(result: Calibration, settings: CalibrateSettings) -> Table:
    """Each margin's mean scores, the pairs under ``min_kept``, the chosen margin starred; the
    background and the light's events apart where the pairs label them."""
    table = Table(title=f"calibration on {result.pairs} pairs")
    split = settings.min_light_kept is not None
    judged = "background_kept" if split else "others_kept"
    below = f"pairs keeping < {settings.min_kept:.0%}" + (" of background" if split else "")
    columns = ["margin", "flare removed", "non-flare kept", below, "a perfect model's reach"]
    if result.light_labels:
        columns[3:3] = ["background kept", "light kept"]
    for column in columns:
        table.add_column(column, justify="right")
    for score in result.scores:
        chosen = " *" if score.margin == result.margin else ""
        cells = [
            f"{score.margin:.2f}{chosen}",
            f"{score.flare_recall:.1%}",
            f"{score.non_flare_kept:.1%}",
            f"{score.pairs_below(settings.min_kept, judged)} of {len(getattr(score, judged))}",
            f"{score.reachable:.1%}",
        ]
        if result.light_labels:
            cells[3:3] = [f"{score.mean('background_kept'):.1%}", f"{score.mean('light_kept'):.1%}"]
        table.add_row(*cells)
    return table


@app.command()
def evaluate(
    data_dir: DataDirOption = None,
    flare_dir: FlareDirOption = None,
    clean_dir: CleanDirOption = None,
    pred_dir: Annotated[
        Path | None,
        typer.Option("--pred-dir", help="Score outputs made elsewhere (with --clean-dir)."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated method names, or 'all' [all but the model ones]: "
            + "; ".join(f"{method.name}: {method.help}" for method in METHODS.values())
            + ".",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Model for the model methods.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Report stem: writes STEM.json, STEM.csv, STEM_files.csv."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Files in parallel [1].")
    ] = None,
    efr_f0: Annotated[
        float | None, typer.Option("--efr-f0", help="EFR notch frequency in Hz [50].")
    ] = None,
    device: DeviceOption = None,
    precision: InferPrecisionOption = None,
    engine: EngineOption = None,
    tiling: TilingOption = None,
    sensor_size: SensorSizeOption = None,
    config: ConfigOption = None,
) -> None:
    """Score deflare and classic filters against clean targets (E-Deflare metrics)."""
    from .evaluate import evaluate as run_evaluation

    with reporting_errors():
        settings = load_settings(
            EvaluateSettings,
            config,
            {
                "data_dir": data_dir,
                "flare_dir": flare_dir,
                "clean_dir": clean_dir,
                "pred_dir": pred_dir,
                "methods": _method_list(methods),
                "checkpoint": checkpoint,
                "output": output,
                "runtime": {
                    "workers": workers,
                    "device": device,
                    "precision": precision,
                    "engine": engine,
                },
                "tiles": {"mode": tiling},
                "read": {"sensor_size": _parsed(parse_sensor_size, sensor_size)},
                "baselines": {"efr_f0_hz": efr_f0},
            },
        )
        with progress_bar() as progress:
            report = run_evaluation(settings, progress)
    _print_report(report, settings)


def _method_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        resolve_methods(tuple(names))
    except DeflareError as error:
        raise typer.BadParameter(str(error)) from None
    return names


def _print_report(report, settings: EvaluateSettings) -> None:
    from .metrics import EVENT_METRICS, LIGHT_METRICS, TABLE_METRICS

    files = len({row["file"] for row in report.files})
    console = Console(width=max(Console().width, 110))
    console.print(_metrics_table(report, TABLE_METRICS, f"E-Deflare metrics, {files} file(s)"))
    if any("flare_f1" in scores for scores in report.methods.values()):
        title = "flare removal per event (from the inputs' is_flare labels)"
        labelled = [m for m in LIGHT_METRICS if any(m in s for s in report.methods.values())]
        console.print(_metrics_table(report, (*EVENT_METRICS, *labelled), title))
    for method, counts in report.undefined.items():
        notes = ", ".join(f"{metric} in {count} file(s)" for metric, count in counts.items())
        err_console.print(f"[yellow]{method}[/]: undefined {notes} (left out of the mean)")
    if settings.output is not None:
        say(f"report: {escape(str(settings.output))}.json / .csv / _files.csv")


def _metrics_table(report, metrics: tuple[str, ...], title: str) -> Table:
    from .metrics import LOWER_IS_BETTER

    table = Table(title=title, caption="* best in its column; arrows: which way is better")
    table.add_column("method")
    for metric in metrics:
        table.add_column(metric + (" ↓" if metric in LOWER_IS_BETTER else " ↑"), justify="right")
    best = {metric: report.best(metric) for metric in metrics}
    for method, scores in report.methods.items():
        cells = []
        for metric in metrics:
            value = scores.get(metric, float("nan"))
            text = "n/a" if value != value else f"{value:.4f}"
            cells.append(f"[bold green]*{text}[/]" if best[metric] == method else text)
        table.add_row(method, *cells)
    return table


@app.command()
def train(
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Where checkpoints and metrics go.")
    ] = None,
    data_dir: DataDirOption = None,
    flare_dir: FlareDirOption = None,
    clean_dir: CleanDirOption = None,
    val_dir: Annotated[
        Path | None, typer.Option("--val-dir", help="Validation pairs, laid out as --data-dir.")
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Share of pairs held out when no --val-dir [0.1]."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs [50].")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size [2].")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate [2e-4].")] = None,
    loss: Annotated[
        Loss | None,
        typer.Option(
            "--loss",
            help="mse: over all cells; balanced: flare-changed, scene and empty cells weigh "
            "equally (sparse data); mask: a model that learns which share of each cell is "
            "flare, every event weighing the same [mse].",
        ),
    ] = None,
    crop: Annotated[
        str | None,
        typer.Option("--crop", help="Training crop HxW in pixels, or 'full' [128x128]."),
    ] = None,
    context: Annotated[
        int | None,
        typer.Option(
            "--context",
            help="Pixels of context around each crop that the model sees and the loss leaves "
            "out, as deflare's tiles carry a halo (a DensityNet: its widest box) [0].",
        ),
    ] = None,
    flare_crops: Annotated[
        float | None,
        typer.Option("--flare-crops", help="Share of crops centred on flare (sparse data) [0]."),
    ] = None,
    f_maps: Annotated[
        str | None,
        typer.Option("--f-maps", help="Features per level, e.g. 16,32,64 or 32,64,128,256."),
    ] = None,
    backbone: Annotated[
        Backbone | None,
        typer.Option(
            "--backbone",
            help="pytorch-3dunet's U-Net, or DensityNet: a classifier of box densities "
            "(configs/density_net.yaml).",
        ),
    ] = None,
    pooling: Annotated[
        Pooling | None,
        typer.Option(
            "--pooling",
            help="xyt: halve bins and space per level [default]; xy: space alone, so 5+ levels "
            "fit 8 bins and the network sees further (5 levels: 108 px).",
        ),
    ] = None,
    device: DeviceOption = None,
    precision: Annotated[
        Precision | None,
        typer.Option("--precision", help="auto: bf16 on CUDA, fp32 on CPU."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue from a checkpoint (RUN/last.pt).")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from a checkpoint's weights with a fresh optimizer at step 0 "
            "(fine-tuning), e.g. the repository's candidates/unet_mask_2026-11-29.calibrated.pt "
            "(f_maps 16,32,64, --loss mask); the shipped default is fitted trees, which do not "
            "fine-tune: with model.flicker_head (configs/flicker_head.yaml) their trees are kept "
            "and only the head is fitted.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of everything [0].")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many steps in total.")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Voxel cache, shareable between runs [RUN_DIR/voxel_cache]."
        ),
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option("--max-minutes", help="Stop after this many minutes (validated, saved)."),
    ] = None,
    val_every: Annotated[
        int | None,
        typer.Option("--val-every", help="Validate every N steps [each epoch]."),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option("--num-workers", help="Processes that encode pairs and load batches [0]."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable pairs (reported), don't fail.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Start over in a run-dir that holds a run (removes it)."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Run 2 steps and write RUN_DIR/debug_output/ pictures."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Train the residual 3D U-Net on paired flare/clean event files."""
    from .train import train as run_training  # torch-heavy: import only when training

    with reporting_errors():
        settings = load_settings(
            TrainSettings,
            config,
            {
                "run_dir": run_dir,
                "data": {
                    "data_dir": data_dir,
                    "flare_dir": flare_dir,
                    "clean_dir": clean_dir,
                    "val_dir": val_dir,
                    "val_fraction": val_fraction,
                    "crop": _crop_setting(crop),
                    "context": context,
                    "flare_crops": flare_crops,
                    "num_workers": num_workers,
                    "cache_dir": cache_dir,
                    "skip_bad": skip_bad or None,
                },
                "runtime": {"device": device, "precision": precision},
                "model": {
                    "f_maps": parse_int_list(f_maps) if f_maps else None,
                    "backbone": backbone,
                    "pooling": pooling,
                    "output": "mask" if loss == "mask" else None,
                },
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "loss": loss,
                "resume": resume,
                "init_from": init_from,
                "seed": seed,
                "max_steps": max_steps,
                "max_minutes": max_minutes,
                "overwrite": overwrite or None,
                "val_every": val_every,
                "debug": debug or None,
            },
        )
        with progress_bar() as progress:
            result = run_training(settings, progress)
    _print_training(result)


def _parsed(parse: Callable[[str], object], text: str | None) -> object:
    """A flag's text parsed, or None when the flag was not given (an empty text is parsed, and
    refused by the parser, rather than ignored)."""
    return None if text is None else parse(text)


def _crop_setting(crop: str | None) -> object:
    if crop is None:
        return None
    return "full" if crop.strip().lower() == "full" else parse_sensor_size(crop)


def _print_training(result) -> None:
    if result.debug_dir is not None:
        say(f"[green]debug run done[/]: pictures in {escape(str(result.debug_dir))}")
        return
    table = Table(title="training", show_header=False)
    state = "[yellow]interrupted[/] (resume with --resume)" if result.interrupted else "done"
    table.add_row("status", state)
    table.add_row("steps / epochs", f"{result.steps} / {result.epochs_completed}")
    table.add_row("parameters", f"{result.parameters:,}")
    if result.history:
        last = result.history[-1]
        for name in ("mse", "pmse_4", "r_f1", "tp_f1"):
            model_score, raw_score = last[f"val_{name}"], last[f"raw_{name}"]
            table.add_row(f"val {name} (raw input)", f"{model_score:.5g} ({raw_score:.5g})")
        table.add_row("val event AUC (chance 0.5)", f"{last['val_event_auc']:.3f}")
    table.add_row("best metric", f"{result.best_metric:.5g}")
    table.add_row("last checkpoint", str(result.last_checkpoint))
    table.add_row("best checkpoint", str(result.best_checkpoint or "-"))
    metrics = result.run_dir / "metrics.csv"  # none for fitted trees: nothing validated
    table.add_row("metrics", str(metrics) if metrics.exists() else "-")
    for reason in result.skipped_pairs:
        table.add_row("[yellow]skipped[/]", escape(reason))
    Console().print(table)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn library errors into one red line on stderr and a non-zero exit."""
    try:
        yield
    except DeflareError as error:
        message = f"[bold red]error:[/] {escape(str(error))}"
        err_console.print(message, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: no output was written")
        raise typer.Exit(130) from None


@contextlib.contextmanager
def progress_bar() -> Iterator[object]:
    """A rich progress display on stderr; yields the library's ``progress(stage, done, total)``.
    Where stderr is no terminal (``nohup``, a batch job), a line now and then instead: hours of
    training in silence look like a hang."""
    if not err_console.is_terminal:
        yield ProgressLines(
            lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True)
        )
        return
    bar = ProgressBar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        SpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int, detail: str = "") -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, detail=detail)
        bar.update(tasks[stage], completed=done, total=total, detail=detail)

    with bar:
        yield report


class SpeedColumn(ProgressColumn):
    """Items per second, e.g. training steps."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f}/s" if speed else "", style="progress.data.speed")


def say(text: str) -> None:
    """A summary line on stdout (for commands whose data never goes to stdout)."""
    Console().print(text, soft_wrap=True, highlight=False)


def print_summary(output: str, text: str) -> None:
    """Print a command's summary on stdout, or on stderr when stdout carries the data."""
    console = err_console if output == STDIO else Console()
    console.print(text, soft_wrap=True, highlight=False)


def main() -> None:
    """Entry point of the ``deflare`` console script. SIGTERM (schedulers, ``timeout``) and
    SIGHUP (a closed terminal) stop a command as Ctrl-C does: temporary files are removed."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    app()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
