"""``deflare synth``: paired flare / clean event recordings from a physical model.

One module per physical stage, in the order a pair is made:

- ``parameters``: everything random about a pair (illumination regime, sensor size, camera
  motion, lights, sensor non-idealities), drawn from (seed, index) alone;
- ``scene``: dead-leaves surfaces under smooth illumination, a drifting and shaking camera,
  objects moving on their own;
- ``optics``: each light's point-spread function (core, halo, starburst) and ghosts, moving with
  the camera and flickering (mains, PWM) or steady;
- ``sensor``: the DVS emulator (per-pixel thresholds, photoreceptor low-pass, refractory period)
  and the noise it adds (shot noise, leak, hot pixels);
- ``mixing``: E-Deflare's forward model that merges flare into the scene's events;
- ``pairs``: one pair end to end, and the paired files with their manifest.

The input file carries ``/events/is_flare`` (1 for events of the flare stream outside the light
sources themselves) and ``/events/is_light`` (1 for the light sources' own events, which the
target keeps), which ordinary readers ignore and evaluation and calibration use for event-level
scores.
"""

from .mixing import SynthPair
from .pairs import synthesise, synthesise_pair, write_pair
from .parameters import PairParameters, draw_parameters

__all__ = [
    "PairParameters",
    "SynthPair",
    "draw_parameters",
    "synthesise",
    "synthesise_pair",
    "write_pair",
]
