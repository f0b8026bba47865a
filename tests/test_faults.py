"""Issue 15: hostile and careless input gets one line, a non-zero exit and no traceback."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import flare_pair, write_deflare, write_pairs
from test_infer import write_checkpoint
from typer.testing import CliRunner

from deflare_cli.checkpoint import load_checkpoint
from deflare_cli.cli import app
from deflare_cli.errors import OutputError, SettingsError
from deflare_cli.events import make_events
from deflare_cli.io import EventFileReader, atomic_output, find_pairs, read_events, write_events
from deflare_cli.settings import ReadSettings, TrainSettings, WriteSettings, load_settings

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


def _hostile(path: Path, kind: str) -> Path:
    """Small files that used to make deflare allocate gigabytes or lose events silently."""
    n = 2_000
    t = np.arange(n, dtype=np.int64) * 50
    x, y = np.full(n, 3, np.uint16), np.full(n, 4, np.uint16)
    p = np.ones(n, np.int8)
    with h5py.File(path, "w") as h5:
        if kind == "event_utils ts 1e300":
            events = h5.create_group("events")
            ts = t / 1e6
            ts[-1] = 1e300
            events["ts"], events["xs"], events["ys"], events["ps"] = ts, x, y, p
            h5.attrs["sensor_resolution"] = (10, 10)
            return path
        events = h5.create_group("events")
        h5.attrs["resolution_height"], h5.attrs["resolution_width"] = 10, 10
        if kind == "declares 1e10 events":
            columns = (("t", np.int64), ("x", np.uint16), ("y", np.uint16), ("p", np.int8))
            for name, dtype in columns:
                events.create_dataset(name, shape=(10**10,), dtype=dtype, chunks=(4096,),
                                      compression="gzip")  # fmt: skip
            return path
        if kind == "float t 1e30":
            t = t.astype(np.float64)
            t[-1] = 1e30
        if kind == "x off the sensor":
            x[700] = 10
        if kind == "events 1e13 us apart":
            t[-1] = 10**13
        if kind == "uint64 t 2^63":
            t = t.astype(np.uint64)
            t[-1] = 2**63
        events["t"], events["x"], events["y"], events["p"] = t, x, y, p
        if kind.startswith("dsec"):
            h5["ms_to_idx"] = np.arange(0, n, 20, dtype=np.uint64)
            h5["t_offset"] = np.int64(0)
            if kind == "dsec ms_to_idx 1e12":
                h5["ms_to_idx"][20] = 10**12  # the row of 20 ms, where a window starts
            if kind == "dsec t_offset near int64 max":
                del h5["t_offset"]
                h5["t_offset"] = np.int64(2**63 - 10)
    return path


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("declares 1e10 events", "declares 10,000,000,000 events but stores only 0 of its"),
        ("events 1e13 us apart", "span 116 days"),
        ("float t 1e30", "out of range at event 1999"),
        ("event_utils ts 1e300", "out of range at event 1999"),
        ("uint64 t 2^63", "out of range at event 1999"),
        ("dsec ms_to_idx 1e12", "ms_to_idx points at row 1000000000000"),
        ("dsec t_offset near int64 max", "t_offset 9223372036854775798 is outside"),
    ],
)
def test_hostile_files_are_refused_before_allocating(tmp_path: Path, kind, fragment) -> None:
    source = _hostile(tmp_path / "in.h5", kind)
    before = source.read_bytes()
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    commands = [["deflare", str(source), str(tmp_path / "out.h5"), "--checkpoint",
                 str(checkpoint), "--sensor-size", "10x10"]]  # fmt: skip
    if "ms_to_idx" not in kind:  # info reads whole files; only windows use the index
        commands.append(["info", str(source)])
    for args in commands:
        result = runner.invoke(app, args)
        one_line_error(result, "in.h5", fragment)
    assert not (tmp_path / "out.h5").exists() and source.read_bytes() == before


def test_a_file_that_compresses_a_thousandfold_is_not_taken_for_a_crafted_one(
    tmp_path: Path,
) -> None:
    """Dense sorted timestamps under shuffle and zstd: every chunk written, yet a few KB stand
    for megabytes (``make bench`` wrote such a file and deflare refused to read it back)."""
    n = 4_000_000
    events = make_events(np.arange(n) // 1000, np.zeros(n), np.zeros(n), np.ones(n), (10, 10))
    path = tmp_path / "dense.h5"
    write_events(path, events, WriteSettings(compression="zstd"))
    with h5py.File(path) as h5:
        t = h5["events/t"]
        assert t.shape[0] * t.dtype.itemsize > 1000 * t.id.get_storage_size() + (1 << 20)
    assert np.array_equal(read_events(path).t, events.t)


@pytest.mark.parametrize(
    "kind", ["float t 1e30", "event_utils ts 1e300", "uint64 t 2^63", "x off the sensor"]
)
def test_drop_invalid_leaves_out_and_counts_what_cannot_be_placed(tmp_path: Path, kind) -> None:
    source = _hostile(tmp_path / "in.h5", kind)
    checkpoint = write_checkpoint(tmp_path / "m.pt")  # the identity: every event is kept
    args = ["deflare", str(source), str(tmp_path / "out.h5"), "--checkpoint", str(checkpoint)]
    one_line_error(runner.invoke(app, args), "in.h5", "--drop-invalid")
    result = runner.invoke(app, [*args, "--drop-invalid"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    bad = 700 if kind == "x off the sensor" else 1_999
    assert f"left out 1 event(s) that cannot be placed (first at event {bad}" in result.output
    row = next(line for line in result.output.splitlines() if "in.h5" in line and "│" in line)
    assert [cell.strip() for cell in row.split("│")][2:4] == ["1,999", "1,999"]
    assert row.split("│")[-2].strip() == "1"  # left out
    out = read_events(tmp_path / "out.h5")
    assert out.t.tolist() == np.delete(np.arange(2_000) * 50, bad).tolist()


def test_drop_invalid_in_camera_files(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("t,x,y,on\n1,1,1,1\n2,9,1,0\n3,2,2,1\n4,1,7,1\n")
    settings = ReadSettings(sensor_size=(4, 4), drop_invalid=True)
    events = read_events(path, settings)
    assert events.t.tolist() == [1, 3] and events.x.tolist() == [1, 2]
    with EventFileReader(path, settings) as reader:
        assert reader.dropped.count == 2 and reader.dropped.first_row == 1
        assert len(reader.read(0, 10)) == 2


def test_needs_over_the_memory_budget_are_refused_up_front(tmp_path: Path) -> None:
    """A huge sensor, whole frames of a big one, or a minute encoded at once: one line with the
    way round, before gigabytes are allocated (they used to end in an allocator traceback or
    the OOM killer)."""
    source = write_deflare(tmp_path / "in.h5", flare_pair()[0])
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    deflare = ["deflare", str(source), str(tmp_path / "out.h5"), "--checkpoint", str(checkpoint)]
    one_line_error(runner.invoke(app, [*deflare, "--sensor-size", "3000x3000"]),
                   "in.h5", "3000x3000 sensor needs about", "--memory-gb")  # fmt: skip
    frames = [*deflare, "--sensor-size", "720x1280", "--tiling", "frame"]
    one_line_error(runner.invoke(app, frames), "whole 720x1280 frames", "--tiling auto")
    minute = tmp_path / "minute.h5"
    write_deflare(minute, make_events([0, 60_000_000], [1, 2], [1, 2], [1, -1], (480, 640)))
    one_line_error(runner.invoke(app, ["encode", str(minute), "-o", str(tmp_path / "v.pt")]),
                   "minute.h5", "3,001 segments", "--time-window")  # fmt: skip
    assert not list(tmp_path.glob("out*")) and not (tmp_path / "v.pt").exists()


def test_endless_or_huge_settings_files_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--config", "/dev/zero"])
    one_line_error(result, "/dev/zero", "more than 1 MB")
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys silently: an edit that adds a line instead of
    changing one would otherwise be ignored without a word (it happened to us)."""
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 10\ncheckpoint_every: 5\nlr: 0.001\ncheckpoint_every: 2\n")
    result = runner.invoke(app, ["train", "--config", str(config), "--data-dir", str(tmp_path)])
    one_line_error(result, str(config), "'checkpoint_every' is given twice", "line 4")


def test_settings_files_extend_others_and_circles_are_refused(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    base = "run_dir: r\ndata: {data_dir: d}\nlr: 0.001\nloss: mask\n"
    base += "model: {f_maps: [8, 16], output: mask}\n"
    (tmp_path / "base.yaml").write_text(base)
    child = tmp_path / "recipes" / "child.yaml"
    child.write_text("extends: ../base.yaml\nmodel:\n  f_maps: [16, 32]\nmax_steps: 3\n")
    settings = load_settings(TrainSettings, child, {"max_steps": 5})
    assert settings.lr == 0.001 and settings.max_steps == 5  # the flag over the file
    assert settings.model.f_maps == (16, 32) and settings.model.output == "mask"
    (tmp_path / "base.yaml").write_text("extends: recipes/child.yaml\n")
    with pytest.raises(SettingsError, match="circle"):
        load_settings(TrainSettings, child)
    child.write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(SettingsError, match="one settings file"):
        load_settings(TrainSettings, child)
    child.write_text("extends: missing.yaml\n")
    with pytest.raises(SettingsError, match="missing.yaml: settings file not found"):
        load_settings(TrainSettings, child)


def test_events_lost_between_windows_stop_the_run(tmp_path: Path, monkeypatch) -> None:
    """Every event read must come out counted: a reader that drops one (as 1e30 timestamps
    once made it) fails the file instead of writing a shorter output and exiting 0."""
    from deflare_cli.io import reader as reader_module

    source = tmp_path / "in.h5"
    write_deflare(source, flare_pair(seed=3)[0])
    original = reader_module.EventFileReader.read

    def drop_last(self, start_us, end_us, progress=None):
        events = original(self, start_us, end_us)
        return events.time_slice(start_us, int(events.t[-1])) if len(events) else events

    monkeypatch.setattr(reader_module.EventFileReader, "read", drop_last)
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    result = runner.invoke(app, ["deflare", str(source), str(tmp_path / "out.h5"),
                                 "--checkpoint", str(checkpoint)])  # fmt: skip
    one_line_error(result, "in.h5", "events: some lie outside")
    assert not (tmp_path / "out.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def _disk_with_free_bytes(monkeypatch, free: int) -> None:
    from collections import namedtuple

    from deflare_cli.io import files

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))


def test_a_full_disk_gives_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """HDF5 segfaulted when the disk filled mid-write: writers now check the space first."""
    source = tmp_path / "in" / "in.h5"
    source.parent.mkdir()
    write_deflare(source, flare_pair(seed=4)[0])
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    out.mkdir()
    _disk_with_free_bytes(monkeypatch, 100_000)
    for args in (["deflare", str(source), str(out / "a.h5"), "--checkpoint", str(checkpoint)],
                 ["synth", str(out / "s"), "--num-files", "1", "--duration-ms", "20"]):  # fmt: skip
        one_line_error(runner.invoke(app, args), "no space left on the device", str(out))
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.fixture
def nearly_full_disk(tmp_path: Path):
    """A 1 MB tmpfs with 16 KB left, where the machine lets tests mount one (root on Linux);
    elsewhere the fake full disks of the tests around this one cover the same code."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:80]}")
    try:
        import shutil

        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16_384))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_real_full_disk_fails_every_writer_cleanly(
    tmp_path: Path, pairs_dir: Path, nearly_full_disk: Path
) -> None:
    """Every command that writes, on a real full disk: one line, exit 1, nothing left there."""
    disk = nearly_full_disk
    source = write_deflare(tmp_path / "in.h5", flare_pair(seed=5)[0])
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    voxels = tmp_path / "v.pt"
    assert runner.invoke(app, ["encode", str(source), "-o", str(voxels)]).exit_code == 0
    commands = [
        ["encode", str(source), "-o", str(disk / "v.pt")],
        ["decode", str(voxels), "-o", str(disk / "decoded.h5")],
        ["deflare", str(source), str(disk / "out.h5"), "--checkpoint", str(checkpoint)],
        ["synth", str(disk / "synth"), "--num-files", "1", "--duration-ms", "40"],
        train_args(pairs_dir, disk / "run"),
    ]
    for args in commands:
        one_line_error(runner.invoke(app, args), "no space left on the device", str(disk))
        assert [path.name for path in disk.iterdir()] == ["filler"], args[0]


def test_out_of_space_errors_of_any_writer_name_the_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    target = tmp_path / "x.pt"
    with pytest.raises(OutputError, match=r"x\.pt: no space left on the device"):
        with atomic_output(target) as temp_path:
            temp_path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    _disk_with_free_bytes(monkeypatch, 0)  # torch.save reports a full disk as "iostream error"
    with pytest.raises(OutputError, match=r"x\.pt: no space left on the device"):
        with atomic_output(target) as temp_path:
            raise RuntimeError("basic_ios::clear: iostream error")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors stay what they are
        with atomic_output(tmp_path / "y.pt"):
            monkeypatch.undo()
            raise RuntimeError("unrelated")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _wait_state(pid: int) -> list[str]:
    """Per thread of a process: its state and the kernel function it waits in."""
    states = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            states.append(f"{task.name}:{state}:{(task / 'wchan').read_text()}")
        except OSError:
            continue
    return states


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopped_synth_leaves_no_workers_and_no_temp_files(tmp_path: Path, how: str) -> None:
    """SIGTERM stops like Ctrl-C (temp files removed); after SIGKILL the workers die too
    instead of going on writing pairs."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "deflare_cli", "synth", str(out), "--num-files", "40",
               "--workers", "2", "--duration-ms", "200"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    workers: list[int] = []
    written: list[Path] = []
    while time.monotonic() < deadline and not written:  # the workers are making pairs
        time.sleep(0.2)
        workers = [c for c in _children(process.pid) if "spawn" in _cmdline(c)]
        written = list(out.glob("background_with_flare_events/composed_*.h5"))
    assert len(workers) == 2 and written, "the worker pool did not start"
    process.send_signal(getattr(signal, how))
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:  # say where each process waits, for whoever debugs it
        states = {pid: _wait_state(pid) for pid in [process.pid, *workers]}
        process.kill()
        raise AssertionError(f"synth did not stop within 60 s of {how}: {states}") from None
    deadline = time.monotonic() + 3  # at once: not after finishing the pair they were making
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), [(w, _cmdline(w)[:90]) for w in workers]
    if how == "SIGTERM":
        assert process.returncode == 130 and "interrupted" in process.stderr.read()
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp file left behind


def _wait_for(condition, what: str, timeout_s: float = 180) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("when", ["starting", "writing"])
def test_a_stopped_deflare_leaves_no_output_and_reruns(tmp_path: Path, how, when) -> None:
    """Stopped while loading the model, or half way through writing: no output file; after
    SIGKILL at most a hidden temp file, which no folder run takes as input; the same command
    then succeeds."""
    import signal
    import subprocess
    import sys

    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    long = make_events(np.arange(0, 4_000_000, 100), np.arange(40_000) % 64,
                       np.arange(40_000) % 48, np.ones(40_000), (48, 64))  # fmt: skip
    source = write_deflare(inputs / "rec.h5", long)
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    command = [sys.executable, "-m", "deflare_cli", "deflare", str(source),
               str(outputs / "rec.h5"), "--checkpoint", str(checkpoint), "--tiling", "frame",
               "--engine", "torch"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    if when == "writing":
        _wait_for(lambda: list(outputs.glob(".rec.h5*")) or process.poll() is not None,
                  "the temp output")  # fmt: skip
    assert process.poll() is None, "finished before it could be stopped"
    process.send_signal(getattr(signal, how))
    process.wait(timeout=60)
    assert not (outputs / "rec.h5").exists()
    if how == "SIGTERM":  # at start it may come before Python has installed any handler
        assert process.returncode in (130, -signal.SIGTERM), process.stderr.read()
        assert process.returncode == 130 or when == "starting"
        assert not list(outputs.iterdir())  # the temp file was removed too
    leftovers = list(outputs.iterdir())
    assert all(path.name.startswith(".") for path in leftovers)
    for path in leftovers:  # a leftover in an input folder is not input
        path.rename(inputs / path.name)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(read_events(outputs / "rec.h5")) == len(long)  # the identity model keeps all
    folder = runner.invoke(app, ["deflare", str(inputs), str(tmp_path / "again"),
                                 "--checkpoint", str(checkpoint)])  # fmt: skip
    assert folder.exit_code == 0, folder.output
    assert [p.name for p in (tmp_path / "again").iterdir()] == ["rec.h5"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_training_resumes_from_its_last_checkpoint(
    tmp_path: Path, pairs_dir: Path, how: str
) -> None:
    """kill -9 (or SIGTERM) mid-training: the run-dir's lock dies with the process, a leftover
    temp checkpoint is ignored, and --resume continues from the last checkpoint saved."""
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text("checkpoint_every: 1\n")
    args = train_args(pairs_dir, run_dir, "--epochs", "400", "--config", str(config))
    process = subprocess.Popen([sys.executable, "-m", "deflare_cli", *args],
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: (run_dir / "last.pt").exists() or process.poll() is not None, "last.pt")
    _wait_for(lambda: load_checkpoint(run_dir / "last.pt")["step"] >= 3, "step 3")
    process.send_signal(getattr(signal, how))
    process.wait(timeout=60)
    if how == "SIGTERM":  # like Ctrl-C: the step finishes, last.pt is saved, a clean exit
        assert process.returncode == 0 and "last.pt will be saved" in process.stderr.read()
    saved = load_checkpoint(run_dir / "last.pt")["step"]
    assert saved >= 3
    (run_dir / ".last.pt.x1y2.tmp.pt").write_bytes(b"half a checkpoint")  # as kill -9 leaves
    more = ["--epochs", "400", "--max-steps", str(saved + 2), "--resume", str(run_dir / "last.pt")]
    resumed = runner.invoke(app, [*train_args(pairs_dir, run_dir), *more])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(run_dir / "last.pt")["step"] == saved + 2


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_stdin_on_a_terminal_is_refused_instead_of_waiting(monkeypatch) -> None:
    import io
    import sys

    from deflare_cli.cli import open_source
    from deflare_cli.errors import InputError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(InputError, match="<stdin>: is a terminal: pipe a file in"):
        open_source("-")


def test_outputs_under_a_file_get_one_line(tmp_path: Path, pairs_dir: Path) -> None:
    """An output path whose folder is a file (used to raise NotADirectoryError)."""
    source = write_deflare(tmp_path / "in.h5", flare_pair()[0])
    checkpoint = write_checkpoint(tmp_path / "m.pt")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    commands = [
        ["deflare", str(source), str(blocker / "out.h5"), "--checkpoint", str(checkpoint)],
        ["encode", str(source), "-o", str(blocker / "v.pt")],
        ["synth", str(blocker / "synth"), "--num-files", "1", "--duration-ms", "20"],
        ["visualize", str(source), "-o", str(blocker / "pictures")],
        train_args(pairs_dir, blocker / "run"),
    ]
    for args in commands:
        one_line_error(runner.invoke(app, args), str(blocker))
    assert blocker.read_text() == "a file where a folder should be"


def test_a_failing_job_ends_the_worker_pool_promptly() -> None:
    """A failing job ends the pool (and the command) at once. Runs once hung in Pool.terminate:
    an idle worker blocked on the pool's queue lock ignored the SIGTERM another of its threads
    had received; idle workers now keep SIGTERM's default action. This guard did not reproduce
    that race on the old code; it catches a pool that never ends."""

    import threading

    from deflare_cli.progress import map_jobs

    outcomes: list[str] = []

    def rounds() -> None:
        for _ in range(6):
            try:
                map_jobs(int, ["1", "not a number", *["2"] * 6], 2, "parsing")
            except ValueError:
                outcomes.append("raised")

    runner_thread = threading.Thread(target=rounds, daemon=True)
    runner_thread.start()
    runner_thread.join(timeout=120)
    assert outcomes == ["raised"] * 6, "a pool did not end after a failing job"


def test_a_worker_that_outlives_its_sigterm_is_killed() -> None:
    """Stopping a pool whose worker ignores SIGTERM (a job whose unwinding was swallowed)
    returns within the grace period plus a little, and leaves no worker behind; before,
    ``Pool.terminate`` waited for such a worker forever (seen in a CI run of synth)."""
    import multiprocessing
    import threading
    import time

    from pool_jobs import stubborn

    from deflare_cli.progress import GRACE_SECONDS, map_jobs

    def stop_after_first(stage: str, done: int, total: int, detail: str = "") -> None:
        raise KeyboardInterrupt

    outcome: list[float] = []

    def run() -> None:
        started = time.monotonic()
        try:
            map_jobs(stubborn, [0.0, 300.0, 300.0], 2, "sleeping", stop_after_first)
        except KeyboardInterrupt:
            outcome.append(time.monotonic() - started)

    runner_thread = threading.Thread(target=run, daemon=True)
    runner_thread.start()
    runner_thread.join(timeout=4 * GRACE_SECONDS + 60)
    assert outcome and outcome[0] < 2 * GRACE_SECONDS + 30, "the pool was not ended"
    time.sleep(0.5)
    assert not multiprocessing.active_children()
