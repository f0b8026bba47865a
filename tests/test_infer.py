"""Inference: preserve and resample modes, streaming, sensor sizes, folders, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import file_digest, flare_pair, random_events, same_events, write_deflare
from typer.testing import CliRunner

from deflare_cli import infer
from deflare_cli.checkpoint import CHECKPOINT_FORMAT
from deflare_cli.cli import app
from deflare_cli.codec import Voxels, cell_index, events_to_voxel
from deflare_cli.errors import DeflareError, InputError, OutputError
from deflare_cli.events import make_events
from deflare_cli.infer import deflare, preserve_events
from deflare_cli.io import file_sha256, read_events
from deflare_cli.model import TrueResidualUNet3D
from deflare_cli.settings import CodecSettings, InferSettings, ModelSettings, ReadSettings

SMALL = ModelSettings(f_maps=(8, 16))


def write_checkpoint(
    path: Path, perturb: float = 0.0, bias: float = 0.0, model_settings=SMALL
) -> Path:
    """A deflare checkpoint of an untrained (identity) model, or a perturbed one."""
    torch.manual_seed(0)
    model = TrueResidualUNet3D(model_settings)
    with torch.no_grad():
        model.backbone.final_conv.weight.normal_(0, perturb)
        model.backbone.final_conv.bias.fill_(bias)
    settings = {
        "model": model_settings.model_dump(mode="json"),
        "codec": CodecSettings().model_dump(mode="json"),
    }
    torch.save(
        {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "settings": settings}, path
    )
    return path


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "identity.pt")


@pytest.fixture
def perturbed(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "perturbed.pt", perturb=0.5, bias=-0.3)


@pytest.fixture
def shifting(tmp_path: Path) -> Path:
    """Residual -0.7 everywhere: removes lone positive events, adds negative ones elsewhere.

    Its output does not depend on convolution arithmetic, which may differ in the last bits
    between batch sizes and so flip cells that sit on a rounding boundary.
    """
    return write_checkpoint(tmp_path / "shifting.pt", bias=-0.7)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    flare, _ = flare_pair(duration_us=100_000)
    return write_deflare(tmp_path / "flare.h5", flare)


def test_identity_model_in_preserve_mode_returns_the_input_exactly(
    tmp_path: Path, identity: Path, recording: Path
) -> None:
    digest = file_digest(recording)
    [result] = deflare(recording, tmp_path / "out.h5", InferSettings(checkpoint=identity))
    assert same_events(read_events(tmp_path / "out.h5"), read_events(recording))
    assert result.input_events == result.output_events and result.segments == 5
    assert file_digest(recording) == digest


def test_resample_emits_the_rounded_voxel_sums(
    tmp_path: Path, identity: Path, recording: Path
) -> None:
    settings = InferSettings(checkpoint=identity, output_mode="resample")
    deflare(recording, tmp_path / "out.h5", settings)
    output = read_events(tmp_path / "out.h5")
    voxels = events_to_voxel(read_events(recording))
    assert len(output) == int(voxels.data.abs().sum())
    again = events_to_voxel(output)  # same grid: the output carries the recording's start
    assert torch.equal(again.data[: voxels.num_segments], voxels.data)


@pytest.mark.parametrize("mode", ["preserve", "resample"])
def test_streaming_equals_one_pass(tmp_path: Path, shifting: Path, recording: Path, mode) -> None:
    outputs = []
    for batch in (1, 2, 100):
        target = tmp_path / f"out{batch}.h5"
        settings = InferSettings(checkpoint=shifting, batch_size=batch, output_mode=mode)
        deflare(recording, target, settings)
        outputs.append(read_events(target))
    assert same_events(outputs[0], outputs[1]) and same_events(outputs[0], outputs[2])
    assert not same_events(outputs[0], read_events(recording))  # the model did change things


@pytest.mark.parametrize("size", [(260, 346), (720, 1280)])
def test_odd_and_large_sensor_sizes(tmp_path: Path, identity: Path, size) -> None:
    events = random_events(count=3000, duration_us=20_000, size=size)
    source = write_deflare(tmp_path / "in.h5", events)
    deflare(source, tmp_path / "out.h5", InferSettings(checkpoint=identity))
    output = read_events(tmp_path / "out.h5")
    assert output.sensor_size == size and same_events(output, events)


def test_preserve_edits_cells_minimally() -> None:
    size = (2, 2)
    # bin 0 of pixel (0, 0): 3 positive events; bin 1 of pixel (1, 1): 1 negative event
    t = np.array([100, 200, 300, 2600])
    events = make_events(t, [0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 0], size, span_us=(0, 20_000))
    input_voxel = events_to_voxel(events).data[0]
    wanted = input_voxel.clone()
    wanted[0, 0, 0] = 1  # keep one of the three
    wanted[1, 1, 1] = -3  # two more negative events than the input has
    wanted[5, 1, 0] = 2  # two new positive events where there were none
    predicted = Voxels(wanted[None], 0, 20_000)
    output = preserve_events(events, input_voxel, predicted, np.random.default_rng(0))
    assert torch.equal(events_to_voxel(output).data[0], wanted)
    kept_original = set(output.t) & {100, 200, 300}
    assert len(kept_original) == 1  # one original timestamp survives in the first cell
    assert 2600 in output.t  # the original negative event is kept, two are added
    new = output.select((output.x == 0) & (output.y == 1))
    assert len(new) == 2 and np.all((new.t >= 12_500) & (new.t < 15_000))


def test_preserve_with_removal_threshold_keeps_cells_the_model_is_unsure_of() -> None:
    """A mask model's removal share of 0.5 everywhere, margin 0.35: rounding takes one event of
    the three-event cell; the threshold rule keeps all of them, and the lone event too."""
    t = np.array([100, 200, 300, 2600])
    events = make_events(t, [0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 1, 0], (2, 2), span_us=(0, 20_000))
    input_voxel = events_to_voxel(events).data[0]
    predicted = Voxels(input_voxel[None] * 0.5, 0, 20_000)
    rng = np.random.default_rng(0)
    rounded = preserve_events(events, input_voxel, predicted, rng, 0.35)
    assert len(rounded) == 3 and 2600 in rounded.t
    kept = preserve_events(events, input_voxel, predicted, rng, 0.35, "threshold")
    assert same_events(kept, events)
    sure = Voxels(input_voxel[None] * 0.1, 0, 20_000)  # 90% flare: every event goes
    assert len(preserve_events(events, input_voxel, sure, rng, 0.35, "threshold")) == 0


@pytest.mark.parametrize("everywhere", [False, True])
def test_preserve_edits_the_cells_the_prediction_changes_on_a_large_sensor(everywhere) -> None:
    """At 1280x720, whether the prediction differs from the input in a few cells (a mask model,
    or tiles: every other cell passes through) or by a little in every cell (a residual model):
    the output's voxel is the prediction rounded, and no other event changes."""
    events = random_events(count=3000, duration_us=20_000, size=(720, 1280), seed=4)
    events = replace(events, span_us=(0, 20_000))
    input_voxel = events_to_voxel(events).data[0]
    rng = np.random.default_rng(1)
    wanted = input_voxel.clone().flatten()
    occupied = torch.nonzero(wanted).flatten().numpy()
    wanted[rng.choice(occupied, 300, replace=False)] = 0  # their events go
    empty = np.setdiff1d(rng.integers(0, len(wanted), 60), occupied)
    wanted[empty] = -1.0  # one new negative event each
    predicted = wanted.clone()
    if everywhere:
        predicted += torch.from_numpy(rng.uniform(-0.3, 0.3, len(wanted)).astype(np.float32))
    shape = input_voxel.shape
    output = preserve_events(
        events, input_voxel, Voxels(predicted.view(shape)[None], 0, 20_000), rng
    )
    assert torch.equal(events_to_voxel(output).data[0], wanted.view(shape))
    # the events of cells left alone are the input's own
    untouched = input_voxel.flatten() == wanted
    kept = {(int(t), int(x), int(y)) for t, x, y in zip(output.t, output.x, output.y, strict=True)}
    cells = cell_index(events, 0, 2_500)
    for index in np.flatnonzero(untouched.numpy()[cells]):
        assert (int(events.t[index]), int(events.x[index]), int(events.y[index])) in kept


def test_preserve_takes_out_what_a_prediction_of_nothing_asks_for() -> None:
    """Most cells of a small busy sensor change (the whole-grid lookup): the output's voxel is
    empty, as predicted, and only cells whose events cancel keep them."""
    events = random_events(count=4000, duration_us=20_000, size=(16, 16), seed=2)
    events = replace(events, span_us=(0, 20_000))
    input_voxel = events_to_voxel(events).data[0]
    predicted = Voxels(torch.zeros_like(input_voxel)[None], 0, 20_000)
    output = preserve_events(events, input_voxel, predicted, np.random.default_rng(0))
    assert not events_to_voxel(output).data.any()
    assert 0 < len(output) < len(events) / 2


def test_tiles_of_a_sparse_file_touch_no_whole_grid_and_give_the_same_events(
    tmp_path: Path, perturbed: Path, monkeypatch
) -> None:
    """A file on tiles is encoded only inside the tiles' windows and decoded from their cores
    (no whole 1280x720 grid per segment); its output is the in-memory path's, which runs the
    network on the same windows cut out of whole grids, event for event."""
    blobs = [random_events(count=400, duration_us=60_000, size=(24, 24), seed=seed)
             for seed in range(3)]  # fmt: skip
    noise = random_events(count=300, duration_us=60_000, size=(720, 1280), seed=5)
    columns = [np.concatenate([noise.t, *(b.t for b in blobs)]),
               np.concatenate([noise.x, *(b.x + 100 + 400 * i for i, b in enumerate(blobs))]),
               np.concatenate([noise.y, *(b.y + 50 + 200 * i for i, b in enumerate(blobs))]),
               np.concatenate([noise.p, *(b.p for b in blobs)])]  # fmt: skip
    order = np.argsort(columns[0], kind="stable")
    events = make_events(*(column[order] for column in columns), (720, 1280), (0, 60_000))
    source = write_deflare(tmp_path / "sparse.h5", events)
    settings = InferSettings(checkpoint=perturbed, tiles={"mode": "tiles", "min_events": 8})
    in_memory = infer.deflare_events(infer.load_deflarer(settings), events)

    def no_whole_grid(*args, **kwargs):
        raise AssertionError("a whole grid was encoded")

    monkeypatch.setattr(infer, "events_to_voxel", no_whole_grid)
    deflare(source, tmp_path / "out.h5", settings)
    output = read_events(tmp_path / "out.h5")
    assert same_events(output, in_memory)
    assert not same_events(output, events)  # the model did change things


def test_folder_mode_skips_existing_outputs_unless_overwrite(
    tmp_path: Path, identity: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(3):
        write_deflare(inputs / f"rec{index}.h5", random_events(seed=index))
    (inputs / "notes.txt").write_text("not an event file")
    settings = InferSettings(checkpoint=identity)
    results = deflare(inputs, tmp_path / "out", settings)
    assert [r.target.name for r in results] == ["rec0.h5", "rec1.h5", "rec2.h5"]
    assert not any(r.skipped for r in results)
    (tmp_path / "out" / "rec1.h5").unlink()
    again = deflare(inputs, tmp_path / "out", settings)
    assert [r.skipped for r in again] == [True, False, True]
    forced = deflare(inputs, tmp_path / "out", settings.model_copy(update={"overwrite": True}))
    assert not any(r.skipped for r in forced)


def test_torchrun_ranks_share_the_files(tmp_path: Path, identity: Path, monkeypatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(5):
        write_deflare(inputs / f"rec{index}.h5", random_events(seed=index))
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        done += [
            r.source.name
            for r in deflare(inputs, tmp_path / "out", InferSettings(checkpoint=identity))
        ]
    assert sorted(done) == [f"rec{i}.h5" for i in range(5)]


def test_a_learned_residual_changes_the_events(
    tmp_path: Path, perturbed: Path, recording: Path
) -> None:
    deflare(recording, tmp_path / "out.h5", InferSettings(checkpoint=perturbed))
    assert not same_events(read_events(tmp_path / "out.h5"), read_events(recording))


def test_provenance_attributes(tmp_path: Path, identity: Path, recording: Path) -> None:
    deflare(recording, tmp_path / "out.h5", InferSettings(checkpoint=identity, seed=4))
    with h5py.File(tmp_path / "out.h5") as h5:
        assert h5.attrs["deflare_checkpoint_sha256"] == file_sha256(identity)
        assert h5.attrs["deflare_source"] == str(recording)
        settings = json.loads(h5.attrs["deflare_settings"])
        assert settings["output_mode"] == "preserve" and settings["seed"] == 4
        assert settings["model"]["f_maps"] == [8, 16]


def test_bad_inputs(tmp_path: Path, identity: Path, recording: Path, monkeypatch) -> None:
    settings = InferSettings(checkpoint=identity)
    with pytest.raises(OutputError, match="overwrite the input"):
        deflare(recording, recording, settings)
    with pytest.raises(InputError, match="not found"):
        deflare(tmp_path / "missing.h5", tmp_path / "o.h5", settings)
    with pytest.raises(InputError, match="not a readable deflare checkpoint"):
        deflare(recording, tmp_path / "o.h5", InferSettings(checkpoint=recording))
    mismatched = write_checkpoint(tmp_path / "m.pt")
    payload = torch.load(mismatched, weights_only=True)
    payload["settings"]["model"]["f_maps"] = [16, 32, 64]
    torch.save(payload, mismatched)
    with pytest.raises(InputError, match="does not match its model settings"):
        deflare(recording, tmp_path / "o.h5", InferSettings(checkpoint=mismatched))
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\\x89HDF\\r\\n\\x1a\\n" + b"\\0" * 100)
    with pytest.raises(InputError, match="corrupt.h5"):
        deflare(corrupt, tmp_path / "o.h5", settings)
    (tmp_path / "exists.h5").write_bytes(b"x")
    with pytest.raises(OutputError, match="--overwrite"):
        deflare(recording, tmp_path / "exists.h5", settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["identity.pt", "flare.h5", "m.pt", "corrupt.h5", "exists.h5"]
    )  # no output or temp file left behind
    monkeypatch.setattr(infer, "DEFAULT_CHECKPOINT", tmp_path / "none.pt")
    with pytest.raises(DeflareError, match="no default model"):
        deflare(recording, tmp_path / "o.h5", InferSettings())


def test_deflare_command(tmp_path: Path, identity: Path, recording: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out.h5"
    result = runner.invoke(
        app, ["deflare", str(recording), str(out), "--checkpoint", str(identity)]
    )
    assert result.exit_code == 0, result.output
    assert "flare.h5" in result.output and "100.0%" in result.output
    result = runner.invoke(
        app, ["deflare", str(recording), str(out), "--checkpoint", str(identity)]
    )
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = runner.invoke(
        app, ["deflare", str(recording), str(recording), "--checkpoint", str(identity)]
    )
    assert result.exit_code == 1 and "overwrite the input" in result.output


def test_long_dsec_recording_is_read_window_by_window(
    tmp_path: Path, identity: Path, monkeypatch
) -> None:
    from conftest import write_dsec

    from deflare_cli.io import reader as io

    events = random_events(count=40_000, duration_us=2_000_000, size=(32, 48))
    shifted = make_events(events.t + 10**9, events.x, events.y, events.p, events.sensor_size)
    source = write_dsec(tmp_path / "long.h5", shifted, t_offset=10**9)
    largest = []
    original = io._read_rows

    def counting(h5, layout, rows, *args):
        largest.append(rows[1] - rows[0])
        return original(h5, layout, rows, *args)

    monkeypatch.setattr(io, "_read_rows", counting)
    settings = InferSettings(
        checkpoint=identity, read=ReadSettings(sensor_size=(32, 48)), batch_size=2
    )
    [result] = deflare(source, tmp_path / "out.h5", settings)
    assert result.segments == 100 and result.output_events == len(events)
    assert max(largest) < 1200  # about 2 x 20 ms of 40k events over 2 s, never the whole file


def test_export_keeps_the_model_only(tmp_path: Path, perturbed: Path, recording: Path) -> None:
    from deflare_cli.checkpoint import export_checkpoint, load_checkpoint

    size = export_checkpoint(perturbed, tmp_path / "slim.pt", {"trained_on": "test"})
    slim = load_checkpoint(tmp_path / "slim.pt")
    assert size == (tmp_path / "slim.pt").stat().st_size and "optimizer" not in slim
    assert slim["notes"] == {"trained_on": "test"}
    for checkpoint in (perturbed, tmp_path / "slim.pt"):
        deflare(recording, tmp_path / f"{checkpoint.stem}.h5", InferSettings(checkpoint=checkpoint))
    assert same_events(read_events(tmp_path / "perturbed.h5"), read_events(tmp_path / "slim.h5"))
    result = CliRunner().invoke(app, ["export", str(perturbed), str(tmp_path / "cli.pt")])
    assert result.exit_code == 0 and "exported" in result.output
