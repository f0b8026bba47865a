"""Output formats: every format deflare writes reads back exactly; deflare writes the input's
own format; DSEC outputs open as DSEC's loader opens them."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import random_events, same_events, write_deflare, write_dsec, write_event_utils
from test_camera_files import DVS_ES, GEN3_EVT2
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli.cli import app
from deflare_cli.errors import OutputError
from deflare_cli.events import Events, make_events
from deflare_cli.io import EventFileReader, open_writer, output_format, read_events
from deflare_cli.settings import ReadSettings, WriteSettings

pytest.importorskip("faery")  # a dev dependency: installed by `make install`

FORMAT_FILES = {
    "deflare": "out.h5",
    "dsec": "out.h5",
    "event_utils": "out.h5",
    "evt2": "out.raw",
    "evt3": "out.raw",
    "dat": "out.dat",
    "aedat4": "out.aedat4",
    "es": "out.es",
    "csv": "out.csv",
}


@pytest.fixture
def stream() -> Events:
    """Sorted events of a 480x640 sensor starting late (t0 1,234,567 us), with repeated times."""
    events = random_events(5000, 80_000, (480, 640), seed=4)
    return make_events(events.t + 1_234_567, events.x, events.y, events.p, (480, 640))


def write_in_windows(path: Path, events: Events, format_name: str) -> Path:
    with open_writer(path, events.sensor_size, WriteSettings(), format_name) as writer:
        for start in range(0, len(events), 1700):  # three appends, as deflare streams
            writer.append(events.select(slice(start, start + 1700)))
        writer.finish(None, {"deflare_version": "test"})
    return path


@pytest.mark.parametrize("format_name", sorted(FORMAT_FILES))
def test_every_format_reads_back_exactly(tmp_path: Path, stream: Events, format_name) -> None:
    path = write_in_windows(tmp_path / FORMAT_FILES[format_name], stream, format_name)
    size = (480, 640) if format_name == "csv" else None  # csv has no header
    with EventFileReader(path, ReadSettings(sensor_size=size)) as reader:
        assert reader.format == format_name
    loaded = read_events(path, ReadSettings(sensor_size=size))
    assert loaded.sensor_size == (480, 640)
    for key in "txyp":
        assert np.array_equal(getattr(loaded, key), getattr(stream, key)), key
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_dsec_output_has_dsec_dtypes_and_opens_as_dsec_loads_it(
    tmp_path: Path, stream: Events
) -> None:
    path = write_in_windows(tmp_path / "out.h5", stream, "dsec")
    with h5py.File(path) as h5:
        dtypes = {key: h5[f"events/{key}"].dtype for key in "txyp"}
        assert dtypes == {"t": "u4", "x": "u2", "y": "u2", "p": "u1"}
        assert 32001 in h5["events/t"]._filters or "32001" in h5["events/t"]._filters  # Blosc
        t_offset = int(h5["t_offset"][()])
        ms_to_idx = np.asarray(h5["ms_to_idx"], dtype=np.int64)
        times = np.asarray(h5["events/t"], dtype=np.int64)
        # DSEC's EventSlicer: rows of [t_start, t_end) from ms_to_idx, then exact by time
        for start_ms, end_ms in ((0, 10), (7, 33), (40, 81)):
            lo, hi = ms_to_idx[start_ms], ms_to_idx[min(end_ms, len(ms_to_idx) - 1)]
            window = times[lo:hi] + t_offset
            first = t_offset + start_ms * 1000
            wanted = stream.t[(stream.t >= first) & (stream.t < t_offset + end_ms * 1000)]
            assert np.array_equal(window[window < t_offset + end_ms * 1000], wanted)
        assert ms_to_idx[0] == 0 and ms_to_idx[-1] == len(times)
        assert np.all(np.diff(ms_to_idx) >= 0)
        for k in range(len(ms_to_idx)):
            assert ms_to_idx[k] == np.searchsorted(times, k * 1000, side="left")


def test_dsec_refuses_times_beyond_32_bits(tmp_path: Path, stream: Events) -> None:
    late = make_events(
        np.r_[stream.t[:10], stream.t[10:] + (1 << 32)],
        stream.x, stream.y, stream.p, stream.sensor_size,
    )  # fmt: skip
    with pytest.raises(OutputError, match="32-bit"):
        write_in_windows(tmp_path / "out.h5", late, "dsec")
    assert not list(tmp_path.iterdir())


def input_files(folder: Path, events: Events) -> dict[str, tuple[Path, tuple | None]]:
    """One input per readable format: (path, --sensor-size or None)."""
    import faery

    array = np.empty(len(events), faery.EVENTS_DTYPE)
    array["t"], array["x"], array["y"], array["on"] = events.t, events.x, events.y, events.p > 0
    files = {
        "deflare": (write_deflare(folder / "a.h5", events), None),
        "dsec": (write_dsec(folder / "b.h5", events, t_offset=1_000_000), None),
        "event_utils": (write_event_utils(folder / "c.hdf5", events), None),
        "evt2": (GEN3_EVT2, (480, 640)),
        "es": (DVS_ES, None),
    }
    for name, suffix, options in (("evt3", ".raw", {"version": "evt3"}), ("dat", ".dat", {}),
                                  ("aedat4", ".aedat4", {}), ("csv", ".csv", {})):  # fmt: skip
        path = folder / f"f_{name}{suffix}"
        faery.events_stream_from_array(array, dimensions=(640, 480)).to_file(path, **options)
        files[name] = (path, (480, 640) if name == "csv" else None)
    return files


def test_deflare_writes_the_input_format_back(tmp_path: Path, stream: Events) -> None:
    """With the identity model, every input comes back as itself, in its own format."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    identity = write_checkpoint(tmp_path / "identity.pt")
    runner = CliRunner()
    for name, (path, size) in input_files(inputs, stream).items():
        out = tmp_path / f"out_{name}{path.suffix}"
        size_option = ["--sensor-size", f"{size[0]}x{size[1]}"] if size else []
        result = runner.invoke(
            app, ["deflare", str(path), str(out), "--checkpoint", str(identity), *size_option]
        )
        assert result.exit_code == 0, (name, result.output)
        settings = ReadSettings(sensor_size=size)
        with EventFileReader(out, settings) as reader:
            assert reader.format == name
        assert same_events(read_events(out, settings), read_events(path, settings)), name
        if name == "dsec":
            with h5py.File(out) as h5:
                assert int(h5["t_offset"][()]) == 1_000_000  # kept from the input


def test_folder_outputs_keep_names_and_formats(tmp_path: Path, stream: Events) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_deflare(inputs / "x.h5", stream)
    write_event_utils(inputs / "x.hdf5", stream)  # the same stem: must not share an output
    identity = write_checkpoint(tmp_path / "identity.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["deflare", str(inputs), str(out), "--checkpoint", str(identity)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["x.h5", "x.hdf5"]
    with EventFileReader(out / "x.hdf5") as reader:
        assert reader.format == "event_utils"


def test_output_format_choice(tmp_path: Path) -> None:
    assert output_format("auto", tmp_path / "o.h5", "dsec") == "dsec"
    assert output_format("auto", tmp_path / "o.h5", "evt2") == "deflare"
    assert output_format("auto", tmp_path / "o.raw", "evt2") == "evt2"
    assert output_format("auto", tmp_path / "o.raw", "dsec") == "evt3"
    assert output_format("auto", tmp_path / "o.aedat4", "deflare") == "aedat4"
    assert output_format("event_utils", tmp_path / "o.h5", "dsec") == "event_utils"
    with pytest.raises(OutputError, match="must end in .raw"):
        output_format("evt3", tmp_path / "o.h5", "deflare")
    with pytest.raises(OutputError, match="name the file .h5"):
        output_format("dsec", tmp_path / "o.es", "deflare")


def test_output_format_flag_and_bad_requests(tmp_path: Path, stream: Events, monkeypatch) -> None:
    source = write_deflare(tmp_path / "in.h5", stream)
    identity = write_checkpoint(tmp_path / "identity.pt")
    runner = CliRunner()
    args = ["--checkpoint", str(identity)]
    result = runner.invoke(
        app, ["deflare", str(source), str(tmp_path / "o.h5"), "--output-format", "dsec", *args]
    )
    assert result.exit_code == 0, result.output
    assert EventFileReader(tmp_path / "o.h5").format == "dsec"
    for target, extra, message in (
        ("o.mp4", [], None),
        ("p.h5", ["--output-format", "evt3"], "must end in .raw"),
        ("o.raw", ["--output-format", "evt9"], None),
    ):
        result = runner.invoke(app, ["deflare", str(source), str(tmp_path / target), *extra, *args])
        assert result.exit_code != 0, (target, result.output)
        assert message is None or message in result.output
        assert not (tmp_path / target).exists()
    monkeypatch.setitem(sys.modules, "faery", None)
    result = runner.invoke(app, ["deflare", str(source), str(tmp_path / "n.es"), *args])
    assert result.exit_code == 1 and "deflare[formats]" in result.output
    assert not (tmp_path / "n.es").exists()
