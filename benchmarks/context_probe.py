"""How much context tells sparse flare events from the rest (issue 12, item 7: the evidence).

    python benchmarks/context_probe.py PAIRS_DIR [--checkpoint CKPT] [--device cpu|cuda]

PAIRS_DIR holds labelled pairs from ``deflare synth`` (inputs with ``/events/is_flare``), e.g.
``configs/night_point_light.yaml``'s 1280x720 steady point lights. Every input event gets box
densities (events per pixel) around it: of its own and the opposite polarity within 1-24 px in
its 20 ms segment (local: what the shipped 3-level network can see, it reaches 24 px), of all
events within 1-24 px (polarity-blind) and within 64 and 160 px (wide) in that segment, within
3-160 px over the whole pair (long: counts), and within 3-160 px per segment over the 100 and
300 ms before its segment (history: causal, what a streaming model could carry; NaN in the
first segment) and centred on it (around: what a network on longer segments sees); the local
densities divided by the frame's density (all events of the segment over the sensor's pixels:
input normalisation) or by the density within 64 px (as GroupNorm standardises a 128 px crop);
the frame's density itself, and the densest 17 px box in view with each event's distance from
it (where a light would be) and its polarity against that light's motion (``dipole``: the
ON events around the box lie ahead of the OFF ones, and a moving light's flare fires ON
ahead); with ``--checkpoint``, also the network's removal share (``event_scores.py``). A
gradient-boosted classifier per feature set is trained on the even pairs and scored on the odd
ones, then the other way round, and the table gives both halves' ROC AUC and the flare removed
at 97% of the other events kept. Needs scikit-learn (dev install).

    python benchmarks/context_probe.py CHECK_DIR --train-dir DIR [DIR ...] --recordings REC ...

asks whether what a classifier learns from one synthetic recipe carries over to real scenes:
one classifier per feature set (local, wide, history; no network) is trained on the pairs of
the ``--train-dir`` folders, its threshold is set where 97% of CHECK_DIR's non-flare events
lie at or below it, and each recording (real, without bright lights: scene alone) gets the
share of its events at or below that threshold (as ``share_gap.py`` does for a network). A
recording without its sensor size in the file is given as ``PATH:HxW``; ``--sets NAME ...``
runs only the feature sets named (as the table writes them), since each costs a classifier.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from deflare_cli.events import Events
from deflare_cli.io import find_pairs, read_events, read_flare_labels
from deflare_cli.settings import paired_dirs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from event_scores import (  # noqa: E402
    KEPT,
    read_recording,
    removal_shares,
    removed_at_kept,
    roc_auc,
)

SEGMENT_US = 20_000
LOCAL_PX = (1, 3, 8, 24)  # within the shipped network's reach
WIDE_PX = (64, 160)
LONG_PX = (3, 24, 160)
HISTORY_PX = (3, 24, 160)
HISTORY_SEGMENTS = (5, 15)  # the 100 and 300 ms before an event's segment
AROUND_SEGMENTS = (2, 7)  # 2 or 7 segments either side: 100 and 300 ms centred on it
LOCAL = [f"{kind}{r}" for kind in ("same", "opposite") for r in LOCAL_PX]
HISTORY = [f"history{n}_{r}" for n in HISTORY_SEGMENTS for r in HISTORY_PX]
AROUND = [f"around{n}_{r}" for n in AROUND_SEGMENTS for r in HISTORY_PX]
LIGHT_PX = 8  # the box whose densest place in view stands for the brightest light
LIGHT = ["peak", "peak_distance"]
LIGHT_AROUND = [f"around{max(AROUND_SEGMENTS)}_{name}" for name in LIGHT]
DIPOLE_PX = (24, 160)  # the events around the light whose ON-OFF offset gives its motion
DIPOLE = [f"dipole{r}" for r in DIPOLE_PX]
LOCAL_BY_FRAME = [f"{key}/frame" for key in LOCAL]
FEATURE_SETS = {
    "local (20 ms, up to 24 px)": LOCAL,
    "local, polarity-blind": [f"all{r}" for r in LOCAL_PX],
    "local + wide (64, 160 px)": LOCAL + [f"all{r}" for r in WIDE_PX],
    "local + long (whole pair)": LOCAL + [f"long{r}" for r in LONG_PX],
    "local + wide + long": LOCAL + [f"all{r}" for r in WIDE_PX] + [f"long{r}" for r in LONG_PX],
    "local + history (100, 300 ms before)": LOCAL + HISTORY,
    "local + wide + history": LOCAL + [f"all{r}" for r in WIDE_PX] + HISTORY,
    "local + around (100, 300 ms centred)": LOCAL + AROUND,
    "local + wide + around": LOCAL + [f"all{r}" for r in WIDE_PX] + AROUND,
    "local / frame density (normalised input)": LOCAL_BY_FRAME,
    "local / 64 px density (as a 128 px crop's)": [f"{key}/all64" for key in LOCAL],
    "local + frame density": [*LOCAL, "frame"],
    "local + frame + light": [*LOCAL, "frame", *LIGHT],
    "local + frame + light (300 ms)": [*LOCAL, "frame", *LIGHT_AROUND],
    "local + frame + light + dipole": [*LOCAL, "frame", *LIGHT, *DIPOLE],
    "local / frame + light / frame": [*LOCAL_BY_FRAME, "peak/frame", "peak_distance"],
    "local / frame + light / frame + dipole": [
        *LOCAL_BY_FRAME,
        "peak/frame",
        "peak_distance",
        *DIPOLE,
    ],
    "local / frame + wide / frame": [*LOCAL_BY_FRAME, *(f"all{r}/frame" for r in WIDE_PX)],
}
# the long densities are counts over the whole pair, which no other recording's length shares
TRANSFER_SETS = {
    name: keys
    for name, keys in FEATURE_SETS.items()
    if not any(key.startswith("long") for key in keys)
}
LabelledFile = tuple[dict[str, np.ndarray], np.ndarray]


def box_density(counts: np.ndarray, y: np.ndarray, x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of the (H, W) ``counts`` over the box of half-width ``radius`` around each (y, x),
    cut at the sensor's edges (an integral image: the same cost for any radius)."""
    return box_densities(counts, y, x, (radius,))[0]


def box_densities(
    counts: np.ndarray, y: np.ndarray, x: np.ndarray, radii: tuple[int, ...]
) -> list[np.ndarray]:
    """:func:`box_density` for each of ``radii``, from one integral image."""
    height, width = counts.shape
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = counts.cumsum(0).cumsum(1)
    means = []
    for radius in radii:
        top, bottom = np.clip(y - radius, 0, height), np.clip(y + radius + 1, 0, height)
        left, right = np.clip(x - radius, 0, width), np.clip(x + radius + 1, 0, width)
        total = integral[bottom, right] - integral[top, right] - integral[bottom, left]
        means.append((total + integral[top, left]) / ((bottom - top) * (right - left)))
    return means


def light_centre(counts: np.ndarray) -> tuple[float, tuple[int, int]]:
    """(the highest mean of ``counts`` over a box of half-width ``LIGHT_PX`` anywhere in view,
    that box's centre): where the brightest light would be, if there is one."""
    from scipy.ndimage import uniform_filter

    smooth = uniform_filter(counts, size=2 * LIGHT_PX + 1, mode="constant")
    top = np.unravel_index(np.argmax(smooth), smooth.shape)
    return float(smooth[top]), (int(top[0]), int(top[1]))


def light_features(counts: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    """(:func:`light_centre`'s peak, each (y, x)'s distance in pixels from its centre)."""
    peak, (top, left) = light_centre(counts)
    return peak, np.hypot(y - top, x - left)


def dipole_coherence(
    y: np.ndarray, x: np.ndarray, polarity: np.ndarray, centre: tuple[int, int], radius: int
) -> np.ndarray:
    """How well each event's polarity agrees with a light moving across the sensor, from -1
    to 1. A light and its flare brighten on the side it moves towards and dim behind it, so
    the ON events within ``radius`` of ``centre`` lie ahead of the OFF ones; their offset is
    the direction of motion. An event at angle a from that direction, seen from the centre,
    scores its polarity times cos(a): flare fires ON ahead and OFF behind (positive), scene
    edges either way. Zero where either polarity has fewer than 3 events within reach."""
    dy, dx = y - centre[0], x - centre[1]
    distance = np.hypot(dy, dx)
    on, off = (distance < radius) & (polarity > 0), (distance < radius) & (polarity < 0)
    if on.sum() < 3 or off.sum() < 3:
        return np.zeros(len(y))
    motion = np.array([y[on].mean() - y[off].mean(), x[on].mean() - x[off].mean()])
    length = np.hypot(*motion) * distance
    cosine = (dy * motion[0] + dx * motion[1]) / np.where(length > 0, length, 1.0)
    return np.sign(polarity) * np.where(length > 0, cosine, 0.0)


def _count_map(events: Events, chosen: np.ndarray) -> np.ndarray:
    height, width = events.sensor_size
    pixels = events.y[chosen].astype(np.int64) * width + events.x[chosen]
    return np.bincount(pixels, minlength=height * width).reshape(height, width).astype(float)


def event_features(events: Events) -> dict[str, np.ndarray]:
    """The feature columns of every event (see the module's docstring)."""
    y, x = events.y.astype(np.int64), events.x.astype(np.int64)
    segment = (events.t - events.time_span()[0]) // SEGMENT_US
    columns = {name: np.zeros(len(events)) for names in FEATURE_SETS.values() for name in names}
    segments = int(segment.max()) + 1 if len(events) else 0
    back, ahead = max(HISTORY_SEGMENTS), max(AROUND_SEGMENTS)
    maps: dict[int, np.ndarray] = {}  # count maps of the segments within reach of the current one
    for index in range(segments):
        for later in range(index, min(index + ahead + 1, segments)):
            if later not in maps:
                maps[later] = _count_map(events, segment == later)
        maps.pop(index - back - 1, None)
        inside = segment == index
        here_y, here_x, positive = y[inside], x[inside], events.p[inside] > 0
        of_on = box_densities(_count_map(events, inside & (events.p > 0)), here_y, here_x, LOCAL_PX)
        of_off = box_densities(
            _count_map(events, inside & (events.p < 0)), here_y, here_x, LOCAL_PX
        )
        for radius, on, off in zip(LOCAL_PX, of_on, of_off, strict=True):
            columns[f"same{radius}"][inside] = np.where(positive, on, off)
            columns[f"opposite{radius}"][inside] = np.where(positive, off, on)
            columns[f"all{radius}"][inside] = on + off
        columns["frame"][inside] = inside.sum() / maps[index].size
        columns["peak"][inside], centre = light_centre(maps[index])
        columns["peak_distance"][inside] = np.hypot(here_y - centre[0], here_x - centre[1])
        for radius in DIPOLE_PX:
            columns[f"dipole{radius}"][inside] = dipole_coherence(
                here_y, here_x, events.p[inside], centre, radius
            )
        wide = box_densities(maps[index], here_y, here_x, WIDE_PX)
        for radius, density in zip(WIDE_PX, wide, strict=True):
            columns[f"all{radius}"][inside] = density
        spans = [(f"history{n}", max(index - n, 0), index) for n in HISTORY_SEGMENTS]
        spans += [(f"around{n}", max(index - n, 0), min(index + n + 1, segments))
                  for n in AROUND_SEGMENTS]  # fmt: skip
        for name, first, end in spans:
            if first == end:  # the first segment has no past
                densities = [np.nan] * len(HISTORY_PX)
            else:
                mean = sum(maps[k] for k in range(first, end)) / (end - first)
                densities = box_densities(mean, here_y, here_x, HISTORY_PX)
                if name == f"around{max(AROUND_SEGMENTS)}":
                    peak, distance = light_features(mean, here_y, here_x)
                    columns[f"{name}_peak"][inside] = peak
                    columns[f"{name}_peak_distance"][inside] = distance
            for radius, density in zip(HISTORY_PX, densities, strict=True):
                columns[f"{name}_{radius}"][inside] = density
    for key in [*LOCAL, "peak", *(f"all{r}" for r in WIDE_PX)]:
        columns[f"{key}/frame"] = columns[key] / columns["frame"]
    for key in LOCAL:
        columns[f"{key}/all64"] = columns[key] / columns["all64"]
    every = _count_map(events, np.ones(len(events), bool))
    for radius, density in zip(LONG_PX, box_densities(every, y, x, LONG_PX), strict=True):
        columns[f"long{radius}"] = density
    return columns


def probe(
    pairs_dir: Path, checkpoint: Path | None = None, device: str = "cpu"
) -> list[tuple[str, list[float], list[float]]]:
    """(feature set, AUC per half, flare removed at 97% kept per half) for every feature set,
    and each with the network's removal share where ``checkpoint`` is given."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    files = labelled_features(pairs_dir, checkpoint, device)
    if len(files) < 2:
        raise SystemExit(f"{pairs_dir}: needs at least 2 labelled pairs, found {len(files)}")
    sets = dict(FEATURE_SETS)
    if checkpoint is not None:
        sets = {"network share alone": ["share"]} | {
            f"share + {name}": ["share", *keys] for name, keys in FEATURE_SETS.items()
        }
    rows = []
    for name, keys in sets.items():
        aucs, removed = [], []
        for half in (0, 1):
            train = [f for number, f in enumerate(files) if number % 2 == half]
            test = [f for number, f in enumerate(files) if number % 2 != half]
            classifier = HistGradientBoostingClassifier(max_iter=200, random_state=0)
            classifier.fit(_matrix(train, keys), np.concatenate([labels for _, labels in train]))
            scores = classifier.predict_proba(_matrix(test, keys))[:, 1]
            labels = np.concatenate([labels for _, labels in test])
            aucs.append(roc_auc(scores, labels))
            removed.append(removed_at_kept(scores, labels))
        rows.append((name, aucs, removed))
    return rows


def labelled_features(
    pairs_dir: Path, checkpoint: Path | None = None, device: str = "cpu"
) -> list[LabelledFile]:
    """(feature columns, is_flare) of every labelled pair's input in ``pairs_dir``."""
    files = []
    pairs = find_pairs(*paired_dirs(pairs_dir))
    print(f"features of {len(pairs)} pairs in {pairs_dir}", file=sys.stderr, flush=True)
    for pair in pairs:
        events = read_events(pair.flare_path)
        columns = event_features(events)
        if checkpoint is not None:
            columns["share"] = removal_shares(checkpoint, events, device)
        files.append((columns, read_flare_labels(pair.flare_path, len(events)).astype(bool)))
    return files


def transfer(
    train_dirs: list[Path],
    check_dir: Path,
    recordings: dict[str, Events],
    set_names: list[str] | None = None,
) -> list[tuple[str, float, float, dict[str, float]]]:
    """(feature set, ROC AUC on the check pairs, their flare removed at 97% of the rest kept,
    {recording: share of its events at or below that threshold}) per feature set of
    ``TRANSFER_SETS`` (those named in ``set_names``, or all), for a classifier trained on the
    pairs of ``train_dirs`` alone; ``recordings`` time-sorted."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    unknown = sorted(set(set_names or []) - set(TRANSFER_SETS))
    if unknown:
        raise SystemExit(f"--sets: no feature set {unknown}; there are {list(TRANSFER_SETS)}")
    sets = {name: TRANSFER_SETS[name] for name in set_names} if set_names else TRANSFER_SETS
    train = [file for folder in train_dirs for file in labelled_features(folder)]
    check = labelled_features(check_dir)
    if not train or not check:
        raise SystemExit(f"no labelled pairs in {train_dirs if not train else check_dir}")
    scene = {}
    for name, events in recordings.items():
        print(f"features of {name}", file=sys.stderr, flush=True)
        scene[name] = event_features(events)
    labels = np.concatenate([labels for _, labels in check])
    rows = []
    for name, keys in sets.items():
        classifier = HistGradientBoostingClassifier(max_iter=200, random_state=0)
        classifier.fit(_matrix(train, keys), np.concatenate([labels for _, labels in train]))
        scores = classifier.predict_proba(_matrix(check, keys))[:, 1]
        threshold = np.quantile(scores[~labels], KEPT)
        kept = {}
        for recording, columns in scene.items():
            recording_scores = classifier.predict_proba(_columns(columns, keys))[:, 1]
            kept[recording] = float((recording_scores <= threshold).mean())
        rows.append((name, roc_auc(scores, labels), removed_at_kept(scores, labels), kept))
    return rows


def _columns(columns: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    return np.column_stack([columns[key] for key in keys])


def _matrix(files: list[LabelledFile], keys: list[str]) -> np.ndarray:
    return np.concatenate([_columns(columns, keys) for columns, _ in files])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs_dir", type=Path, help="labelled pairs (deflare synth)")
    parser.add_argument("--checkpoint", type=Path, help="add this model's removal share")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--train-dir", type=Path, nargs="+", help="train here, check on pairs_dir")
    parser.add_argument("--recordings", nargs="+", default=[], help="PATH or PATH:HxW")
    parser.add_argument("--sets", nargs="+", help="with --train-dir: only these feature sets")
    args = parser.parse_args()
    if args.sets and not args.train_dir:
        parser.error("--sets chooses feature sets of the transfer table: give --train-dir too")
    if args.train_dir:
        return print_transfer(args.train_dir, args.pairs_dir, args.recordings, args.sets)
    print(f"| features ({args.pairs_dir}) | ROC AUC (two halves) | flare removed at 97% kept |")
    print("|---|---:|---:|")
    for name, aucs, removed in probe(args.pairs_dir, args.checkpoint, args.device):
        print(f"| {name} | {aucs[0]:.3f} / {aucs[1]:.3f} | {removed[0]:.1%} / {removed[1]:.1%} |")
    return 0


def print_transfer(
    train_dirs: list[Path], check_dir: Path, specs: list[str], set_names: list[str] | None = None
) -> int:
    """The transfer table (see the module's docstring)."""
    recordings = dict(read_recording(spec) for spec in specs)
    print(f"Trained on {', '.join(map(str, train_dirs))}; threshold: 97% of {check_dir}'s "
          "non-flare events kept; recordings: share of their events at or below it")  # fmt: skip
    print("| features | ROC AUC | flare removed at 97% kept | " + " | ".join(recordings) + " |")
    print("|---|---:|---:|" + "---:|" * len(recordings))
    for name, auc, removed, kept in transfer(train_dirs, check_dir, recordings, set_names):
        shares = " | ".join(f"{kept[recording]:.1%}" for recording in recordings)
        print(f"| {name} | {auc:.3f} | {removed:.1%} | {shares} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
