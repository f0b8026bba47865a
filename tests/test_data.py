"""Pairing, the voxel cache and the training dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import flare_pair, write_deflare, write_pairs

from deflare_cli.errors import DeflareError, InputError
from deflare_cli.io import Pair, find_pairs
from deflare_cli.model import frame_density
from deflare_cli.settings import CodecSettings, DataSettings, ReadSettings, paired_dirs
from deflare_cli.train import data as data_module
from deflare_cli.train.data import (
    EventVoxelDataset,
    VoxelCache,
    encode_pair,
    prepare_pairs,
    split_pairs,
)


def test_pairs_by_id(tmp_path: Path) -> None:
    pairs = find_pairs(*paired_dirs(write_pairs(tmp_path, 3)))
    assert [p.pair_id for p in pairs] == ["00000", "00001", "00002"]
    assert all(p.flare_path.name == f"composed_{p.pair_id}_bg_flare.h5" for p in pairs)
    assert all(p.clean_path.name == f"composed_{p.pair_id}_bg_light.h5" for p in pairs)


def test_file_without_partner_is_listed(tmp_path: Path) -> None:
    flare_dir, clean_dir = paired_dirs(write_pairs(tmp_path, 2))
    (clean_dir / "composed_00001_bg_light.h5").unlink()
    with pytest.raises(InputError, match="composed_00001_bg_flare.h5"):
        find_pairs(flare_dir, clean_dir)


def test_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        find_pairs(tmp_path / "a", tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match="no event files"):
        find_pairs(tmp_path / "a", tmp_path / "b")


def test_pair_is_cut_on_one_grid(tmp_path: Path) -> None:
    flare, clean = flare_pair(duration_us=100_000)
    pair = Pair(
        "x", write_deflare(tmp_path / "f.h5", flare), write_deflare(tmp_path / "c.h5", clean)
    )
    inputs, targets = encode_pair(pair, CodecSettings())
    assert inputs.shape == targets.shape == (5, 8, 32, 48)
    assert inputs.sum().item() == flare.p.sum() and targets.sum().item() == clean.p.sum()


def _one_pair(tmp_path: Path) -> tuple[Pair, VoxelCache]:
    pairs = find_pairs(*paired_dirs(write_pairs(tmp_path / "data", 1)))
    return pairs[0], VoxelCache(tmp_path / "cache")


def test_cache_is_reused_then_invalidated(tmp_path: Path, monkeypatch) -> None:
    pair, cache = _one_pair(tmp_path)
    codec, read = CodecSettings(), ReadSettings()
    first = cache.get(pair, codec, read)
    stored = torch.load(first.path, weights_only=True)
    assert stored["input"].dtype == torch.int16  # integer counts stored compactly
    calls = []
    original = data_module.encode_pair
    monkeypatch.setattr(data_module, "encode_pair", lambda *a: calls.append(1) or original(*a))
    assert cache.get(pair, codec, read).path == first.path and calls == []
    os.utime(pair.flare_path, ns=(1, 1))  # the source changed
    changed = cache.get(pair, codec, read)
    assert changed.path != first.path and calls == [1] and not first.path.exists()
    other = cache.get(pair, CodecSettings(num_bins=4), read)  # other codec settings
    assert calls == [1, 1]
    assert changed.path.exists() and other.path.exists()  # runs sharing a cache keep theirs


def test_pairs_of_other_folders_with_the_same_id_keep_their_own_entries(tmp_path: Path) -> None:
    train = find_pairs(*paired_dirs(write_pairs(tmp_path / "train", 1, seed=1)))[0]
    val = find_pairs(*paired_dirs(write_pairs(tmp_path / "val", 1, seed=2)))[0]
    assert train.pair_id == val.pair_id
    cache = VoxelCache(tmp_path / "cache")
    first = cache.get(train, CodecSettings(), ReadSettings())
    second = cache.get(val, CodecSettings(), ReadSettings())
    assert first.path != second.path and first.path.exists() and second.path.exists()


def test_corrupt_pair_fails_with_its_name_or_is_skipped(tmp_path: Path) -> None:
    pairs = find_pairs(*paired_dirs(write_pairs(tmp_path / "data", 2)))
    pairs[1].clean_path.write_bytes(b"garbage")
    cache = VoxelCache(tmp_path / "cache")
    with pytest.raises(InputError, match="composed_00001_bg_light.h5"):
        prepare_pairs(pairs, cache, CodecSettings(), ReadSettings(), skip_bad=False)
    entries, skipped = prepare_pairs(pairs, cache, CodecSettings(), ReadSettings(), skip_bad=True)
    assert [e.pair.pair_id for e in entries] == ["00000"]
    assert len(skipped) == 1 and "composed_00001_bg_light.h5" in skipped[0]
    pairs[0].flare_path.write_bytes(b"garbage too")
    with pytest.raises(DeflareError, match="no readable training pairs"):
        prepare_pairs(pairs, VoxelCache(tmp_path / "c2"), CodecSettings(), ReadSettings(), True)


def cut_from(full: tuple, inputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether (inputs, targets) are one window of the full frame's pair, cut from the same
    place and flipped alike."""
    height, width = inputs.shape[-2:]
    frame_h, frame_w = full[0].shape[-2:]
    return any(
        torch.equal(inputs, full[0][..., top : top + height, left : left + width].flip(dims))
        and torch.equal(targets, full[1][..., top : top + height, left : left + width].flip(dims))
        for top in range(frame_h - height + 1) for left in range(frame_w - width + 1)
        for dims in ([], [-1], [-2], [-1, -2])
    )  # fmt: skip


def test_crops_and_flips_are_deterministic_and_paired(tmp_path: Path) -> None:
    pair, cache = _one_pair(tmp_path)
    entry = cache.get(pair, CodecSettings(), ReadSettings())
    dataset = EventVoxelDataset([entry], crop=(16, 16), flips=True, seed=3)
    assert len(dataset) == entry.num_segments == 2
    first = dataset[1]
    assert first[0].shape == (1, 8, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[1], strict=True))
    samples = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        samples.append(dataset[1])
    assert any(not torch.equal(samples[0][0], s[0]) for s in samples[1:])
    # input and target are cut and flipped together, from the same place
    full = EventVoxelDataset([entry])[1]
    for inputs, targets, density in samples:
        assert density == full[2] == frame_density(full[0])  # the whole frame's, not the crop's
        assert cut_from(full, inputs, targets)
    assert any(frame_density(inputs) != density for inputs, _, density in samples)


def test_context_widens_each_crop_within_the_frame(tmp_path: Path) -> None:
    """With ``context`` a sample is its crop and that many pixels of the frame around it, a
    window inside the frame, cut and flipped together with its target."""
    pair, cache = _one_pair(tmp_path)
    entry = cache.get(pair, CodecSettings(), ReadSettings())  # 32x48 frames
    dataset = EventVoxelDataset([entry], crop=(16, 16), flips=True, seed=3, context=4)
    full = EventVoxelDataset([entry])[1]
    for epoch in range(4):
        dataset.set_epoch(epoch)
        inputs, targets, density = dataset[1]
        assert inputs.shape == targets.shape == (1, 8, 24, 24) and density == full[2]
        assert cut_from(full, inputs, targets)
    with pytest.raises(DeflareError, match="with 9 px of context around it is larger"):
        EventVoxelDataset([entry], crop=(16, 16), context=9)  # 34 rows > 32


def test_flare_crops_hold_flare(tmp_path: Path) -> None:
    """On a sparse scene most uniform crops miss the flare; ``flare_crops`` centres them on it."""
    folder = write_pairs(tmp_path / "data", 1, size=(96, 128))
    pair = find_pairs(*paired_dirs(folder))[0]
    entry = VoxelCache(tmp_path / "cache").get(pair, CodecSettings(), ReadSettings())

    def share_with_flare(flare_crops: float) -> float:
        dataset = EventVoxelDataset([entry], crop=(16, 16), seed=1, flare_crops=flare_crops)
        hits = []
        for epoch in range(40):
            dataset.set_epoch(epoch)
            inputs, targets, _ = dataset[epoch % len(dataset)]
            hits.append(bool((inputs != targets).any()))
        return sum(hits) / len(hits)

    assert share_with_flare(1.0) == 1.0
    assert share_with_flare(0.0) < 0.5


def test_validation_samples_are_full_frames(tmp_path: Path) -> None:
    pair, cache = _one_pair(tmp_path)
    entry = cache.get(pair, CodecSettings(), ReadSettings())
    inputs, targets, _ = EventVoxelDataset([entry])[0]
    stored = torch.load(entry.path, weights_only=True)
    assert torch.equal(inputs[0], stored["input"][0].float())
    assert torch.equal(targets[0], stored["target"][0].float())


def test_crop_larger_than_sensor_is_refused(tmp_path: Path) -> None:
    pair, cache = _one_pair(tmp_path)
    entry = cache.get(pair, CodecSettings(), ReadSettings())
    with pytest.raises(DeflareError, match="larger than the sensor"):
        EventVoxelDataset([entry], crop=(64, 64))


def test_split_is_seeded_and_holds_out_at_least_one(tmp_path: Path) -> None:
    pairs = find_pairs(*paired_dirs(write_pairs(tmp_path / "data", 5)))
    settings = DataSettings(data_dir=tmp_path / "data", val_fraction=0.1)
    train, val = split_pairs(pairs, settings, seed=0)
    assert len(val) == 1 and len(train) == 4 and not set(train) & set(val)
    assert split_pairs(pairs, settings, seed=0) == (train, val)
    assert np.unique([p.pair_id for p in train + val]).size == 5
    no_val = DataSettings(data_dir=tmp_path / "data", val_fraction=0)
    assert split_pairs(pairs, no_val, seed=0) == (pairs, [])


def test_encoding_in_worker_processes_equals_encoding_in_one(tmp_path: Path) -> None:
    pairs = find_pairs(*paired_dirs(write_pairs(tmp_path / "data", 3)))
    one, _ = prepare_pairs(pairs, VoxelCache(tmp_path / "a"), CodecSettings(), ReadSettings(),
                           skip_bad=False)  # fmt: skip
    many, _ = prepare_pairs(pairs, VoxelCache(tmp_path / "b"), CodecSettings(), ReadSettings(),
                            skip_bad=False, workers=2)  # fmt: skip
    assert [e.pair for e in many] == [e.pair for e in one] == pairs
    for a, b in zip(one, many, strict=True):
        assert a.num_segments == b.num_segments and a.sensor_size == b.sensor_size
        left, right = VoxelCache.load(a.path), VoxelCache.load(b.path)
        assert torch.equal(left["input"], right["input"])
        assert torch.equal(left["target"], right["target"])
    pairs[1].flare_path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="composed_00001_bg_flare.h5"):
        prepare_pairs(pairs, VoxelCache(tmp_path / "c"), CodecSettings(), ReadSettings(),
                      skip_bad=False, workers=2)  # fmt: skip
    entries, skipped = prepare_pairs(pairs, VoxelCache(tmp_path / "d"), CodecSettings(),
                                     ReadSettings(), skip_bad=True, workers=2)  # fmt: skip
    assert [e.pair.pair_id for e in entries] == ["00000", "00002"]
    assert len(skipped) == 1 and "composed_00001_bg_flare.h5" in skipped[0]
