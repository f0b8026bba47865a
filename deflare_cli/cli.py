"""The ``deflare`` command: a thin Typer skin over the library.

Each command reads its options, builds one settings object, calls one library function and
prints a short summary. Progress, warnings and errors go to stderr, so that ``-o -`` can stream
data on stdout: ``deflare encode in.h5 -o - | deflare decode - -o out.h5``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TimeElapsedColumn
from rich.progress import Progress as ProgressBar

from . import __version__
from .codec import decode_file, encode_file
from .errors import DeflareError
from .io import STDIO, open_source, open_target
from .settings import (
    Compression,
    DecodeSettings,
    EncodeSettings,
    load_settings,
    parse_sensor_size,
    parse_time_window,
)

app = typer.Typer(
    name="deflare",
    help="Remove lens flare from event-camera recordings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

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
SeedOption = Annotated[
    int | None, typer.Option("--seed", help="Seed of the random timestamp generator [default: 0].")
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
    config: ConfigOption = None,
) -> None:
    """Encode events into voxel grids: 20 ms segments of 8 bins, net polarity per pixel."""
    with reporting_errors():
        settings = load_settings(
            EncodeSettings,
            config,
            {
                "read": {
                    "sensor_size": parse_sensor_size(sensor_size) if sensor_size else None,
                    "time_window_ms": parse_time_window(time_window) if time_window else None,
                },
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
    """A rich progress display on stderr; yields the library's ``progress(stage, done, total)``."""
    bar = ProgressBar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield report


def print_summary(output: str, text: str) -> None:
    """Print a command's summary on stdout, or on stderr when stdout carries the data."""
    console = err_console if output == STDIO else Console()
    console.print(text, soft_wrap=True, highlight=False)


def main() -> None:
    """Entry point of the ``deflare`` console script."""
    app()
