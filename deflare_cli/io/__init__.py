"""Event files, voxel files and paired recordings: everything deflare reads or writes.

- :mod:`.layouts`: the HDF5 layouts (deflare/E-Deflare, DSEC, event_utils) and their detection;
- :mod:`.reader`: reading any layout, or a camera format through ``faery``, window by window;
- :mod:`.formats`: format names, suffixes, and which format an output gets;
- :mod:`.writer`: writing every layout and camera format, atomically and piece by piece;
- :mod:`.voxels`: voxel files and the whole-file encode/decode;
- :mod:`.pairs`: pairs of input and target files;
- :mod:`.files`: atomic outputs (files and folders), distinct paths, listing event files, hashing.
"""

from .files import (
    atomic_folder,
    atomic_output,
    check_distinct,
    check_new_folder,
    check_writable,
    file_sha256,
    list_event_files,
    make_folder,
    source_label,
)
from .formats import camera_format, output_format, output_suffix
from .pairs import Pair, find_pairs, pair_id, read_pair
from .reader import (
    EventFileReader,
    read_event_column,
    read_events,
    read_flare_labels,
    read_labels,
    read_light_labels,
)
from .voxels import decode_file, encode_file, read_voxels, write_voxels
from .writer import CameraFileWriter, EventFileWriter, open_writer, write_events

__all__ = [
    "CameraFileWriter",
    "camera_format",
    "open_writer",
    "output_format",
    "output_suffix",
    "EventFileReader",
    "EventFileWriter",
    "Pair",
    "atomic_folder",
    "atomic_output",
    "check_distinct",
    "check_new_folder",
    "check_writable",
    "decode_file",
    "encode_file",
    "file_sha256",
    "find_pairs",
    "list_event_files",
    "make_folder",
    "pair_id",
    "read_event_column",
    "read_flare_labels",
    "read_labels",
    "read_light_labels",
    "read_events",
    "read_pair",
    "read_voxels",
    "source_label",
    "write_events",
    "write_voxels",
]
