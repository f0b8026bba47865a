"""Inference engines: OpenVINO computes what PyTorch computes, the converted model is cached,
the choice and precision follow the machine, and missing pieces get a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import same_events
from test_infer import write_checkpoint
from test_tiles import density_network
from typer.testing import CliRunner

from deflare_cli import engines
from deflare_cli.cli import app
from deflare_cli.errors import DeflareError
from deflare_cli.infer import deflare
from deflare_cli.io import read_events
from deflare_cli.model import TrueResidualUNet3D
from deflare_cli.settings import InferSettings, ModelSettings, RuntimeSettings, TileSettings

CPU = torch.device("cpu")
pytest.importorskip("openvino", reason="make install installs it (the 'fast' extra)")


def trained_like(
    f_maps: tuple[int, ...] = (8, 16), output: str = "residual", pooling: str = "xyt"
) -> TrueResidualUNet3D:
    torch.manual_seed(0)
    settings = ModelSettings(f_maps=f_maps, output=output, pooling=pooling)
    model = TrueResidualUNet3D(settings).eval()
    torch.nn.init.normal_(model.backbone.final_conv.weight, 0, 0.3)
    return model


@pytest.mark.parametrize("output", ["residual", "mask"])
@pytest.mark.parametrize("shape", [(1, 8, 48, 64), (3, 8, 26, 35)])
def test_openvino_computes_what_torch_computes(shape: tuple[int, ...], output: str) -> None:
    model = trained_like(output=output)
    voxels = (torch.rand(*shape) < 0.2).float() * torch.randint(-3, 4, shape)
    reference = engines.TorchEngine(model, CPU, None).run(voxels)
    assert not torch.equal(reference, voxels)
    converted = engines.make_engine(model, "openvino", "fp32", CPU, f"test-parity-{output}")
    assert converted.name == "openvino" and converted.precision == "fp32"
    output = converted.run(voxels)
    assert output.shape == voxels.shape and output.dtype == torch.float32
    assert (output - reference).abs().max() < 1e-3  # far below the 0.5 rounding step


def test_openvino_runs_a_network_that_pools_space_alone() -> None:
    """Five levels on 8 bins (pooling xy) convert and compute what torch computes, on a size
    that needs padding (a DAVIS346 crop)."""
    model = trained_like((8, 8, 8, 8, 8), "mask", "xy")
    shape = (2, 8, 52, 70)
    voxels = (torch.rand(*shape) < 0.2).float() * torch.randint(-3, 4, shape)
    reference = engines.TorchEngine(model, CPU, None).run(voxels)
    converted = engines.make_engine(model, "openvino", "fp32", CPU, "test-parity-xy")
    assert (converted.run(voxels) - reference).abs().max() < 1e-3


def test_openvino_runs_the_density_net() -> None:
    model = density_network()
    shape = (2, 8, 52, 70)
    voxels = (torch.rand(*shape) < 0.1).float() * torch.randint(-3, 4, shape)
    reference = engines.TorchEngine(model, CPU, None).run(voxels)
    assert not torch.equal(reference, voxels)
    converted = engines.make_engine(model, "openvino", "fp32", CPU, "test-parity-density")
    assert (converted.run(voxels) - reference).abs().max() < 1e-3


def test_the_converted_model_is_cached_per_checkpoint(monkeypatch) -> None:
    model = trained_like()
    engines.make_engine(model, "openvino", "fp32", CPU, "cached")
    cached = engines.cache_dir() / "backbone-cached.xml"
    assert cached.exists() and cached.with_suffix(".bin").exists()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although cached")

    import openvino

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    engines._OPENVINO_ENGINES.clear()  # a new process: only the files on disk remain
    voxels = (torch.rand(1, 8, 16, 24) < 0.3).float()
    again = engines.make_engine(model, "openvino", "fp32", CPU, "cached")
    assert torch.allclose(again.run(voxels), engines.TorchEngine(model, CPU, None).run(voxels),
                          atol=1e-3)  # fmt: skip


def test_auto_picks_openvino_on_cpu_and_torch_without_it(monkeypatch) -> None:
    model = trained_like()
    assert engines.make_engine(model, "auto", "auto", CPU, "auto").name == "openvino"
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert engines.make_engine(model, "auto", "auto", CPU, "auto").name == "torch"
    with pytest.raises(DeflareError, match=r"deflare\[fast\]"):
        engines.make_engine(model, "openvino", "auto", CPU, "auto")


def test_precision_follows_the_cpu(monkeypatch) -> None:
    engines.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    assert engines.inference_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert engines.inference_precision("auto", CPU) == "bf16"
    assert engines.inference_precision("fp32", CPU) == "fp32"
    with pytest.raises(DeflareError, match="fp16"):
        engines.make_engine(trained_like(), "torch", "fp16", CPU, "x")


def test_engines_and_tilings_agree_on_a_recording(tmp_path: Path) -> None:
    """Deflared events are the same with either engine (convolution arithmetic may flip a rare
    cell on a rounding boundary) and deterministic for one engine and tiling."""
    from conftest import flare_pair, write_deflare

    flare, _ = flare_pair(duration_us=60_000)
    source = write_deflare(tmp_path / "in.h5", flare)
    checkpoint = write_checkpoint(tmp_path / "model.pt", perturb=0.5, bias=-0.3)
    outputs = {}
    for engine in ("torch", "openvino"):
        for tiling in ("frame", "tiles"):
            settings = InferSettings(
                checkpoint=checkpoint,
                tiles=TileSettings(mode=tiling, size=32, min_events=0),
                runtime=RuntimeSettings(device="cpu", engine=engine),
            )
            for run in (1, 2):
                target = tmp_path / f"{engine}-{tiling}-{run}.h5"
                [result] = deflare(source, target, settings)
                assert engine in result.engine
                outputs[engine, tiling, run] = read_events(target)
    for key in outputs:
        assert same_events(outputs[key], outputs[key[:2] + (1,)])  # deterministic
    for tiling in ("frame", "tiles"):  # (tiles differ from frames through GroupNorm)
        reference, other = outputs["torch", tiling, 1], outputs["openvino", tiling, 1]
        assert abs(len(other) - len(reference)) <= 0.001 * len(reference) + 2, tiling


def test_cli_reports_the_engine(tmp_path: Path) -> None:
    from conftest import flare_pair, write_deflare

    flare, _ = flare_pair(duration_us=40_000)
    source = write_deflare(tmp_path / "in.h5", flare)
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    result = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / "out.h5"),
                                      "--checkpoint", str(checkpoint), "--engine", "torch",
                                      "--tiling", "frame"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # precision auto: bf16 on CPUs with AVX512-BF16 or AMX, else fp32
    assert f"torch {'bf16' if engines.cpu_has_bf16() else 'fp32'} on CPU" in result.output
    odd_tiles = ["--checkpoint", str(checkpoint), "--tile-size", "31"]
    result = CliRunner().invoke(app, ["deflare", str(source), str(tmp_path / "o.h5"), *odd_tiles])
    assert result.exit_code == 1 and "multiples of 2" in result.output


def test_denormals_are_flushed_only_while_the_network_runs() -> None:
    """Left on, the flag leaked into threads started later and crashed SciPy's KD-tree."""
    import numpy as np

    tiny = np.float32(1e-39)  # a denormal float32
    engines.TorchEngine(trained_like(), CPU, None).run(torch.rand(1, 8, 16, 16))
    assert tiny * np.float32(2) != 0
    with engines.denormals_flushed(CPU):
        assert tiny * np.float32(2) == 0
    assert tiny * np.float32(2) != 0


def test_an_unwritable_cache_only_costs_time(monkeypatch, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("DEFLARE_CACHE_DIR", str(blocked / "cache"))
    engines._OPENVINO_ENGINES.clear()
    model = trained_like()
    voxels = (torch.rand(1, 8, 16, 24) < 0.3).float()
    engine = engines.make_engine(model, "openvino", "fp32", CPU, "unwritable")
    reference = engines.TorchEngine(model, CPU, None).run(voxels)
    assert (engine.run(voxels) - reference).abs().max() < 1e-3
    assert blocked.read_text() == "not a folder"


def test_a_tree_model_runs_in_torch() -> None:
    """Trees gather per pixel and tree: auto picks torch for them even where OpenVINO is."""
    from test_model import TREES

    from deflare_cli.model import TrueResidualUNet3D

    engine = engines.make_engine(TrueResidualUNet3D(TREES), "auto", "fp32", CPU, "trees")
    assert isinstance(engine, engines.TorchEngine)
    with pytest.raises(DeflareError, match="--engine torch"):
        engines.make_engine(TrueResidualUNet3D(TREES), "openvino", "fp32", CPU, "trees")
