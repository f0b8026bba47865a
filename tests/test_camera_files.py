"""Files that cameras and other tools wrote (tests/camera_files/, README there): they read, encode
and deflare; the sensor size comes from the file or --sensor-size, never from a guess."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import same_events, write_deflare, write_dsec
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli.cli import app
from deflare_cli.errors import InputError
from deflare_cli.io import EventFileReader, read_events
from deflare_cli.settings import ReadSettings

faery = pytest.importorskip("faery")  # a dev dependency: installed by `make install`

CAMERA_FILES = Path(__file__).parent / "camera_files"
GEN3_EVT2 = CAMERA_FILES / "gen3_evt2.raw"  # header without a size; the sensor is 640x480
DVS_ES = CAMERA_FILES / "dvs.es"  # 320x240 in its header
GEN3_SIZE = (480, 640)


def faery_array(path: Path, width_height: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The file as faery itself decodes it: the reference the reader must match."""
    return faery.events_stream_from_file(path, dimensions_fallback=width_height).to_array()


@pytest.mark.parametrize(("path", "size"), [(GEN3_EVT2, GEN3_SIZE), (DVS_ES, None)])
def test_real_camera_files_read_as_their_decoder_reads_them(path: Path, size) -> None:
    events = read_events(path, ReadSettings(sensor_size=size))
    reference = faery_array(path)
    assert len(events) == len(reference) > 10_000
    assert np.array_equal(events.t, reference["t"])
    assert np.array_equal(events.x, reference["x"]) and np.array_equal(events.y, reference["y"])
    assert np.array_equal(events.p, np.where(reference["on"], 1, -1))
    assert all(column.flags.c_contiguous for column in (events.t, events.x, events.y, events.p))
    assert events.sensor_size == (size or (240, 320))


@pytest.mark.parametrize(("path", "size"), [(GEN3_EVT2, "480x640"), (DVS_ES, None)])
def test_real_camera_files_encode_and_deflare(tmp_path: Path, path: Path, size) -> None:
    """The first release crashed here on every camera file (strided columns from faery)."""
    identity = write_checkpoint(tmp_path / "identity.pt")
    size_option = ["--sensor-size", size] if size else []
    runner = CliRunner()
    encoded = runner.invoke(app, ["encode", str(path), "-o", str(tmp_path / "v.pt"), *size_option])
    assert encoded.exit_code == 0, encoded.output
    out = tmp_path / "out.h5"
    result = runner.invoke(
        app, ["deflare", str(path), str(out), "--checkpoint", str(identity), *size_option]
    )
    assert result.exit_code == 0, result.output
    size_tuple = tuple(int(v) for v in size.split("x")) if size else None
    source = read_events(path, ReadSettings(sensor_size=size_tuple))
    assert same_events(read_events(out), source)  # the identity model keeps every event
    info = runner.invoke(app, ["info", str(path), *size_option])
    assert info.exit_code == 0 and f"{source.width}x{source.height}" in info.output


def test_a_file_without_its_size_asks_for_sensor_size(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--sensor-size") as caught:
        read_events(GEN3_EVT2)
    assert str(GEN3_EVT2) in str(caught.value)
    result = CliRunner().invoke(app, ["deflare", str(GEN3_EVT2), str(tmp_path / "out.h5")])
    assert result.exit_code == 1 and "--sensor-size" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.h5").exists()


@pytest.fixture(scope="module")
def gen3_array() -> np.ndarray:
    return faery_array(GEN3_EVT2)


def write_with_faery(path: Path, array: np.ndarray, **options) -> Path:
    faery.events_stream_from_array(array, dimensions=(640, 480)).to_file(path, **options)
    return path


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("evt3.raw", {"version": "evt3"}),
        ("evt2.raw", {"version": "evt2"}),
        ("r.aedat4", {}),
        ("r.dat", {}),
        ("r.csv", {}),
    ],
)
def test_formats_written_by_faery_from_camera_events(
    tmp_path: Path, gen3_array: np.ndarray, name: str, options: dict
) -> None:
    path = write_with_faery(tmp_path / name, gen3_array, **options)
    size = GEN3_SIZE if name.endswith(".csv") else None  # csv has no header
    events = read_events(path, ReadSettings(sensor_size=size))
    assert events.sensor_size == GEN3_SIZE
    assert np.array_equal(events.t, gen3_array["t"])
    assert np.array_equal(events.x, gen3_array["x"]) and np.array_equal(events.y, gen3_array["y"])


def test_evt3_without_geometry_needs_the_size(tmp_path: Path, gen3_array: np.ndarray) -> None:
    """As a 1280x720 EVT3 recording did: deflare used to guess 640x480 and fail on x >= 640."""
    path = write_with_faery(tmp_path / "r.raw", gen3_array, version="evt3")
    header_lines = [b"% format EVT3;width=640;height=480\n", b"% geometry 640x480\n"]
    data = path.read_bytes()
    assert all(line in data for line in header_lines)
    for line in header_lines:
        data = data.replace(line, b"")
    path.write_bytes(data)
    with pytest.raises(InputError, match="--sensor-size"):
        read_events(path)
    events = read_events(path, ReadSettings(sensor_size=(720, 1280)))
    assert events.sensor_size == (720, 1280) and len(events) == len(gen3_array)


def test_hdf5_sizes(tmp_path: Path, events) -> None:
    with pytest.raises(InputError, match="--sensor-size"):
        read_events(write_deflare(tmp_path / "nosize.h5", events, with_size=False))
    dsec = write_dsec(tmp_path / "dsec.h5", events, t_offset=0)
    assert read_events(dsec).sensor_size == (480, 640)  # DSEC's cameras; its files hold no size


@pytest.mark.parametrize("value", ["tall", np.nan, np.array([480, 640]), -5, 2.5, 70_000], ids=str)
def test_bad_resolution_attributes_get_one_line(tmp_path: Path, events, value) -> None:
    path = write_deflare(tmp_path / "bad.h5", events)
    with h5py.File(path, "a") as h5:
        h5.attrs["resolution_height"] = value
    with pytest.raises(InputError, match="resolution_height/width"):
        read_events(path)
    assert read_events(path, ReadSettings(sensor_size=(480, 640))).sensor_size == (480, 640)


@pytest.mark.parametrize("value", [[480], "480x640", [np.inf, 640]], ids=str)
def test_bad_event_utils_resolution(tmp_path: Path, events, value) -> None:
    from conftest import write_event_utils

    path = write_event_utils(tmp_path / "eu.h5", events)
    with h5py.File(path, "a") as h5:
        h5.attrs["sensor_resolution"] = value
    with pytest.raises(InputError, match="sensor_resolution"):
        read_events(path)


def test_camera_files_stream_window_by_window() -> None:
    """Sorted camera files are decoded chunk by chunk, not loaded whole."""
    whole = read_events(DVS_ES)
    with EventFileReader(DVS_ES) as reader:
        assert reader._loaded is None  # streamed
        start, end = reader.span_us
        edges = list(range(start, end, 7_300)) + [end]  # windows cross faery's chunks
        pieces = [reader.read(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        assert sum(len(piece) for piece in pieces) == len(whole)
        assert np.array_equal(np.concatenate([piece.t for piece in pieces]), whole.t)
        assert len(reader._camera._buffer) < len(whole) // 4  # holds about one chunk
        again = reader.read(edges[2], edges[3])  # an earlier window: a new pass
        assert same_events(again, whole.time_slice(edges[2], edges[3]))


def test_backward_timestamps_in_camera_files_come_out_as_faery_decodes_them(
    tmp_path: Path,
) -> None:
    """faery's decoders raise a timestamp that goes back to the one before (as Metavision
    does); deflare reads what faery decodes, so such a file streams like a sorted one."""
    path = tmp_path / "shuffled.csv"
    path.write_text("t,x,y,on\n300,1,1,1\n100,2,2,0\n200,3,3,1\n")
    events = read_events(path, ReadSettings(sensor_size=(4, 4)))
    assert events.t.tolist() == [300, 300, 300] and events.x.tolist() == [1, 2, 3]


def test_camera_file_outside_the_sensor_names_the_event(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("t,x,y,on\n1,1,1,1\n2,9,1,0\n")
    with pytest.raises(InputError, match=r"x=9 must be .* width=4.*--sensor-size"):
        read_events(path, ReadSettings(sensor_size=(4, 4)))
