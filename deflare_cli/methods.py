"""Every method ``deflare evaluate`` can score, each defined once.

A :class:`Method` has its name, what it does (the help text the CLI and README show), whether
its output keeps the input's own events (only then do per-event flare scores mean anything), and
the function that turns an input into an output. The CLI's choices, ``evaluate``'s default set,
``--methods all`` and the README's table all come from :data:`METHODS` (a test checks the
README against it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .baselines import (
    anti_flicker_filter,
    background_activity_filter,
    event_flicker_removal,
    polarity_focused_filter,
)
from .codec import events_to_voxel, segment_grid, voxel_to_events
from .errors import SettingsError
from .events import Events
from .infer import Deflarer, deflare_events, load_deflarer
from .settings import BaselineSettings, CodecSettings, EvaluateSettings, InferSettings

Filter = Callable[[Events, BaselineSettings], Events]
Run = Callable[[Events, tuple[int, int], EvaluateSettings], Events]


@dataclass(frozen=True)
class Method:
    """One way of turning an input recording into an output.

    Attributes:
        name: what ``--methods`` calls it.
        help: one line for ``--help`` and the README.
        keeps_input_events: the output is a subset of the input's events (plus, at most, a few
            synthesised ones), so per-event flare scores apply.
        run: ``run(input, pair span in us, settings) -> output``.
        needs_model: runs the network (left out of ``evaluate``'s default set).
        filter: for a classic filter, its own ``filter(events, BaselineSettings)``.
    """

    name: str
    help: str
    keeps_input_events: bool
    run: Run
    needs_model: bool = False
    filter: Filter | None = None


def voxel_round_trip(events: Events, codec: CodecSettings, span_us: tuple[int, int]) -> Events:
    """Encode on the pair's grid, then decode: what the codec alone costs (no network)."""
    grid = segment_grid(span_us, codec.segment_us)
    return voxel_to_events(events_to_voxel(replace(events, span_us=grid), codec), seed=0)


def _classic(name: str, function: Filter, help: str, keeps_input_events: bool = True) -> Method:
    def run(source: Events, span: tuple[int, int], settings: EvaluateSettings) -> Events:
        return function(source, settings.baselines)

    return Method(name, help, keeps_input_events, run, filter=function)


def _model(mode: str) -> Run:
    def run(source: Events, span: tuple[int, int], settings: EvaluateSettings) -> Events:
        return deflare_events(_deflarer(settings, mode), source, span)

    return run


_DEFLARERS: dict[tuple, Deflarer] = {}


def _deflarer(settings: EvaluateSettings, mode: str) -> Deflarer:
    """The loaded model of these settings, once per process."""
    key = (settings.checkpoint, settings.runtime, settings.tiles, mode)
    if key not in _DEFLARERS:
        infer = InferSettings(
            checkpoint=settings.checkpoint,
            runtime=settings.runtime,
            tiles=settings.tiles,
            output_mode=mode,
        )
        _DEFLARERS[key] = load_deflarer(infer)
    return _DEFLARERS[key]


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("raw", "the input itself, unchanged", True, lambda source, span, settings: source),
        Method(
            "voxel",
            "encode then decode, no network: what the voxel codec alone costs",
            False,
            lambda source, span, settings: voxel_round_trip(source, settings.codec, span),
        ),
        _classic(
            "efr",
            event_flicker_removal,
            "linear comb filter notching --efr-f0 and its harmonics (Wang et al. 2022)",
            keeps_input_events=False,
        ),
        _classic(
            "pfd-a",
            lambda events, settings: polarity_focused_filter(events, settings, "A"),
            "polarity-flip density filter, variant A (Shi et al.)",
        ),
        _classic(
            "pfd-b",
            lambda events, settings: polarity_focused_filter(events, settings, "B"),
            "polarity-flip density filter, variant B (Shi et al.)",
        ),
        _classic("baf", background_activity_filter, "background-activity filter (Delbruck 2008)"),
        _classic("antiflicker", anti_flicker_filter, "blinking-pixel detector, as in Metavision"),
        Method(
            "model",
            "deflare in preserve mode (keeps input events, edits cells minimally)",
            True,
            _model("preserve"),
            needs_model=True,
        ),
        Method(
            "model-resample",
            "deflare in resample mode (new events, uniform timestamps)",
            False,
            _model("resample"),
            needs_model=True,
        ),
    )
}
DEFAULT_METHODS = tuple(name for name, method in METHODS.items() if not method.needs_model)
CLASSIC_FILTERS: dict[str, Filter] = {
    name: method.filter for name, method in METHODS.items() if method.filter is not None
}


def resolve_methods(names: tuple[str, ...] | None) -> list[Method]:
    """The methods of these names (``all``: every one; None: the default set)."""
    if names is None:
        names = DEFAULT_METHODS
    if tuple(names) == ("all",):
        names = tuple(METHODS)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise SettingsError(f"unknown method(s) {unknown}; choose from {list(METHODS)} or 'all'")
    return [METHODS[name] for name in names]
