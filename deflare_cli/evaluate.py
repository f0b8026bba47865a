"""``deflare evaluate``: how much each method helps, in the E-Deflare metrics.

For every pair (input with flare, clean target) each method produces an output from the input;
the output is scored against the target: point-cloud metrics on the whole file, voxel metrics per
20 ms segment of one absolute grid from the pair's common start, and, where the input carries
``deflare synth``'s per-event flare labels, event-level flare removal scores. A method's table
value is the mean over files (files where a metric is undefined, e.g. Chamfer of an empty output,
are left out of that mean and counted).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import Pair, atomic_output, find_pairs, make_folder, read_labels, read_pair
from .methods import Method, resolve_methods
from .metrics import (
    EVENT_METRICS,
    LIGHT_METRICS,
    LOWER_IS_BETTER,
    TABLE_METRICS,
    TargetScorer,
    event_scores,
    pair_span,
)
from .progress import Progress, map_jobs, no_progress
from .settings import EvaluateSettings

# Outputs made elsewhere (--pred-dir), scored as they are: a method that returns its input.
PREDICTED = Method("pred", "outputs made elsewhere", True, lambda source, span, settings: source)


@dataclass
class Report:
    """Scores of every method: means over files, and the per-file rows."""

    methods: dict[str, dict[str, float]]
    files: list[dict[str, Any]]
    undefined: dict[str, dict[str, int]]

    def as_json(self) -> dict[str, Any]:
        return {
            "methods": self.methods,
            "undefined_files": self.undefined,
            "files": self.files,
        }

    def best(self, metric: str) -> str | None:
        """The method with the best mean of a metric (None if no method has it)."""
        scored = {
            m: v[metric] for m, v in self.methods.items() if not math.isnan(v.get(metric, math.nan))
        }
        if not scored:
            return None
        pick = min if metric in LOWER_IS_BETTER else max
        return pick(scored, key=scored.get)


def evaluate(settings: EvaluateSettings, progress: Progress = no_progress) -> Report:
    """Score the methods (or the outputs in ``pred_dir``) on every pair; write the report files."""
    resolve_methods(settings.methods)  # unknown names fail before any work
    pairs = find_pairs(*settings.paired_dirs())
    if settings.output is not None:  # so is a report that could not be written (minutes later)
        make_folder(settings.output.parent)
    jobs = [(settings, pair) for pair in pairs]
    per_file = map_jobs(_evaluate_job, jobs, settings.runtime.workers, "evaluating", progress)
    report = summarise([row for file_rows in per_file for row in file_rows])
    if settings.output is not None:
        write_report(report, settings.output)
    return report


def _evaluate_job(job: tuple[EvaluateSettings, Pair]) -> list[dict[str, Any]]:
    settings, pair = job
    return evaluate_pair(settings, pair)


def evaluate_pair(settings: EvaluateSettings, pair: Pair) -> list[dict[str, Any]]:
    """One row of scores per method for one pair."""
    source, target = read_pair(pair, settings.read)
    span = pair_span(source, target)
    labels = light = None
    if not settings.pred_dir:
        labels, light = (read_labels(pair.flare_path, name, len(source))
                         for name in ("is_flare", "is_light"))  # fmt: skip
    methods = [PREDICTED] if settings.pred_dir else resolve_methods(settings.methods)
    scorer = TargetScorer(target, span, settings.codec)
    rows = []
    for method in methods:
        output = method.run(source, span, settings)
        row: dict[str, Any] = {"file": pair.pair_id, "method": method.name, "events": len(output)}
        row.update(scorer.point_cloud(output))
        row.update(scorer.voxel(output))
        if labels is not None and method.keeps_input_events:
            row.update(event_scores(source, labels, output, light))
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> Report:
    """Means over files per method (undefined values left out and counted)."""
    methods: dict[str, dict[str, float]] = {}
    undefined: dict[str, dict[str, int]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        names = (*TABLE_METRICS, *EVENT_METRICS, *LIGHT_METRICS)
        metrics = [m for m in names if any(m in row for row in mine)]
        methods[method] = {}
        for metric in metrics:
            values = np.array([row.get(metric, math.nan) for row in mine], np.float64)
            defined = values[~np.isnan(values)]
            methods[method][metric] = float(defined.mean()) if len(defined) else math.nan
            if len(defined) < len(values):
                undefined.setdefault(method, {})[metric] = int(len(values) - len(defined))
    return Report(methods, rows, undefined)


def write_report(report: Report, stem: Path) -> list[Path]:
    """``STEM.json`` (everything), ``STEM.csv`` (methods x metrics), ``STEM_files.csv``."""
    stem = Path(stem)
    if stem.suffix in (".json", ".csv"):
        stem = stem.with_suffix("")
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), Path(f"{stem}_files.csv")]
    with atomic_output(paths[0]) as temp_path:
        temp_path.write_text(json.dumps(_jsonable(report.as_json()), indent=1))
    metrics = list(dict.fromkeys(k for scores in report.methods.values() for k in scores))
    _write_csv(paths[1], ["method", *metrics],
               [{"method": m, **scores} for m, scores in report.methods.items()])  # fmt: skip
    columns = list(dict.fromkeys(k for row in report.files for k in row))
    _write_csv(paths[2], columns, report.files)
    return paths


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_output(path) as temp_path, open(temp_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
