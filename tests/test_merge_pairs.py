"""scripts/merge_pairs.py: several folders of pairs as one training folder, inputs untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_calibrate import labelled_pairs

from deflare_cli.errors import InputError
from deflare_cli.io.pairs import find_pairs, read_pair
from deflare_cli.settings import paired_dirs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from merge_pairs import merge_pairs  # noqa: E402


def test_merged_pairs_keep_their_partners_under_ids_that_do_not_collide(tmp_path: Path) -> None:
    first, second = labelled_pairs(tmp_path / "a", 2), labelled_pairs(tmp_path / "b", 3)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*.h5"))}
    assert merge_pairs(tmp_path / "merged", [first, second]) == 5
    merged = find_pairs(*paired_dirs(tmp_path / "merged"))
    assert [pair.pair_id for pair in merged] == ["100000", "100001", "200000", "200001", "200002"]
    originals = find_pairs(*paired_dirs(second))
    flare, clean = read_pair(merged[-1])
    want_flare, want_clean = read_pair(originals[-1])
    assert (flare.t == want_flare.t).all() and (clean.x == want_clean.x).all()
    assert {p: p.read_bytes() for p in before} == before


def test_pairs_named_alike_stay_pairs_when_merged(tmp_path: Path) -> None:
    """find_pairs also pairs files by equal names (not E-Deflare's): merged, they still pair."""
    source = labelled_pairs(tmp_path / "a", 1)
    flare_dir, clean_dir = paired_dirs(source)
    (flare_dir / "composed_00000_bg_flare.h5").rename(flare_dir / "night.h5")
    (clean_dir / "composed_00000_bg_light.h5").rename(clean_dir / "night.h5")
    assert merge_pairs(tmp_path / "merged", [source, labelled_pairs(tmp_path / "b", 1)]) == 2
    merged = find_pairs(*paired_dirs(tmp_path / "merged"))
    assert [pair.pair_id for pair in merged] == ["1night", "200000"]
    assert merged[0].flare_path.resolve() == (flare_dir / "night.h5").resolve()


def test_merging_into_a_folder_that_holds_files_is_refused(tmp_path: Path) -> None:
    source = labelled_pairs(tmp_path / "a", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "note.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        merge_pairs(tmp_path / "out", [source])
    assert (tmp_path / "out" / "note.txt").read_text() == "mine"


def test_a_merge_cut_off_midway_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    """The links appear in OUT only once all are made; a failure (or Ctrl-C) leaves nothing,
    and the next run starts afresh."""
    source = labelled_pairs(tmp_path / "a", 2)
    made = []
    original = Path.symlink_to

    def fail_on_the_third(self, target, *args, **kwargs):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(self)
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(Path, "symlink_to", fail_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        merge_pairs(tmp_path / "merged", [source])
    assert len(made) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    monkeypatch.undo()
    assert merge_pairs(tmp_path / "merged", [source]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "merged"]
