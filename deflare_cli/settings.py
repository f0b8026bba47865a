"""Settings for every concern, as frozen pydantic models.

Each command builds one settings object: values from a YAML file (``--config``) first, then the
command-line flags on top. The defaults make the common case a one-liner.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import SettingsError


class Frozen(BaseModel):
    """Base for all settings: immutable; unknown keys, NaN and infinities are errors, not
    silently taken (``--lr inf`` trained every weight into NaN)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class CodecSettings(Frozen):
    """How events become voxels: fixed segments of ``num_bins`` equal time bins.

    The defaults are E-Deflare's: 20 ms segments of 8 bins of 2.5 ms.
    """

    num_bins: int = Field(8, ge=1, le=1024, description="time bins per segment")
    segment_us: int = Field(20_000, ge=1, description="segment length in microseconds")
    max_voxel_gib: float = Field(
        8.0, gt=0, description="refuse to build a voxel tensor larger than this (GiB)"
    )

    @model_validator(mode="after")
    def _bins_divide_segment(self) -> CodecSettings:
        if self.segment_us % self.num_bins:
            raise ValueError(
                f"segment_us ({self.segment_us}) must be a multiple of num_bins ({self.num_bins}) "
                "so that every bin covers a whole number of microseconds"
            )
        return self

    @property
    def bin_us(self) -> int:
        """Length of one time bin in microseconds."""
        return self.segment_us // self.num_bins


class ReadSettings(Frozen):
    """Which part of an event file to read, and on which sensor."""

    sensor_size: tuple[int, int] | None = Field(
        None, description="(height, width) in pixels; None: from the file, else 480x640"
    )
    time_window_ms: tuple[float, float] | None = Field(
        None, description="[start, end) in milliseconds from the recording's start"
    )
    drop_invalid: bool = Field(
        False,
        description="drop events that cannot be placed (timestamp NaN, infinite, negative or "
        "out of range; off the sensor) and count them, instead of refusing the file; the file "
        "is then loaded whole",
    )

    @field_validator("sensor_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (value[0] <= 0 or value[1] <= 0 or max(value) > 65535):
            raise ValueError(f"sensor size must be between 1 and 65535 pixels, got {value}")
        return value

    @field_validator("time_window_ms")
    @classmethod
    def _ordered_window(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0 <= value[0] < value[1]):
            raise ValueError(f"time window must satisfy 0 <= start < end, got {value}")
        return value


Compression = Literal["none", "gzip", "lzf", "zstd"]


EventFormat = Literal[
    "auto", "deflare", "dsec", "event_utils", "evt2", "evt3", "dat", "aedat4", "es", "csv"
]


class WriteSettings(Frozen):
    """How event files are written: the format (auto: as the input, or as the output's suffix
    says) and the compression of HDF5 layouts."""

    format: EventFormat = "auto"
    compression: Compression = "none"


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
EngineName = Literal["auto", "torch", "openvino"]


class RuntimeSettings(Frozen):
    """Where and how the work runs: the network's device, precision and inference engine, and
    how many worker processes share out the files (``synth`` and ``evaluate``; ``train`` and
    ``deflare`` share work over GPUs with torchrun instead). Training always uses PyTorch."""

    device: Device = Field("auto", description="auto: CUDA when present, else CPU")
    precision: Precision = Field(
        "auto", description="auto: bf16 where the hardware has it, else fp32 (fp16 on old GPUs)"
    )
    engine: EngineName = Field("auto", description="inference: OpenVINO on CPU when installed")
    workers: int = Field(1, ge=1, description="processes sharing the files (synth, evaluate)")


MemoryGB = Annotated[
    float, Field(gt=0, le=1e6, description="memory the job may use, GB (deflare_cli.budget)")
]


class EncodeSettings(Frozen):
    """``deflare encode``: event file to voxel file."""

    read: ReadSettings = ReadSettings()
    codec: CodecSettings = CodecSettings()
    memory_gb: MemoryGB = 2.0


class DecodeSettings(Frozen):
    """``deflare decode``: voxel file to event file."""

    seed: int = Field(0, ge=0, description="seed of the timestamp generator")
    write: WriteSettings = WriteSettings()


# DensityNet: no U-Net; a per-pixel classifier of box densities (model.DensityBackbone)
Backbone = Literal["ResidualUNet3D", "UNet3D", "DensityNet"]
# DensityNet's scorer: a perceptron trained by the optimiser, or gradient-boosted trees that
# deflare train fits per event (train/trees.py) and the model evaluates in torch
DensityHead = Literal["perceptron", "trees"]
Loss = Literal["mse", "balanced", "mask"]
ModelOutput = Literal["residual", "mask"]
# Pooling between U-Net levels: over time bins and space (pytorch-3dunet's default), or space
# alone (a (1, 2, 2) kernel), which keeps the 8 bins at every level so the network can be deeper
# than the bins allow, and see further.
Pooling = Literal["xyt", "xy"]
# What the backbone's input is divided by: nothing, or the event density of the input's whole
# 20 ms frame (model.backbone_input), so that a dense scene is judged against its own frame.
InputNorm = Literal["none", "frame"]
# how a cell's predicted excess becomes removed events (infer.removal_counts)
Removal = Literal["rounded", "threshold"]
# DensityNet's coherence features smooth the count image over 3x3 pixels, then take central
# differences: a coherence box of half-width r sees r + 2 pixels away (model.coherence_features)
COHERENCE_REACH = 2


class ModelSettings(Frozen):
    """The residual 3D U-Net (``model.TrueResidualUNet3D``).

    The default ``f_maps`` (16, 32, 64) has 431,889 parameters and trains on a CPU; the published
    E-DeflareNet is (32, 64, 128, 256), 7.07 M parameters, for a GPU.
    """

    backbone: Backbone = "ResidualUNet3D"
    f_maps: tuple[PositiveInt, ...] = Field(
        (16, 32, 64),
        min_length=2,
        description="features per level (DensityNet: widths of its hidden layers)",
    )
    layer_order: str = Field("gcr", pattern=r"^[cgrblei]+$", description="pytorch-3dunet order")
    num_groups: int = Field(8, ge=1, description="GroupNorm groups")
    dropout: float = Field(0.0, ge=0, lt=1, description="UNet3D only")
    output: ModelOutput = Field(
        "residual",
        description="residual: input + correction; mask: input x (1 - removal share), "
        "a classifier of events (model.py)",
    )
    pooling: Pooling = Field(
        "xyt",
        description="xyt: halve time bins and space per level down; xy: space alone, so more "
        "levels fit 8 bins and the network reaches further (5 levels: 108 px)",
    )

    input_norm: InputNorm = Field(
        "none",
        description="frame: scale the backbone's input by a reference density over the events "
        "per pixel of the input's whole frame (segment), also for crops and tiles; use it with "
        "BatchNorm (layer_order 'bcr'): GroupNorm's per-crop statistics would undo it",
    )

    density_radii: tuple[PositiveInt, ...] = Field(
        (1, 3, 8, 24),
        min_length=1,
        description="DensityNet: half-widths (pixels) of the boxes whose event densities it "
        "classifies by",
    )
    flicker_radii: tuple[PositiveInt, ...] = Field(
        (),
        description="DensityNet: also classify by each pixel's polarity alternations between its "
        "non-empty time bins and its number of non-empty bins, and by the alternations' means "
        "over boxes of these half-widths (pixels); empty: box densities alone",
    )
    coherence_radii: tuple[PositiveInt, ...] = Field(
        (),
        description="DensityNet: also classify by how line-like the events around a pixel lie: "
        "the orientation coherence of their count image over boxes of these half-widths "
        "(pixels); a thin moving edge gives about 1, a cloud of flare events less; empty: none",
    )
    peak_radii: tuple[PositiveInt, ...] = Field(
        (),
        description="DensityNet: also classify by the largest event count within boxes of these "
        "half-widths (pixels) around a pixel, and the pixel's own count over it (a lone flare "
        "event beside a light's busy core against a lone event in a dim scene); empty: none",
    )
    density_head: DensityHead = Field(
        "perceptron",
        description="DensityNet: perceptron (hidden widths f_maps, trained by the optimiser) or "
        "trees (gradient-boosted, fitted per event by deflare train; torch engine only)",
    )
    density_trees: tuple[int, int, int] = Field(
        (0, 1, 0),
        description="DensityNet with trees: (trees, nodes per tree, depth) of the fitted "
        "ensemble, written by deflare train; the model's tensors take this shape",
    )
    flicker_head: int = Field(
        0,
        ge=0,
        description="DensityNet with trees: a pixel whose polarity alternates at least this "
        "many times between its non-empty time bins in a segment (a light flickering at mains or "
        "PWM rates; a moving edge flips once or twice) is scored by a second ensemble, fitted on "
        "such pixels alone, which also sees the flicker_radii features (the first ensemble then "
        "does not); 0: one ensemble for every pixel",
    )
    flicker_trees: tuple[int, int, int] = Field(
        (0, 1, 0),
        description="DensityNet with a flicker head: (trees, nodes per tree, depth) of its "
        "ensemble, written by deflare train",
    )
    removal: Removal = Field(
        "rounded",
        description="how deflare turns the output into removed events: rounded (a cell loses "
        "its predicted excess, rounded towards zero by the margin) or threshold (mask models: "
        "a cell is edited only where its removal share is at least 0.5 + margin, then loses "
        "its rounded excess; for a model that scores a pixel's events alike, as DensityNet does)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelSettings:
        if self.removal == "threshold" and self.output != "mask":
            raise ValueError("removal threshold reads a removal share: it needs output mask")
        if self.backbone == "DensityNet":
            if self.output != "mask":
                raise ValueError("backbone DensityNet classifies events: it needs output mask")
            if self.flicker_head and (self.density_head != "trees" or not self.flicker_radii):
                raise ValueError("flicker_head needs density_head trees and flicker_radii")
            if self.dropout or self.pooling != "xyt":
                raise ValueError(
                    "backbone DensityNet ignores dropout and pooling; leave them unset"
                )
            return self
        if self.density_head != "perceptron":
            raise ValueError("density_head trees needs backbone DensityNet")
        if self.flicker_radii or self.coherence_radii or self.peak_radii or self.flicker_head:
            raise ValueError(
                "flicker_radii, coherence_radii, peak_radii and flicker_head are DensityNet "
                "features: they need backbone DensityNet"
            )
        if "c" not in self.layer_order:
            raise ValueError("layer_order must contain 'c' (the convolution)")
        if "g" in self.layer_order and any(f % self.num_groups for f in self.f_maps):
            raise ValueError(f"every f_maps entry {self.f_maps} must be a multiple of num_groups")
        if self.backbone == "ResidualUNet3D" and self.dropout:
            raise ValueError("ResidualUNet3D ignores dropout; use backbone UNet3D or dropout 0")
        return self

    @property
    def exportable(self) -> bool:
        """Whether the model can be traced for OpenVINO: trees gather per pixel and tree, which
        a graph over every pixel of a frame cannot afford (torch runs them on events only)."""
        return self.density_head == "perceptron"

    @property
    def log_input(self) -> bool:
        """Whether the backbone sees ``sign(v) log(1 + |v|)`` of the voxels: a mask U-Net does,
        so dense cores do not swamp sparse scenes; DensityNet counts events itself."""
        return self.output == "mask" and self.backbone != "DensityNet"

    @property
    def depth(self) -> int:
        """Levels of the U-Net: one per ``f_maps`` entry (pytorch-3dunet ignores num_levels);
        1 for DensityNet, which never pools."""
        return 1 if self.backbone == "DensityNet" else len(self.f_maps)

    @property
    def reach_px(self) -> int:
        """How far (pixels) an input cell can change an output cell through the convolutions:
        three 3x3x3 convolutions per level and encoder block, doubling per level down; measured
        10, 24 and 52 px for 2, 3 and 4 levels, 108 px for 5 (``pooling`` xy)
        (``tests/test_tiles.py``). GroupNorm's statistics reach further, but only by a little.
        DensityNet: its widest box (a coherence box also sees the 2 px its gradients take)."""
        if self.backbone == "DensityNet":
            coherence = tuple(radius + COHERENCE_REACH for radius in self.coherence_radii)
            return max(self.density_radii + self.flicker_radii + coherence + self.peak_radii)
        return 7 * 2 ** (self.depth - 1) - 4

    @property
    def density_columns(self) -> int:
        """DensityNet: how many features its scorer sees per pixel and polarity (two box
        densities per radius, the flicker counts, a coherence per radius, two peak columns per
        radius)."""
        flicker = 2 + len(self.flicker_radii) if self.flicker_radii else 0
        return (2 * len(self.density_radii) + flicker + len(self.coherence_radii)
                + 2 * len(self.peak_radii))  # fmt: skip

    @property
    def size_multiple(self) -> int:
        """Height and width are halved depth-1 times: they must divide by this."""
        return 2 ** (self.depth - 1)

    @property
    def bin_multiple(self) -> int:
        """Time bins must divide by this: halved depth-1 times (``xyt``) or never (``xy``)."""
        return self.size_multiple if self.pooling == "xyt" else 1


class DataSettings(Frozen):
    """Where paired training data is and how samples are drawn from it."""

    data_dir: Path | None = Field(None, description="folder holding the two paired folders")
    flare_dir: Path | None = Field(None, description="inputs: background_with_flare_events/")
    clean_dir: Path | None = Field(None, description="targets: background_with_light_events/")
    val_dir: Path | None = Field(None, description="validation pairs (same layout as data_dir)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="pairs held out when no val_dir")
    crop: tuple[PositiveInt, PositiveInt] | Literal["full"] = Field(
        (128, 128), description="training crop (h, w)"
    )
    context: int = Field(
        0,
        ge=0,
        description="pixels of context around each training crop: the model sees them, the "
        "loss leaves them out, as deflare's tiles carry a halo. With the model's reach (a "
        "DensityNet's widest box) every trained pixel gets the features a whole frame gives it; "
        "crops then lie at least this far inside the sensor",
    )
    flips: bool = Field(True, description="random horizontal and vertical flips in training")
    flare_crops: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of training crops centred on a pixel where input and target differ "
        "(sparse scenes: most random crops hold no flare at all)",
    )
    read: ReadSettings = Field(ReadSettings(), description="sensor size override")
    cache_dir: Path | None = Field(None, description="voxel cache; None: RUN_DIR/voxel_cache")
    num_workers: int = Field(
        0, ge=0, description="processes that encode pairs into the cache and load batches"
    )
    skip_bad: bool = Field(False, description="skip unreadable pairs (reported) instead of failing")

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        split = self.flare_dir is not None or self.clean_dir is not None
        if self.data_dir is not None and split:
            raise ValueError("give data_dir, or flare_dir with clean_dir, not both")
        if self.data_dir is None and (self.flare_dir is None or self.clean_dir is None):
            raise ValueError("give data_dir, or both flare_dir and clean_dir")
        return self

    def paired_dirs(self) -> tuple[Path, Path]:
        """(flare folder, clean folder) of the training data."""
        if self.data_dir is not None:
            return paired_dirs(self.data_dir)
        assert self.flare_dir is not None and self.clean_dir is not None  # checked by validator
        return self.flare_dir, self.clean_dir


def paired_dirs(data_dir: Path) -> tuple[Path, Path]:
    """The E-Deflare folders inside a data folder: (inputs with flare, clean targets)."""
    return data_dir / "background_with_flare_events", data_dir / "background_with_light_events"


class TrainSettings(Frozen):
    """``deflare train``: optimiser and schedule as the E-Deflare paper (Adam 2e-4, x0.2 steps)."""

    run_dir: Path
    data: DataSettings
    model: ModelSettings = ModelSettings()
    codec: CodecSettings = CodecSettings()
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_milestones: tuple[int, ...] = Field((10, 20, 30), description="epochs where lr *= gamma")
    lr_gamma: float = Field(0.2, gt=0, le=1)
    loss: Loss = Field(
        "mse",
        description="mse: over all cells; balanced: the mean of the MSEs of three kinds of "
        "cells (flare changed them, events flare left alone, empty), so that sparse scene "
        "events weigh as much as dense flare; mask: a class-balanced cross-entropy of each "
        "event's flare share (model output mask)",
    )
    val_every: int | None = Field(None, ge=1, description="validate every N steps; None: epoch")
    checkpoint_every: int = Field(200, ge=1, description="save last.pt every N steps too")
    batchnorm_batches: int = Field(
        32,
        ge=0,
        description="before each validation and the final save, recompute the statistics of "
        "BatchNorm layers over N batches of training crops (train/batchnorm.py; 0: keep the "
        "running averages); models without BatchNorm skip it",
    )
    max_steps: int | None = Field(None, ge=1, description="stop after N steps in total")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="stop after this many minutes of training (validated and saved as at "
        "Ctrl-C): a budget for a lent GPU or a night",
    )
    runtime: RuntimeSettings = RuntimeSettings()
    seed: int = Field(0, ge=0)
    resume: Path | None = Field(None, description="checkpoint to continue from")
    init_from: Path | None = Field(
        None,
        description="start from this checkpoint's weights (a training run's or an exported "
        "model; 'default': the shipped one), with a fresh optimizer at step 0: fine-tuning; "
        "for trees with a flicker head, the trees kept while the head alone is fitted",
    )
    overwrite: bool = Field(
        False, description="start a fresh run in a run-dir that holds one (removes its files)"
    )
    debug: bool = Field(False, description="run 2 steps and write debug_output/ pictures")

    @model_validator(mode="after")
    def _loss_fits_output(self) -> TrainSettings:
        if (self.loss == "mask") != (self.model.output == "mask"):
            raise ValueError("loss mask and model output mask go together (--loss mask sets both)")
        return self

    @model_validator(mode="after")
    def _sizes_fit_network(self) -> TrainSettings:
        multiple = self.model.size_multiple
        if self.codec.num_bins % self.model.bin_multiple:
            raise ValueError(
                f"a U-Net of depth {self.model.depth} halves time {self.model.depth - 1} times: "
                f"num_bins ({self.codec.num_bins}) must be a multiple of "
                f"{self.model.bin_multiple}; use fewer f_maps levels or pooling xy"
            )
        crop = self.data.crop
        if crop != "full" and (crop[0] % multiple or crop[1] % multiple):
            raise ValueError(
                f"crop {crop} must be a multiple of {multiple} for depth {self.model.depth}"
            )
        if self.data.context and (crop == "full" or 2 * self.data.context % multiple):
            raise ValueError(
                f"data.context {self.data.context} needs crops (not 'full'), and twice it must be "
                f"a multiple of {multiple} for depth {self.model.depth}"
            )
        return self


Regime = Literal["night", "dusk", "day"]
Range = tuple[float, float]


class SynthSettings(Frozen):
    """``deflare synth``: paired flare/clean recordings from a physical model (see ``synth/``).

    Ranges are drawn per pair (log-uniformly for rates and strengths that span decades). The
    defaults put most pairs where real flare happens: night and dusk, sparse (issue 12)."""

    out_dir: Path
    num_files: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    sensor_sizes: tuple[tuple[int, int], ...] = Field(
        ((480, 640),), description="(height, width) per pair, drawn uniformly from this list"
    )
    duration_ms: float = Field(100.0, gt=0, le=10_000)
    regimes: dict[Regime, float] = Field(
        {"night": 0.5, "dusk": 0.3, "day": 0.2}, description="share of pairs per illumination"
    )
    max_lights: int = Field(3, ge=1, le=8)
    dark_fraction: float = Field(
        0.25, ge=0, le=1, description="pairs without any bright light: the target is the input"
    )
    steady_fraction: float = Field(0.5, ge=0, le=1, description="lights that do not flicker")
    pwm_fraction: float = Field(0.25, ge=0, le=1, description="flickering lights that are PWM")
    mains_hz: tuple[float, ...] = Field((100.0, 120.0), description="flicker of mains lighting")
    pwm_hz: Range = Field((200.0, 2000.0), description="PWM frequency range of LED drivers")
    drift_px_per_ms: Range = Field((0.005, 1.0), description="camera drift speed (log-uniform)")
    vibration_hz: Range = Field((2.0, 15.0), description="camera shake frequency")
    vibration_px: Range = Field((0.5, 5.0), description="camera shake amplitude (at 640x480)")
    max_objects: int = Field(3, ge=0, le=20, description="independently moving objects")
    object_texture: float = Field(
        0.0, ge=0, le=1, description="moving objects with a textured surface (else plain)"
    )
    object_radius_px: Range = Field((4.0, 40.0), description="their size (log-uniform, 640x480)")
    surface_texture: float = Field(
        0.0, ge=0, le=1, description="scenes whose surfaces carry fine texture (else flat)"
    )
    object_speed_px_per_ms: Range = Field((0.02, 1.0), description="their speed (log-uniform)")
    threshold: Range = Field((0.15, 0.3), description="contrast threshold range")
    threshold_sigma: Range = Field((0.02, 0.06), description="per-pixel threshold spread")
    cutoff_hz: float = Field(300.0, gt=0, description="photoreceptor cutoff in bright light")
    refractory_us: tuple[int, int] = Field((100, 1000), description="refractory period range")
    shot_noise_hz: Range = Field((0.1, 3.0), description="per-pixel noise rate at night")
    noise_pairs: Range = Field(
        (0.0, 0.0),
        description="share of shot-noise events that the opposite event follows at their pixel "
        "a few ms later, as a noise excursion returns (Prophesee sensors; 0: none)",
    )
    leak_hz: Range = Field((0.01, 0.1), description="per-pixel leak (ON) event rate")
    hot_pixels: tuple[int, int] = Field((0, 8), description="range of hot pixels per file")
    samples_per_cycle: int = Field(12, ge=4, description="flare samples per flicker cycle")
    scene_flicker: float = Field(
        0.0, ge=0, le=1, description="pairs whose whole scene is lit by mains light and flickers"
    )
    scene_flicker_depth: Range = Field((0.02, 0.25), description="its depth (log-uniform)")
    scene_flicker_depth_by_regime: dict[Regime, Range] = Field(
        {}, description="the depth range per regime, where it differs from scene_flicker_depth"
    )
    background_dir: Path | None = Field(None, description="real recordings as backgrounds")
    write: WriteSettings = WriteSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    overwrite: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> SynthSettings:
        names = ("pwm_hz", "drift_px_per_ms", "vibration_hz", "vibration_px", "threshold",
                 "threshold_sigma", "refractory_us", "shot_noise_hz", "noise_pairs", "leak_hz",
                 "hot_pixels", "scene_flicker_depth", "object_radius_px",
                 "object_speed_px_per_ms")  # fmt: skip
        ranges = {name: getattr(self, name) for name in names} | {
            f"scene_flicker_depth_by_regime.{regime}": depth
            for regime, depth in self.scene_flicker_depth_by_regime.items()
        }
        for name, (low, high) in ranges.items():
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range [low, high] with 0 <= low <= high")
        if self.threshold[0] <= 0:
            raise ValueError("contrast thresholds must be positive")
        for height, width in self.sensor_sizes:
            if not (16 <= height <= 4096 and 16 <= width <= 4096):
                raise ValueError(f"sensor size {height}x{width} must be 16-4096 pixels a side")
        if not self.sensor_sizes:
            raise ValueError("sensor_sizes needs at least one (height, width)")
        if sum(self.regimes.values()) <= 0 or min(self.regimes.values()) < 0:
            raise ValueError("regimes: shares must be >= 0 and not all zero")
        return self


class BaselineSettings(Frozen):
    """Parameters of the classic filters (``baselines.py``), defaults from their papers."""

    efr_f0_hz: float = Field(50.0, gt=0, description="EFR notch base; E-Deflare used 50 Hz")
    efr_rho1: float = Field(0.6, gt=0, lt=1, description="EFR feedback of the first comb")
    efr_threshold: float = Field(0.7, gt=0, description="EFR output event threshold")
    efr_step_us: int = Field(500, ge=10, description="EFR time sampling of the filters")
    pfd_dt0_us: int = Field(20_000, ge=1, description="PFD stage 1 neighbour window")
    pfd_dt_us: int = Field(20_000, ge=1, description="PFD stage 2 flip window")
    pfd_min_neighbours: int = Field(3, ge=0, description="PFD keeps events with Ne above this")
    pfd_max_score: float = Field(2.0, gt=0, description="PFD keeps events scoring below this")
    baf_dt_us: int = Field(10_000, ge=1, description="background-activity filter window")
    antiflicker_band_hz: tuple[float, float] = Field((50.0, 150.0), description="flicker band")
    antiflicker_periods: int = Field(7, ge=1, description="steady periods before dropping")
    chunk_us: int = Field(500, ge=1, description="time resolution of neighbourhood filters")


class VisualizeSettings(Frozen):
    """``deflare visualize``: which part of a recording to draw."""

    segment: int = Field(0, description="segment whose voxel bins are drawn (negative: from end)")
    read: ReadSettings = ReadSettings()
    num_windows: int = Field(4, ge=1, le=32, description="time windows of the frame panels")
    gif: bool = Field(False, description="with --compare: also an animation over time")


OutputMode = Literal["preserve", "resample"]


Tiling = Literal["auto", "tiles", "frame"]


class TileSettings(Frozen):
    """Running the network only where events are (``deflare_cli.tiles``).

    A segment is cut into ``size`` x ``size`` tiles; the tiles with at least ``min_events``
    events, merged into rectangles where that saves pixels, run through the network with
    ``halo`` pixels of context on each side; the others pass through unchanged. ``auto`` runs
    tiles when their windows cover at most half the frame, else the whole frame.
    """

    mode: Tiling = "auto"
    size: int = Field(32, ge=8, le=4096, description="tile side in pixels")
    halo: int | None = Field(
        None, ge=0, le=512, description="context around each tile (px); None: the network's reach"
    )
    min_events: int = Field(16, ge=0, description="events a tile needs in a segment to be run")
    pass_pixels: int = Field(
        131_072, ge=64, description="pixels of windows per forward pass (bounds its memory)"
    )


class EvaluateSettings(Frozen):
    """``deflare evaluate``: score methods against clean targets with the E-Deflare metrics."""

    data_dir: Path | None = Field(None, description="folder holding the two paired folders")
    flare_dir: Path | None = Field(None, description="inputs (instead of data_dir)")
    clean_dir: Path | None = Field(None, description="targets (with flare_dir or pred_dir)")
    pred_dir: Path | None = Field(None, description="outputs made elsewhere, scored as they are")
    methods: tuple[str, ...] | None = Field(
        None, description="names from deflare_cli.methods; None: its default set"
    )
    checkpoint: Path | None = Field(None, description="model for model methods; None: shipped")
    output: Path | None = Field(None, description="report stem: writes .json, .csv, _files.csv")
    tiles: TileSettings = TileSettings()
    read: ReadSettings = ReadSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    codec: CodecSettings = CodecSettings()
    baselines: BaselineSettings = BaselineSettings()

    @model_validator(mode="after")
    def _sources(self) -> EvaluateSettings:
        if self.pred_dir is not None:
            if self.clean_dir is None and self.data_dir is None:
                raise ValueError("pred_dir needs clean_dir (or data_dir) to compare with")
        elif self.data_dir is None and (self.flare_dir is None or self.clean_dir is None):
            raise ValueError("give data_dir, or flare_dir with clean_dir, or pred_dir")
        if self.data_dir is not None and self.flare_dir is not None:
            raise ValueError("give data_dir or flare_dir, not both")
        if self.methods is not None and not self.methods and self.pred_dir is None:
            raise ValueError("choose at least one method")
        return self

    def paired_dirs(self) -> tuple[Path, Path]:
        """(input folder, target folder); the input is pred_dir when scoring made outputs."""
        flare_dir, clean_dir = paired_dirs(self.data_dir) if self.data_dir else (None, None)
        flare_dir = self.pred_dir or self.flare_dir or flare_dir
        clean_dir = self.clean_dir or clean_dir
        assert flare_dir is not None and clean_dir is not None  # checked by the validator
        return flare_dir, clean_dir


class InferSettings(Frozen):
    """``deflare deflare``: run a trained model over event files."""

    checkpoint: Path | None = Field(None, description="None: the default model in the package")
    batch_size: int = Field(1, ge=1, description="segments per forward pass")
    output_mode: OutputMode = "preserve"
    overwrite: bool = False
    seed: int = Field(0, ge=0, description="seed of removals and synthesised timestamps")
    margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="how sure the model must be to remove an event (0: round the prediction; "
        "None: the margin calibrated into the checkpoint, else 0)",
    )
    tiles: TileSettings = TileSettings()
    read: ReadSettings = ReadSettings()
    write: WriteSettings = WriteSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    memory_gb: MemoryGB = 2.0


class CalibrateSettings(Frozen):
    """``deflare calibrate``: the removal margin that keeps ``min_kept`` of non-flare events."""

    data_dir: Path = Field(description="labelled synthetic pairs (validation, not test)")
    min_kept: float = Field(0.97, gt=0, le=1, description="share of non-flare events to keep")
    max_share_below: float = Field(
        1.0, ge=0, le=1, description="share of pairs that may keep less than min_kept on their own"
    )
    min_light_kept: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of the light sources' own events to keep; min_kept then applies to "
        "the background alone (pairs need is_light labels)",
    )
    output: Path | None = Field(None, description="exported model with the chosen margin")
    report: Path | None = Field(
        None, description="CSV of every pair's flare removed and non-flare kept at every margin"
    )
    infer: InferSettings = InferSettings()

    @model_validator(mode="after")
    def _checkpoint(self) -> CalibrateSettings:
        if self.infer.checkpoint is None:
            raise ValueError("calibrate needs a checkpoint")
        return self

    def paired_dirs(self) -> tuple[Path, Path]:
        """(inputs with flare, clean targets)."""
        return paired_dirs(self.data_dir)


S = TypeVar("S", bound=BaseModel)


def parse_sensor_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``480x640``) into (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise SettingsError(f"sensor size must look like HEIGHTxWIDTH (e.g. 480x640), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_int_list(text: str) -> tuple[int, ...]:
    """Parse ``16,32,64`` into (16, 32, 64)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SettingsError(
            f"expected comma-separated whole numbers (e.g. 16,32,64), got {text!r}"
        ) from None


def parse_time_window(text: str) -> tuple[float, float]:
    """Parse ``START:END`` in milliseconds (e.g. ``0:100``)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", text)
    try:
        if not match:
            raise ValueError
        return float(match.group(1)), float(match.group(2))
    except ValueError:
        raise SettingsError(
            f"time window must look like START:END in milliseconds (e.g. 0:100), got {text!r}"
        ) from None


def load_settings(
    model: type[S], config: Path | None = None, overrides: dict[str, Any] | None = None
) -> S:
    """Build settings from an optional YAML file, then overrides (``None`` values are ignored).

    Overrides are nested like the model, e.g. ``{"codec": {"num_bins": 8}}``.
    """
    values: dict[str, Any] = read_yaml(config) if config is not None else {}
    merged = _merge(values, _drop_none(overrides or {}))
    try:
        return model.model_validate(merged)
    except ValidationError as error:
        source = f"{config} (with command-line flags)" if config else "command-line flags"
        raise SettingsError(f"invalid settings in {source}:\n{_describe(error)}") from None


MAX_SETTINGS_BYTES = 1 << 20


def read_yaml(path: Path, _children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping from a settings file, with clear errors for unreadable files. Files over
    1 MB (or endless ones such as /dev/zero) are refused before they are read, and so is a key
    given twice in one mapping (YAML would keep the last one silently).

    ``extends: OTHER.yaml`` (a path relative to this file's folder) starts from that file's
    settings and puts this file's on top, mapping by mapping: a recipe that differs from
    another in a few lines says only those."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SETTINGS_BYTES + 1)
        if len(raw) > MAX_SETTINGS_BYTES:
            raise SettingsError(f"{path}: not a settings file (more than 1 MB)")
        data = yaml.load(raw.decode(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise SettingsError(f"{path}: cannot read settings: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{path}: settings file must hold a mapping, found {type(data).__name__}"
        )
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise SettingsError(f"{path}: 'extends' must name one settings file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (path, *_children)}:
        raise SettingsError(f"{path}: 'extends' goes round in a circle back to {base_path}")
    return _merge(read_yaml(base_path, (path, *_children)), data)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping holds twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            kept[key] = value
    return kept


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)
