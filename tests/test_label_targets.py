"""scripts/label_targets.py: targets that make the trees' voxel difference the event labels."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_calibrate import labelled_pairs

from deflare_cli.errors import InputError
from deflare_cli.io import read_events
from deflare_cli.io.pairs import find_pairs, read_pair
from deflare_cli.metrics import kept_mask
from deflare_cli.settings import paired_dirs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from label_targets import label_targets  # noqa: E402


def test_targets_are_the_inputs_without_their_flare_events(tmp_path: Path) -> None:
    source = labelled_pairs(tmp_path / "src", 2)
    source_inputs, _ = paired_dirs(source)
    for path in sorted(source_inputs.glob("*.h5")):  # label a few target events flare
        with h5py.File(path, "a") as h5:  # too, so the labels differ from input - target
            labels = h5["events/is_flare"][:]
            labels[::7] = 1
            h5["events/is_flare"][:] = labels
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*.h5"))}
    assert label_targets(tmp_path / "out", source) == 2
    for pair in find_pairs(*paired_dirs(tmp_path / "out")):
        flare, target = read_pair(pair)
        with h5py.File(pair.flare_path) as h5:
            labels = h5["events/is_flare"][:].astype(bool)
        assert len(target) == int((~labels).sum())
        assert np.array_equal(kept_mask(flare, target), ~labels)  # exactly the unlabelled ones
        original = read_events(source_inputs / pair.flare_path.name)
        assert np.array_equal(flare.t, original.t)  # the input is the source's, linked
    assert {p: p.read_bytes() for p in before} == before


def test_unlabelled_inputs_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = labelled_pairs(tmp_path / "src", 2)
    last = sorted(paired_dirs(source)[0].glob("*.h5"))[-1]
    with h5py.File(last, "a") as h5:
        del h5["events/is_flare"]
    with pytest.raises(InputError, match=f"{last.name}.*is_flare"):
        label_targets(tmp_path / "out", source)
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "note.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        label_targets(tmp_path / "busy", source)
    assert (tmp_path / "busy" / "note.txt").read_text() == "mine"


def test_a_run_cut_off_midway_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    """The pairs appear in OUT only once all are written; a failure (or Ctrl-C) leaves nothing,
    and the next run starts afresh."""
    import label_targets as script

    source = labelled_pairs(tmp_path / "src", 3)
    written = []

    def fail_on_the_second(path, events):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return original(path, events)

    original = script.write_events
    monkeypatch.setattr(script, "write_events", fail_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        label_targets(tmp_path / "out", source)
    assert written and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    monkeypatch.undo()
    seen = []
    assert label_targets(tmp_path / "out", source, lambda *step: seen.append(step[1:3])) == 3
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
