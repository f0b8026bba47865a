"""The residual U-Net and the settings that must fit it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from deflare_cli.model import (
    COHERENCE_UNIT,
    DENSITY_UNIT,
    FRAME_REFERENCE,
    MASK_START_LOGIT,
    TreeEnsemble,
    TrueResidualUNet3D,
    backbone_input,
    box_max,
    box_mean,
    coherence_features,
    count_parameters,
    flicker_features,
    frame_density,
    peak_features,
)
from deflare_cli.settings import DataSettings, ModelSettings, TrainSettings


@pytest.mark.parametrize("shape", [(1, 1, 8, 32, 48), (2, 1, 8, 30, 46), (1, 1, 8, 26, 35)])
def test_untrained_model_returns_its_input_exactly(shape) -> None:
    torch.manual_seed(0)
    model = TrueResidualUNet3D()
    voxels = torch.randn(shape) * 3
    with torch.no_grad():
        assert torch.equal(model(voxels), voxels)


def test_unet3d_backbone_is_identity_too() -> None:
    model = TrueResidualUNet3D(ModelSettings(backbone="UNet3D", f_maps=(8, 16)))
    voxels = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(voxels), voxels)


def test_an_untrained_mask_model_changes_no_count_after_rounding() -> None:
    model = TrueResidualUNet3D(ModelSettings(f_maps=(8, 16), output="mask"))
    voxels = torch.randint(-30, 31, (2, 1, 8, 26, 35)).float()
    with torch.no_grad():
        output = model(voxels)
        removal = model(voxels, raw=True).sigmoid()
    assert torch.equal(output.round(), voxels)  # 0.25% of 30 events rounds away
    assert torch.allclose(removal, torch.full_like(removal, 0.0025), atol=1e-4)


def test_a_mask_model_only_takes_events_away() -> None:
    torch.manual_seed(0)
    model = TrueResidualUNet3D(ModelSettings(f_maps=(8, 16), output="mask"))
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 1.0)
    voxels = torch.randint(-5, 6, (1, 1, 8, 32, 32)).float()
    with torch.no_grad():
        output = model(voxels)
    assert not torch.equal(output, voxels)  # it edits, and ...
    assert (output.abs() <= voxels.abs()).all()  # ... never adds events
    assert (output * voxels >= 0).all()  # nor flips a cell's polarity
    assert (output[voxels == 0] == 0).all()


def test_frame_norm_scales_the_input_by_its_whole_frames_density() -> None:
    settings = ModelSettings(f_maps=(8, 16), layer_order="cr", output="mask", input_norm="frame")
    frames = torch.zeros(2, 1, 8, 32, 32)
    frames[0, 0, 0, :4, :4] = 1  # 16 events: 1/64 of an event per pixel
    frames[1, 0, 0, :8, :8] = 1  # 64 events, 4x as dense
    assert torch.allclose(frame_density(frames), torch.tensor([1 / 64, 1 / 16]))
    logged = torch.log1p(torch.tensor(1.0))
    whole = backbone_input(frames, settings)
    assert torch.allclose(whole[0, 0, 0, 0, 0], logged * FRAME_REFERENCE * 64)
    assert torch.allclose(whole[1, 0, 0, 0, 0], logged * FRAME_REFERENCE * 16)
    # a crop is scaled by the density it is given, its whole frame's, not by its own
    crop = frames[:, :, :, :16, :16]
    given = backbone_input(crop, settings, frame_density(frames))
    assert torch.equal(given, whole[:, :, :, :16, :16])
    assert not torch.equal(backbone_input(crop, settings), given)
    # without input_norm the density changes nothing
    plain = settings.model_copy(update={"input_norm": "none"})
    assert torch.equal(
        backbone_input(crop, plain, frame_density(frames)),
        torch.sign(crop) * torch.log1p(crop.abs()),
    )
    # the same events in a denser frame are scored otherwise
    torch.manual_seed(0)
    model = TrueResidualUNet3D(settings).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 1.0)
    with torch.no_grad():
        sparse = model(crop[:1], raw=True, density=torch.tensor([1 / 64]))
        dense = model(crop[:1], raw=True, density=torch.tensor([1.0]))
    assert not torch.allclose(sparse, dense)


def test_the_mask_output_goes_with_the_mask_loss() -> None:
    _train_settings(model=ModelSettings(output="mask"), loss="mask")
    with pytest.raises(ValidationError, match="go together"):
        _train_settings(loss="mask")
    with pytest.raises(ValidationError, match="go together"):
        _train_settings(model=ModelSettings(output="mask"), loss="balanced")


def test_parameter_counts_match_the_published_configurations() -> None:
    assert count_parameters(TrueResidualUNet3D()) == 431_889
    paper = TrueResidualUNet3D(ModelSettings(f_maps=(32, 64, 128, 256)))
    assert count_parameters(paper) == 7_068_961


def test_odd_sensor_sizes_keep_their_shape_after_training_a_bit() -> None:
    torch.manual_seed(0)
    model = TrueResidualUNet3D(ModelSettings(f_maps=(8, 16)))
    with torch.no_grad():
        model.backbone.final_conv.weight.fill_(0.01)  # a non-trivial residual
        out = model(torch.randn(1, 1, 8, 13, 17))
    assert out.shape == (1, 1, 8, 13, 17)


def _train_settings(**overrides) -> TrainSettings:
    values = {"run_dir": "r", "data": DataSettings(data_dir="d")}
    values.update(overrides)
    return TrainSettings(**values)


def test_depth_must_fit_the_time_bins() -> None:
    _train_settings(model=ModelSettings(f_maps=(8, 16, 32, 64)))  # 8 bins hold 4 levels
    with pytest.raises(ValidationError, match="num_bins.*pooling xy"):
        _train_settings(model=ModelSettings(f_maps=(8, 16, 32, 64, 128)))


def test_pooling_space_alone_keeps_the_bins_and_lets_the_network_go_deeper() -> None:
    settings = ModelSettings(f_maps=(8, 8, 8, 8, 8), pooling="xy", output="mask")
    _train_settings(model=settings, loss="mask")  # 5 levels on 8 bins: time is never halved
    model = TrueResidualUNet3D(settings).eval()
    shapes = []
    hooks = [encoder.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
             for encoder in model.backbone.encoders]  # fmt: skip
    voxels = torch.zeros(1, 1, 8, 26, 35)
    voxels[0, 0, 2, 10, 10] = 3
    with torch.no_grad():
        output = model(voxels)
    for hook in hooks:
        hook.remove()
    assert [shape[2] for shape in shapes] == [8] * 5  # every level keeps 8 bins
    assert [shape[3] for shape in shapes] == [32, 16, 8, 4, 2]  # padded 26 -> 32, then halved
    assert output.shape == voxels.shape and float(output[0, 0, 2, 10, 10]) > 2.9  # ~identity
    assert settings.reach_px == 108 and settings.bin_multiple == 1


def test_crop_must_fit_the_depth() -> None:
    with pytest.raises(ValidationError, match="crop"):
        _train_settings(data=DataSettings(data_dir="d", crop=(30, 64)))
    with pytest.raises(ValidationError, match="context"):  # the window too
        _train_settings(data=DataSettings(data_dir="d", crop=(32, 64), context=3))
    with pytest.raises(ValidationError, match="context"):
        _train_settings(data=DataSettings(data_dir="d", crop="full", context=4))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"f_maps": (12, 24)}, "multiple of num_groups"),
        ({"dropout": 0.1}, "ignores dropout"),
        ({"f_maps": (16,)}, "at least 2"),
        ({"layer_order": "gr"}, "'c'"),
        ({"backbone": "DensityNet", "f_maps": (8, 8)}, "needs output mask"),
        ({"backbone": "DensityNet", "output": "mask", "dropout": 0.1}, "ignores dropout"),
        ({"removal": "threshold"}, "needs output mask"),
        ({"flicker_radii": (3,)}, "need backbone DensityNet"),
        ({"coherence_radii": (3,)}, "need backbone DensityNet"),
        ({"flicker_head": 3}, "need backbone DensityNet"),
        ({"peak_radii": (8,)}, "need backbone DensityNet"),
        ({"backbone": "DensityNet", "output": "mask", "flicker_head": 3}, "flicker_head needs"),
    ],
)
def test_bad_model_settings_are_refused(values, message) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSettings(**values)


def test_data_needs_one_source() -> None:
    with pytest.raises(ValidationError, match="data_dir"):
        DataSettings()
    with pytest.raises(ValidationError, match="not both"):
        DataSettings(data_dir="d", flare_dir="a", clean_dir="b")


DENSITY_NET = ModelSettings(backbone="DensityNet", f_maps=(8, 8), output="mask", input_norm="frame")


def test_box_mean_is_the_mean_over_the_box_cut_at_the_edges() -> None:
    """Pooled (narrow boxes, traced graphs) or from running sums (wide boxes), alike: each is
    the mean of the box cut at the frame's edges, also where the box is wider than the frame."""
    torch.manual_seed(0)
    counts = torch.randint(0, 4, (1, 2, 1, 9, 13)).float()
    for radius in (1, 3, 4, 8, 24):
        got = box_mean(counts, radius)
        for y, x in [(0, 0), (4, 6), (8, 12), (2, 11)]:
            box = counts[
                ..., max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1
            ]
            assert torch.allclose(got[..., y, x], box.mean(dim=(-2, -1)), atol=1e-6)
    wide = torch.rand(2, 3, 1, 70, 90) * (torch.rand(2, 3, 1, 70, 90) < 0.1)
    traced = torch.jit.trace(lambda x: box_mean(x, 24), wide, check_trace=False)
    assert box_mean(wide, 24).dtype == wide.dtype
    assert torch.allclose(traced(wide), box_mean(wide, 24), rtol=1e-5, atol=1e-7)


def test_density_net_scores_each_cell_by_the_densities_of_its_own_polarity_first() -> None:
    """One logit per pixel and polarity, from the densities of the cell's own polarity and then
    the opposite one, each within 1, 3, 8 and 24 px, over the frame's density."""
    torch.manual_seed(0)
    model = TrueResidualUNet3D(DENSITY_NET).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 1.0)
    voxels = torch.zeros(1, 1, 8, 40, 50)
    voxels[0, 0, 1, 10, 10] = 2  # ON at (10, 10) in two bins ...
    voxels[0, 0, 5, 10, 10] = 1
    voxels[0, 0, 3, 10, 12] = -1  # ... an OFF event beside them
    voxels[0, 0, 6, 30, 40] = 1
    with torch.no_grad():
        logits = model(voxels, raw=True)
        scaled = voxels * FRAME_REFERENCE / frame_density(voxels)
        on_map = scaled.clamp_min(0).sum(2, keepdim=True)[0, 0, 0]
        off_map = (-scaled).clamp_min(0).sum(2, keepdim=True)[0, 0, 0]

        def by_hand(own: torch.Tensor, other: torch.Tensor, y: int, x: int) -> torch.Tensor:
            means = [
                [
                    plane[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].mean()
                    for r in (1, 3, 8, 24)
                ]
                for plane in (own, other)
            ]
            features = torch.log1p(torch.tensor(means[0] + means[1]) / DENSITY_UNIT)
            return model.backbone.final_conv(model.backbone.hidden(features))[0]

        assert torch.allclose(logits[0, 0, 1, 10, 10], by_hand(on_map, off_map, 10, 10), atol=1e-5)
        assert logits[0, 0, 1, 10, 10] == logits[0, 0, 5, 10, 10]  # every bin of a pixel
        assert torch.allclose(logits[0, 0, 3, 10, 12], by_hand(off_map, on_map, 10, 12), atol=1e-5)
        # polarity flipped everywhere: each event keeps its logit (own polarity first)
        occupied = voxels != 0
        assert torch.allclose(model(-voxels, raw=True)[occupied], logits[occupied], atol=1e-6)


def test_an_untrained_density_net_changes_no_count_after_rounding() -> None:
    model = TrueResidualUNet3D(DENSITY_NET)
    voxels = torch.randint(-30, 31, (2, 1, 8, 26, 35)).float()
    with torch.no_grad():
        assert torch.equal(model(voxels).round(), voxels)
    assert DENSITY_NET.reach_px == 24 and DENSITY_NET.size_multiple == 1
    assert count_parameters(model) == 8 * 8 + 8 + 8 * 8 + 8 + 8 + 1


def test_flicker_features_count_polarity_alternations_between_busy_bins() -> None:
    """A pixel of a flickering light alternates polarity from busy bin to busy bin; a moving edge
    fires one polarity; empty bins between events do not break an alternation."""
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, [0, 2, 3, 5, 7], 5, 5] = torch.tensor([2.0, -1.0, 3.0, -0.5, 1.0])  # flicker
    voxels[0, 0, [1, 2], 5, 20] = 1.0  # an edge: ON twice
    voxels[0, 0, 4, 15, 25] = -1.0  # a lone event
    features = flicker_features(voxels, (2,)) / DENSITY_UNIT
    assert features.shape == (1, 20, 30, 3)
    assert features[0, 5, 5].tolist()[:2] == [4.0, 5.0]  # 4 alternations over 5 busy bins
    assert features[0, 5, 20].tolist()[:2] == [0.0, 2.0]
    assert features[0, 15, 25].tolist()[:2] == [0.0, 1.0]
    assert features[0, 0, 0].tolist()[:2] == [0.0, 0.0]
    assert torch.isclose(features[0, 6, 6, 2], torch.tensor(4 / 25))  # the mean within 2 px
    assert features[0, 5, 20, 2] == 0  # no flicker within 2 px of the edge
    # the counts do not depend on the scale of the frame (input_norm frame)
    assert torch.equal(flicker_features(voxels * 0.01, (2,)), flicker_features(voxels, (2,)))


def test_a_density_net_with_flicker_features_scores_them_for_both_polarities() -> None:
    settings = DENSITY_NET.model_copy(update={"flicker_radii": (3, 8)})
    model = TrueResidualUNet3D(settings).eval()
    assert model.backbone.hidden[0].in_features == 8 + 4 and settings.reach_px == 24
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, [0, 2, 4], 5, 5] = torch.tensor([1.0, -1.0, 1.0])
    features, occupied = model.backbone.features(voxels)
    assert features.shape == (2, 20, 30, 12)
    assert torch.equal(features[0, ..., 8:], features[1, ..., 8:])  # ON rows, OFF rows alike
    assert occupied[0, 5, 5] and occupied[1, 5, 5]
    with torch.no_grad():
        assert model(voxels).shape == voxels.shape
    wide = DENSITY_NET.model_copy(update={"flicker_radii": (30,)})
    assert wide.reach_px == 30  # a wider flicker box widens the reach (tiles' halo)


def test_coherence_features_tell_a_thin_edge_from_a_cloud_of_events() -> None:
    """Events along a line lie coherently (about 1), scattered ones do not; no events, 0; the
    frame's scaling does not change it."""
    counts = torch.zeros(1, 60, 80)
    counts[0, 30, 5:35] = 1.0  # a thin horizontal edge
    cloud = torch.rand(20, 20, generator=torch.Generator().manual_seed(0)) < 0.3
    counts[0, 20:40, 50:70] = cloud.float()  # a halo's scattered events
    features = coherence_features(counts, (3, 8)) / COHERENCE_UNIT
    assert features.shape == (1, 60, 80, 2)
    assert features[0, 30, 20].min() > 0.99
    assert features[0, 30, 60].max() < 0.5
    assert features[0, 5, 5].max() == 0  # nothing within reach
    assert torch.allclose(coherence_features(counts * 0.01, (3,)), coherence_features(counts, (3,)))
    turned = coherence_features(counts.transpose(1, 2).contiguous(), (3,)) / COHERENCE_UNIT
    assert turned[0, 20, 30, 0] > 0.99  # a vertical edge alike


@pytest.mark.parametrize("radius", [1, 2, 3, 8, 24, 64])
def test_box_max_is_the_largest_value_within_the_box(radius: int) -> None:
    """Doubling windows give exactly what one max-pooling pass over the box does, boxes wider
    than the frame included."""
    generator = torch.Generator().manual_seed(radius)
    image = torch.rand(2, 37, 90, generator=generator)
    image *= torch.rand(2, 37, 90, generator=generator) < 0.1
    pooled = torch.nn.functional.max_pool2d(image[:, None], 2 * radius + 1, 1, radius)[:, 0]
    assert torch.equal(box_max(image, radius), pooled)


def test_peak_features_tell_a_lone_event_beside_a_busy_pixel() -> None:
    """A lone event 10 px from a pixel with 20 sees that peak at radius 16 (its share 1/20),
    not at radius 4 (there it is its own peak, share 1); an empty box gives 0 and 0."""
    counts = torch.zeros(1, 40, 60)
    counts[0, 20, 20] = 20.0  # a light's busy core
    counts[0, 20, 30] = 1.0  # a halo event beside it
    peaks = peak_features(counts, (4, 16))
    assert peaks.shape == (1, 40, 60, 4)
    near, far = peaks[0, 20, 30, :2], peaks[0, 20, 30, 2:]
    assert torch.allclose(near, torch.tensor([1.0, COHERENCE_UNIT]))
    assert far[0] == 20 and torch.isclose(far[1], torch.tensor(COHERENCE_UNIT / 20))
    assert peaks[0, 5, 55].tolist() == [0.0] * 4
    assert torch.allclose(peak_features(counts * 0.01, (4, 16))[..., 1::2], peaks[..., 1::2])


@pytest.mark.parametrize(("frames", "busy"), [(1, 0.03), (3, 0.03), (2, 0.002)])
def test_features_at_the_events_are_the_whole_frames_features_bit_for_bit(
    frames: int, busy: float
) -> None:
    """The model computes features at its occupied pixels alone (event_features): they equal
    the rows of every pixel's table (features) there, for pooled boxes (over the frame, or
    at a sparse frame's events alone) and running-sum boxes, boxes wider than the frame,
    flicker, coherence and peak columns; so does the output."""
    settings = DENSITY_NET.model_copy(update={
        "density_radii": (1, 3, 8, 40), "flicker_radii": (2, 9), "coherence_radii": (3, 8, 24),
        "peak_radii": (4, 16, 90),
    })  # fmt: skip
    model = TrueResidualUNet3D(settings).eval()
    generator = torch.Generator().manual_seed(frames)
    sparse = torch.rand(frames, 1, 6, 90, 160, generator=generator) < busy
    voxels = torch.randint(-3, 4, sparse.shape, generator=generator) * sparse * 0.37
    voxels[0, 0, :, 40:45, 0:5] += 2.0  # a busy patch at the edge, among scattered events
    rows, occupied = model.backbone.event_features(voxels)
    table, every = model.backbone.features(voxels)
    assert torch.equal(occupied, every)
    assert occupied.sum() > 100 and torch.equal(rows, table[occupied])
    at = occupied.nonzero(as_tuple=True)
    if busy < 0.01:  # the sparse frame's pooled boxes come from its events' own boxes
        assert len(at[0]) * 7**2 < frames * 90 * 160
    with torch.no_grad():
        logits = model.backbone(voxels)
        traced = torch.jit.trace(model.backbone, voxels, check_trace=False)(voxels)
    assert torch.allclose(logits[voxels != 0], traced[voxels != 0], atol=1e-5)


def test_a_density_net_with_peak_features_reaches_its_widest_peak_box() -> None:
    settings = DENSITY_NET.model_copy(update={"peak_radii": (4, 40)})
    model = TrueResidualUNet3D(settings).eval()
    assert model.backbone.hidden[0].in_features == 8 + 4
    assert settings.reach_px == 40
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, 1, 10, 3:20] = 1.0
    features, _ = model.backbone.features(voxels)
    assert features.shape == (2, 20, 30, 12)
    with torch.no_grad():
        assert model(voxels).shape == voxels.shape


def test_a_density_net_with_coherence_features_reaches_two_pixels_further() -> None:
    settings = DENSITY_NET.model_copy(update={"coherence_radii": (3, 8)})
    model = TrueResidualUNet3D(settings).eval()
    assert model.backbone.hidden[0].in_features == 8 + 2
    assert DENSITY_NET.model_copy(update={"coherence_radii": (30,)}).reach_px == 32
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, 1, 10, 3:20] = 1.0
    features, _ = model.backbone.features(voxels)
    assert features.shape == (2, 20, 30, 10)
    assert torch.equal(features[0, ..., 8:], features[1, ..., 8:])
    with torch.no_grad():
        assert model(voxels).shape == voxels.shape


TREES = ModelSettings(backbone="DensityNet", output="mask", input_norm="frame",
                      density_head="trees")  # fmt: skip


def test_the_tree_ensemble_scores_as_scikit_learn_does() -> None:
    """Trees copied from a fitted HistGradientBoostingClassifier give its decision function,
    also on values that fall exactly on a threshold and outside the training range."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # the dev extra has it

    from deflare_cli.train.trees import load_trees, tree_shape

    rng = np.random.default_rng(0)
    x = rng.gamma(1.0, 2.0, (4000, 8))
    y = (x[:, 0] - x[:, 4] + rng.normal(0, 1, 4000)) > 1
    classifier = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    ensemble = TreeEnsemble(*tree_shape(classifier))
    load_trees(ensemble, classifier)
    probe = np.concatenate([rng.gamma(1.0, 2.0, (500, 8)), rng.gamma(1.0, 20.0, (50, 8))])
    node = classifier._predictors[0][0].nodes[0]
    probe[0, node["feature_idx"]] = node["num_threshold"]  # on the root's threshold: left
    expected = classifier.decision_function(probe)
    got = ensemble(torch.tensor(probe, dtype=torch.float32))[:, 0].double().numpy()
    assert np.allclose(got, expected, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # trees run in float32 whatever is asked
        under_bf16 = ensemble(torch.tensor(probe, dtype=torch.float32))[:, 0]
    assert np.allclose(under_bf16.double().numpy(), expected, atol=1e-4)


def test_an_unfitted_tree_model_changes_nothing_and_runs_in_torch_only() -> None:
    model = TrueResidualUNet3D(TREES)
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, 0, 5, 5], voxels[0, 0, 2, 6, 6] = 1.0, -2.0
    assert torch.equal(model(voxels).round(), voxels)  # removal sigmoid(-6): no count changes
    assert model(voxels, raw=True)[voxels != 0].eq(MASK_START_LOGIT).all()
    assert not TREES.exportable and DENSITY_NET.exportable
    assert [name for name, _ in model.named_parameters()] == []  # buffers: no optimiser moves them
    with pytest.raises(ValidationError, match="trees needs backbone DensityNet"):
        ModelSettings(output="mask", density_head="trees")


def test_a_flicker_head_scores_the_pixels_that_flicker_and_the_trees_the_rest() -> None:
    """With flicker_head 3, a pixel whose polarity alternates three times in its segment gets the
    flicker head's logit; one that flips twice (an edge passing there and back) and one that
    never flips get the first ensemble's, which sees no flicker column."""
    settings = TREES.model_copy(
        update={"flicker_radii": (3,), "coherence_radii": (3,), "flicker_head": 3}
    )
    model = TrueResidualUNet3D(settings)
    model.backbone.trees.bias.fill_(1.0)  # no trees: every logit is the bias
    model.backbone.flicker_trees.bias.fill_(5.0)
    voxels = torch.zeros(1, 1, 8, 20, 30)
    voxels[0, 0, :, 4, 4] = torch.tensor([1.0, 1, -1, -1, 1, 1, -1, 0])  # 3 alternations
    voxels[0, 0, :, 10, 10] = torch.tensor([1.0, 0, -1, 0, 1, 0, 0, 0])  # 2
    voxels[0, 0, :, 15, 20] = 1.0  # none
    raw = model(voxels, raw=True)[0, 0]
    assert raw[:, 4, 4].eq(5.0).all()
    assert raw[:3, 10, 10].eq(1.0).all() and raw[:, 15, 20].eq(1.0).all()
    assert model.backbone.shared_columns.tolist() == [*range(8), 11]  # densities, coherence
    with pytest.raises(ValidationError, match="flicker_head needs"):
        ModelSettings.model_validate({**TREES.model_dump(), "flicker_head": 3})
