"""Event file formats: their names, the suffixes that name them, and which one an output gets.

HDF5 layouts (:mod:`.layouts`): ``deflare`` (E-Deflare), ``dsec``, ``event_utils``. Camera formats,
read and written through ``faery``: ``evt2`` and ``evt3`` (``.raw``), ``dat``, ``aedat4``,
``es``, ``csv``. An output takes ``--output-format`` when given, else the format its suffix
names, else the input's own format (a ``.raw`` keeps its EVT version).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputError
from .files import HDF5_SUFFIXES

HDF5_FORMATS = ("deflare", "dsec", "event_utils")
CAMERA_SUFFIX = {
    "evt2": ".raw",
    "evt3": ".raw",
    "dat": ".dat",
    "aedat4": ".aedat4",
    "es": ".es",
    "csv": ".csv",
}
SUFFIX_FORMAT = {".dat": "dat", ".aedat4": "aedat4", ".es": "es", ".csv": "csv"}
HEADER_BYTES = 1 << 16  # a .raw header is a few hundred bytes of "% ..." lines


def camera_format(path: Path) -> str:
    """The camera format of a file, from its suffix (and, for ``.raw``, its header)."""
    suffix = path.suffix.lower()
    if suffix != ".raw":
        return SUFFIX_FORMAT[suffix]
    with open(path, "rb") as stream:
        head = stream.read(HEADER_BYTES)
    header = b"\n".join(line for line in head.split(b"\n") if line.startswith(b"%")).lower()
    if b"evt 2" in header or b"evt2" in header:
        return "evt2"
    return "evt3"  # EVT3 headers say so; without a word, faery also reads EVT3


def output_format(requested: str, target: object, source_format: str) -> str:
    """The format to write: ``requested`` unless ``auto``; else the target's suffix; else the
    input's (``source_format``). A stream target (stdout) gets the deflare layout."""
    if not isinstance(target, str | Path):
        return "deflare" if requested == "auto" else requested
    suffix = Path(target).suffix.lower()
    if suffix not in HDF5_SUFFIXES and suffix != ".raw" and suffix not in SUFFIX_FORMAT:
        raise OutputError(
            f"{target}: unknown output suffix {suffix or '(none)'}: name it .h5 (HDF5 layouts) "
            "or .raw, .dat, .aedat4, .es, .csv (camera formats)"
        )
    if requested != "auto":
        _check_suffix(Path(target), requested)
        return requested
    if suffix == ".raw":
        return source_format if source_format in ("evt2", "evt3") else "evt3"
    if suffix in SUFFIX_FORMAT:
        return SUFFIX_FORMAT[suffix]
    return source_format if source_format in HDF5_FORMATS else "deflare"


def output_suffix(requested: str, source: Path) -> str:
    """The suffix of an output named after its input (folders): the input's own, or that of
    the requested format."""
    if requested == "auto":
        return source.suffix
    return CAMERA_SUFFIX.get(requested, source.suffix if _is_hdf5(source) else ".h5")


def _check_suffix(target: Path, format_name: str) -> None:
    suffix = target.suffix.lower()
    wanted = CAMERA_SUFFIX.get(format_name)
    if wanted is not None and suffix != wanted:
        raise OutputError(f"{target}: a {format_name} file must end in {wanted}")
    if wanted is None and suffix in (".raw", *SUFFIX_FORMAT):
        raise OutputError(f"{target}: the {format_name} layout is HDF5; name the file .h5")


def _is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in HDF5_SUFFIXES
