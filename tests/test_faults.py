"""Issue 15: hostile and careless input gets one line, a non-zero exit and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import flare_pair, write_deflare, write_pairs
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli.checkpoint import load_checkpoint
from deflare_cli.cli import app
from deflare_cli.errors import OutputError
from deflare_cli.io import atomic_output, find_pairs

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"), 2)


def train_args(pairs_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(pairs_dir), "--run-dir", str(run_dir), "--epochs", "2",
            "--crop", "16x16", "--f-maps", "8,16", "--batch-size", "2", *extra]  # fmt: skip


def one_line_error(result, *fragments: str) -> None:
    """A non-zero exit with one error (settings errors list their fields below it), the
    fragments in it, and no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert all(fragment in result.output for fragment in fragments), result.output


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lr", "inf"], "lr"),
        (["--lr", "nan"], "lr"),
        (["--crop", "0x0"], "crop"),
        (["--f-maps", "0,0"], "f_maps"),
    ],
    ids=["lr inf", "lr nan", "crop 0x0", "f-maps 0,0"],
)
def test_impossible_training_settings(tmp_path: Path, pairs_dir: Path, flags, fragment) -> None:
    result = runner.invoke(app, [*train_args(pairs_dir, tmp_path / "run"), *flags])
    one_line_error(result, fragment)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_diverging_training_stops_and_keeps_finite_weights(tmp_path: Path, pairs_dir) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, train_args(pairs_dir, run_dir, "--lr", "1e30"))
    one_line_error(result, "training diverged at step", "lower --lr")
    if (run_dir / "last.pt").exists():  # a checkpoint saved before the loss went bad
        state = load_checkpoint(run_dir / "last.pt")["model"]
        assert all(tensor.isfinite().all() for tensor in state.values())


def test_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "nan.pt")
    checkpoint = torch.load(path, weights_only=True)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.full_like(checkpoint["model"][name], float("nan"))
    torch.save(checkpoint, path)
    source = write_deflare(tmp_path / "in.h5", flare_pair()[0])
    result = runner.invoke(
        app, ["deflare", str(source), str(tmp_path / "out.h5"), "--checkpoint", str(path)]
    )
    one_line_error(result, "nan.pt", "non-finite weights")
    assert not (tmp_path / "out.h5").exists()


def test_empty_sensor_size_is_refused(tmp_path: Path) -> None:
    source = write_deflare(tmp_path / "in.h5", flare_pair()[0])
    result = runner.invoke(app, ["info", str(source), "--sensor-size", ""])
    one_line_error(result, "sensor size must look like HEIGHTxWIDTH")


def test_leftover_temp_files_are_not_taken_as_input(tmp_path: Path, pairs_dir: Path) -> None:
    """kill -9 leaves `.NAME.*.tmp.h5`; a rerun must neither read nor pair it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_deflare(inputs / "a.h5", flare_pair()[0])
    (inputs / ".a.h5.x1y2.tmp.h5").write_bytes(b"\x89HDF\r\n\x1a\n half written")
    identity = write_checkpoint(tmp_path / "identity.pt")
    out = tmp_path / "out"
    result = runner.invoke(app, ["deflare", str(inputs), str(out), "--checkpoint", str(identity)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.h5"]
    flare_dir = pairs_dir / "background_with_flare_events"
    stray = flare_dir / ".composed_00002_bg_flare.h5.q.tmp.h5"
    stray.write_bytes(b"junk")
    try:
        assert len(find_pairs(flare_dir, pairs_dir / "background_with_light_events")) == 2
    finally:
        stray.unlink()


def test_an_output_made_meanwhile_by_another_run_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    with pytest.raises(OutputError, match="another run created it meanwhile"):
        with atomic_output(target, exclusive=True) as temp_path:
            temp_path.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # the other run finished first
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    with atomic_output(target) as temp_path:  # --overwrite: replaced
        temp_path.write_bytes(b"mine")
    assert target.read_bytes() == b"mine"


def test_two_inputs_that_would_share_an_output_are_refused(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    events = flare_pair()[0]
    write_deflare(inputs / "x.h5", events)
    write_deflare(inputs / "x.hdf5", events)
    identity = write_checkpoint(tmp_path / "identity.pt")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["deflare", str(inputs), str(out), "--checkpoint", str(identity),
         "--output-format", "evt3"],
    )  # fmt: skip
    one_line_error(result, "x.h5", "x.hdf5", "would be written there")
    assert not out.exists() or not any(out.iterdir())


def outside_reference(folder: Path, kind: str) -> Path:
    """A file whose /events/t reaches outside it: an external link, external raw storage, or a
    virtual dataset whose source file is missing."""
    import h5py
    import numpy as np

    source = folder / "other.h5"
    with h5py.File(source, "w") as h5:
        h5["t"] = np.arange(10, dtype=np.int64)
    raw = folder / "raw.bin"
    raw.write_bytes(np.arange(10, dtype=np.int64).tobytes())
    path = folder / f"{kind}.h5"
    with h5py.File(path, "w") as h5:
        for key in "xyp":
            h5[f"events/{key}"] = np.zeros(10, np.uint16)
        if kind == "link":
            h5["events/t"] = h5py.ExternalLink(str(source), "t")
        elif kind == "external":
            h5.create_dataset("events/t", (10,), np.int64, external=[(str(raw), 0, 80)])
        else:
            layout = h5py.VirtualLayout((10,), np.int64)
            layout[:] = h5py.VirtualSource(str(folder / "missing.h5"), "t", shape=(10,))
            h5.create_virtual_dataset("events/t", layout, fillvalue=0)
        h5.attrs["resolution_height"], h5.attrs["resolution_width"] = 4, 4
    return path


@pytest.mark.parametrize("kind", ["link", "external", "virtual"])
def test_hdf5_data_outside_the_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = outside_reference(tmp_path, kind)
    result = runner.invoke(app, ["info", str(path)])
    one_line_error(result, path.name, "reads only data inside the file itself")
