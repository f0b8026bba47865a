"""Do no harm on real recordings (issue 12): the shipped default model keeps the events of real
scenes without bright lights, and the lamp discs of a real scene with lamps (on the quick ones;
``evt3_dim_indoor`` takes minutes and is left to ``make realdata``).

The recordings live in ../shared/realdata (test data of this project, never shipped). Where they
are absent the tests skip, saying so; ``make realdata`` runs the same check on every recording
and writes the table the README quotes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from realdata import KEEP_TARGET, REALDATA, check, no_lights_run, verdict  # noqa: E402

from deflare_cli.errors import InputError  # noqa: E402
from deflare_cli.settings import InferSettings, RuntimeSettings  # noqa: E402

# fp32 on every machine, as the README's figures: where a CPU computes bf16 (AMX, AVX512-BF16),
# auto precision shifts a U-Net's removal shares by up to ~0.01 (the U-Net shipped until
# 2026-12-07 kept the lamp scene at 97.04% in fp32 and 96.89-96.96% in bf16); the default
# model's trees give the same output in both.
SETTINGS = InferSettings(runtime=RuntimeSettings(device="cpu", precision="fp32"))
needs_realdata = pytest.mark.skipif(
    not REALDATA.is_dir(), reason=f"{REALDATA} is not on this machine"
)


@needs_realdata
@pytest.mark.parametrize("name", ["dvxplorer_indoor_person", "davis346_emlb_demo"])
def test_default_model_keeps_real_scenes_without_lights(name: str) -> None:
    row = check(REALDATA / f"{name}.h5", SETTINGS)
    assert row["kept"] >= KEEP_TARGET, f"{name}: kept {row['kept']:.1%}"


@needs_realdata
def test_default_model_keeps_real_lamp_discs_and_the_scene_around_them() -> None:
    row = check(REALDATA / "davis346_flicker_lamps.h5", SETTINGS)
    assert row["lamp_discs_kept"] >= KEEP_TARGET, f"lamp discs kept {row['lamp_discs_kept']:.1%}"
    # the scene's edges fire with the lamps' flicker: a model that takes flicker for flare
    # removes them (a candidate of 2026-11-28 kept the discs and 86.5% of the rest)
    assert row["scene_kept"] >= KEEP_TARGET, f"rest of the scene kept {row['scene_kept']:.1%}"


@needs_realdata
def test_info_reads_every_real_recording() -> None:
    from typer.testing import CliRunner

    from deflare_cli.cli import app

    files = sorted(REALDATA.glob("*.h5"))
    result = CliRunner().invoke(app, ["info", *map(str, files), "--json"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("{")]
    assert len(rows) == len(files) == 5


def test_more_recordings_without_lights_are_judged_as_the_three(tmp_path: Path) -> None:
    """``--no-lights FILE[:HxW]``: the size reaches the reader (a camera file that does not say
    it), a colon of the path's own is not taken for one, a missing file is refused before any
    recording runs, and such a row gets the 97% target."""
    (tmp_path / "street.raw").write_bytes(b"")
    (tmp_path / "a:b.es").write_bytes(b"")
    path, settings = no_lights_run(f"{tmp_path}/street.raw:720x1280", SETTINGS)
    assert path == tmp_path / "street.raw" and settings.read.sensor_size == (720, 1280)
    assert settings.runtime == SETTINGS.runtime and SETTINGS.read.sensor_size is None
    assert no_lights_run(f"{tmp_path}/a:b.es", SETTINGS) == (tmp_path / "a:b.es", SETTINGS)
    with pytest.raises(InputError, match="file not found"):
        no_lights_run(f"{tmp_path}/missing.raw:720x1280", SETTINGS)
    row = {"recording": "street", "kept": KEEP_TARGET - 0.001, "no_lights": True}
    assert verdict(row).startswith("FAIL")
    assert verdict({**row, "kept": KEEP_TARGET}) == "pass"
    assert verdict({**row, "no_lights": False}) == "(no target)"
