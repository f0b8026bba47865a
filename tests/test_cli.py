"""The `deflare encode` / `deflare decode` commands, good and bad input, through Typer's runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import file_digest, same_events, write_deflare, write_dsec
from typer.testing import CliRunner

from deflare_cli.cli import app
from deflare_cli.events import make_events
from deflare_cli.io import read_events, read_voxels
from deflare_cli.settings import (
    DecodeSettings,
    EncodeSettings,
    SynthSettings,
    TrainSettings,
    load_settings,
)

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_encode_then_decode_round_trip(tmp_path: Path, deflare_file: Path, events) -> None:
    voxel_path, out_path = tmp_path / "v.pt", tmp_path / "out.h5"
    result = invoke("encode", deflare_file, "-o", voxel_path)
    assert result.exit_code == 0, result.output
    assert "5 segments x 8 bins x 48x64" in result.output
    voxels = read_voxels(voxel_path)
    assert voxels.data.sum().item() == events.p.sum()
    assert voxels.source == str(deflare_file)
    result = invoke("decode", voxel_path, "-o", out_path, "--seed", 3, "--compression", "zstd")
    assert result.exit_code == 0, result.output
    decoded = read_events(out_path)
    assert len(decoded) == np.abs(voxels.data.numpy()).sum()  # |n| events per cell
    assert decoded.sensor_size == events.sensor_size


def test_encode_flags_and_config_file(tmp_path: Path, deflare_file: Path) -> None:
    config = tmp_path / "codec.yaml"
    config.write_text("codec:\n  num_bins: 4\n  segment_us: 10000\n")
    out = tmp_path / "v.pt"
    result = invoke(
        "encode", deflare_file, "-o", out, "--config", config, "--bins", 5,
        "--sensor-size", "100x200", "--time-window", "10:60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    voxels = read_voxels(out)
    assert tuple(voxels.data.shape) == (5, 5, 100, 200)  # flag beats file: 5 bins
    assert voxels.segment_us == 10_000 and voxels.t0_us == 10_000


def test_pipe_through_stdin_and_stdout(tmp_path: Path, deflare_file: Path) -> None:
    out = tmp_path / "piped.h5"
    command = [sys.executable, "-m", "deflare_cli"]
    encoder = subprocess.Popen([*command, "encode", str(deflare_file), "-o", "-"],
                               stdout=subprocess.PIPE)  # fmt: skip
    decoder = subprocess.run([*command, "decode", "-", "-o", str(out)], stdin=encoder.stdout,
                             capture_output=True, text=True)  # fmt: skip
    encoder.stdout.close()
    assert encoder.wait() == 0 and decoder.returncode == 0, decoder.stderr
    direct = tmp_path / "direct.h5"
    assert invoke("encode", deflare_file, "-o", tmp_path / "v.pt").exit_code == 0
    assert invoke("decode", tmp_path / "v.pt", "-o", direct).exit_code == 0
    assert same_events(read_events(out), read_events(direct))


def test_dsec_time_window_from_cli(tmp_path: Path, events) -> None:
    shifted = make_events(events.t + 5000, events.x, events.y, events.p, events.sensor_size)
    path = write_dsec(tmp_path / "dsec.h5", shifted, t_offset=5000)
    out = tmp_path / "v.pt"
    result = invoke("encode", path, "-o", out, "--sensor-size", "48x64", "--time-window", "0:40")
    assert result.exit_code == 0, result.output
    voxels = read_voxels(out)
    assert voxels.num_segments == 2 and voxels.t0_us == 5000
    assert voxels.data.sum().item() == shifted.time_slice(5000, 45_000).p.sum()


def test_help_on_every_command() -> None:
    for command in ([], ["encode"], ["decode"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


# ------------------------------------------------------------------- bad input


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as h5:
        for name, data in datasets.items():
            h5[name.replace("__", "/")] = data
    return path


def _events_h5(path: Path, t, x=None, y=None, p=None) -> Path:
    """A deflare-layout file of a 480x640 sensor with the given columns."""
    t = np.asarray(t)
    n = len(t)
    _h5(
        path,
        events__t=t,
        events__x=np.zeros(n, np.uint16) if x is None else np.asarray(x),
        events__y=np.zeros(n, np.uint16) if y is None else np.asarray(y),
        events__p=np.ones(n, np.int8) if p is None else np.asarray(p),
    )
    with h5py.File(path, "a") as h5:
        h5.attrs["resolution_height"], h5.attrs["resolution_width"] = 480, 640
    return path


def _truncated(tmp_path: Path) -> Path:
    big = write_deflare(tmp_path / "full.h5", make_events(
        np.arange(200_000), np.zeros(200_000), np.zeros(200_000), np.ones(200_000)))  # fmt: skip
    data = big.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt(tmp_path: Path) -> Path:
    path = write_deflare(tmp_path / "corrupt.h5", make_events(
        np.arange(1000), np.zeros(1000), np.zeros(1000), np.ones(1000)))  # fmt: skip
    data = bytearray(path.read_bytes())
    data[:8] = b"\x89HDF\r\n\x1a\n"
    data[8:200] = os.urandom(192)  # destroy the superblock
    path.write_bytes(bytes(data))
    return path


BAD_EVENT_FILES = {
    "missing": (lambda d: d / "nothere.h5", "file not found"),
    "folder": (lambda d: d, "is a folder"),
    "not hdf5": (lambda d: _write(d / "text.h5", b"hello, not hdf5\n" * 10), "not an HDF5 file"),
    "empty bytes": (lambda d: _write(d / "zero.h5", b""), "not an HDF5 file"),
    "truncated": (_truncated, "truncated"),
    "corrupt": (_corrupt, "corrupt"),
    "unknown layout": (lambda d: _h5(d / "u.h5", frames=np.zeros(3)), "unknown event layout"),
    "missing dataset": (
        lambda d: _h5(d / "m.h5", events__t=np.arange(3), events__x=np.zeros(3)),
        "missing dataset /events/y",
    ),
    "length mismatch": (
        lambda d: _events_h5(d / "l.h5", np.arange(3), x=np.zeros(2, np.uint16)),
        "different lengths",
    ),
    "nan time": (lambda d: _events_h5(d / "n.h5", [0.0, np.nan, 2.0]), "NaN"),
    "negative time": (lambda d: _events_h5(d / "neg.h5", [-5, 0, 1]), "negative timestamp"),
    "outside sensor": (
        lambda d: _events_h5(d / "o.h5", [0, 1], x=np.array([10, 700], np.uint16)),
        "x=700, outside the 480x640 sensor",
    ),
    "no events": (lambda d: _events_h5(d / "e.h5", np.zeros(0, np.int64)), "contains no events"),
    "no sensor size": (
        lambda d: _h5(d / "z.h5", **{f"events__{k}": np.zeros(3, np.uint16) for k in "txyp"}),
        "--sensor-size",
    ),
    "string data": (
        lambda d: _h5(
            d / "s.h5", events__t=np.array([b"a"]), events__x=[0], events__y=[0], events__p=[1]
        ),  # fmt: skip
        "numeric",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_EVENT_FILES))
def test_bad_event_file_gives_one_clear_line(tmp_path: Path, case: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    make, expected = BAD_EVENT_FILES[case]
    path = make(inputs)
    digest = file_digest(path) if path.is_file() else None
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = invoke("encode", path, "-o", out_dir / "v.pt")
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.startswith("error:") and str(path) in message and expected in message
    assert "Traceback" not in result.output
    assert list(out_dir.iterdir()) == []  # no output, not even a temp file
    if digest:
        assert file_digest(path) == digest


def test_empty_time_window_is_an_error(tmp_path: Path, deflare_file: Path) -> None:
    result = invoke("encode", deflare_file, "-o", tmp_path / "v.pt", "--time-window", "500:600")
    assert result.exit_code == 1 and "no events in the time window 500-600 ms" in result.output
    assert not (tmp_path / "v.pt").exists()


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


BAD_VOXEL_FILES = {
    "event file": (
        lambda d: write_deflare(d / "e.pt", make_events([0], [0], [0], [1])),
        "not a PyTorch .pt archive",
    ),  # fmt: skip
    "pickled code": (lambda d: _save(d / "code.pt", {"x": Payload()}), "could run code"),
    "plain tensor": (lambda d: _save(d / "t.pt", torch.zeros(3)), "not a deflare voxel file"),
    "wrong shape": (
        lambda d: _save(
            d / "w.pt",
            {
                "format": "deflare-voxels/1",
                "voxels": torch.zeros(2, 3),
                "num_bins": 8,
                "sensor_size": [2, 2],
            },
        ),  # fmt: skip
        "float32 tensor of shape (S, B, H, W)",
    ),
    "truncated": (lambda d: _truncated_voxels(d), "not a voxel file"),
}


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _truncated_voxels(folder: Path) -> Path:
    from deflare_cli.codec import Voxels
    from deflare_cli.io import write_voxels

    path = folder / "cut.pt"
    write_voxels(path, Voxels(torch.ones(2, 8, 16, 16), 0, 20_000))
    path.write_bytes(path.read_bytes()[:3000])
    return path


@pytest.mark.parametrize("case", sorted(BAD_VOXEL_FILES))
def test_bad_voxel_file_gives_one_clear_line(tmp_path: Path, case: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make, expected = BAD_VOXEL_FILES[case]
    path = make(tmp_path)
    digest = file_digest(path)
    result = invoke("decode", path, "-o", tmp_path / "out.h5")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and expected in result.output
    assert str(path) in result.output
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "pwned.txt").exists()
    assert file_digest(path) == digest


def test_output_over_input_is_refused(tmp_path: Path, deflare_file: Path) -> None:
    digest = file_digest(deflare_file)
    result = invoke("encode", deflare_file, "-o", deflare_file)
    assert result.exit_code == 1 and "overwrite the input" in result.output
    assert file_digest(deflare_file) == digest


def test_bad_flags_are_clear(tmp_path: Path, deflare_file: Path) -> None:
    result = invoke("encode", deflare_file, "-o", tmp_path / "v.pt", "--sensor-size", "480by640")
    assert result.exit_code == 1 and "HEIGHTxWIDTH" in result.output
    result = invoke("encode", deflare_file, "-o", tmp_path / "v.pt", "--bins", 7)
    assert result.exit_code == 1 and "multiple of num_bins" in result.output
    config = tmp_path / "bad.yaml"
    config.write_text("codec:\n  num_bin: 8\n")
    result = invoke("encode", deflare_file, "-o", tmp_path / "v.pt", "--config", config)
    assert (
        result.exit_code == 1 and "codec.num_bin" in result.output and str(config) in result.output
    )
    assert not (tmp_path / "v.pt").exists()


CONFIG_SETTINGS = {"codec.yaml": EncodeSettings, "decode.yaml": DecodeSettings,
                   "synth.yaml": SynthSettings, "night_point_light.yaml": SynthSettings,
                   "train.yaml": TrainSettings, "default_model.yaml": TrainSettings,
                   "default_model_finetune.yaml": TrainSettings,
                   "synth_sparse.yaml": SynthSettings,
                   "synth_sparse_textured.yaml": SynthSettings,
                   "default_model_sparse.yaml": TrainSettings,
                   "long_context.yaml": TrainSettings,
                   "frame_norm.yaml": TrainSettings,
                   "density_net.yaml": TrainSettings,
                   "density_trees.yaml": TrainSettings,
                   "default_trees.yaml": TrainSettings,
                   "flicker_head.yaml": TrainSettings,
                   "peak_trees.yaml": TrainSettings}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIG_SETTINGS))
def test_every_shipped_config_loads_into_its_command_settings(name: str) -> None:
    """The files in configs/ are what the README tells users to run: a field renamed in the
    settings (or a typo in a file) must fail here, not in a user's hands."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(CONFIG_SETTINGS) == sorted(path.name for path in configs.glob("*.yaml"))
    required = {"out_dir": "somewhere"} if CONFIG_SETTINGS[name] is SynthSettings else {}
    load_settings(CONFIG_SETTINGS[name], configs / name, required)
