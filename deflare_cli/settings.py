"""Settings for every concern, as frozen pydantic models.

Each command builds one settings object: values from a YAML file (``--config``) first, then the
command-line flags on top. The defaults make the common case a one-liner.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SettingsError


class Frozen(BaseModel):
    """Base for all settings: immutable, and unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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


class WriteSettings(Frozen):
    """How event files are written (always the deflare layout)."""

    compression: Compression = "none"


class EncodeSettings(Frozen):
    """``deflare encode``: event file to voxel file."""

    read: ReadSettings = ReadSettings()
    codec: CodecSettings = CodecSettings()


class DecodeSettings(Frozen):
    """``deflare decode``: voxel file to event file."""

    seed: int = Field(0, ge=0, description="seed of the timestamp generator")
    write: WriteSettings = WriteSettings()


S = TypeVar("S", bound=BaseModel)


def parse_sensor_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``480x640``) into (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise SettingsError(f"sensor size must look like HEIGHTxWIDTH (e.g. 480x640), got {text!r}")
    return int(match.group(1)), int(match.group(2))


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


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a settings file, with clear errors for unreadable files."""
    try:
        data = yaml.safe_load(Path(path).read_text())
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
    return data


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
