"""Inference engines: the trained network run on voxels with what the machine offers.

Every engine computes exactly the model's function, ``output = input + backbone(input)``, on a
batch of voxels ``(N, B, H, W)`` float32 and returns the same shape, float32, on the CPU:

- ``torch``: PyTorch, channels-last 3D, autocast to bf16/fp16 where asked. The engine on GPUs.
- ``openvino``: OpenVINO on the CPU (``pip install 'deflare[fast]'``). About 1.8x faster than
  PyTorch in fp32 on a 2-core AMD EPYC (AVX2) for a 640x480 segment, and it reuses its own
  buffers between calls, where PyTorch allocates and frees (``mmap``/``munmap``) every large
  activation: much of PyTorch's kernel time on CPU. The backbone is converted once per
  checkpoint with dynamic batch, height and width, and kept in the cache folder
  (:func:`cache_dir`), so later runs start in a second.

``auto`` picks OpenVINO on a CPU when it is installed, else PyTorch. The precision is bf16 where
the hardware has it (a CUDA GPU; on CPU, AVX512-BF16 or AMX), else fp32 (fp16 on GPUs without
bf16); :func:`describe` says which was chosen and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import torch

from .devices import autocast
from .errors import DeflareError
from .model import TrueResidualUNet3D, backbone_input, finish
from .settings import EngineName, Precision

log = logging.getLogger(__name__)

CACHE_ENV = "DEFLARE_CACHE_DIR"


class Engine(Protocol):
    """The network on a batch: (N, B, H, W) float32 in, the same shape float32 (CPU) out;
    ``density``: (N,) events per pixel of each input's whole frame, where the inputs are cut
    out of larger frames (``model.backbone_input``)."""

    name: str
    precision: str  # "fp32", "bf16" or "fp16"

    def run(self, voxels: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class TorchEngine:
    """The model through PyTorch, on the CPU or a GPU."""

    model: TrueResidualUNet3D
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    name: str = "torch"

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @torch.no_grad()
    def run(self, voxels: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
        batch = voxels[:, None].to(self.device).contiguous(memory_format=torch.channels_last_3d)
        with denormals_flushed(self.device), autocast(self.device, self.dtype):
            output = self.model(batch, density=density)
        return output[:, 0].float().cpu().contiguous()


class OpenVinoEngine:
    """The model's backbone converted to OpenVINO, compiled for the CPU."""

    name = "openvino"

    def __init__(self, model: TrueResidualUNet3D, key: str, precision: str) -> None:
        self.precision = precision
        self.settings = model.settings
        core = _openvino_core()
        converted = _converted_backbone(core, model, cache_dir() / f"backbone-{key}.xml")
        hint = "bf16" if precision == "bf16" else "f32"
        self.compiled = core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        self.request = self.compiled.create_infer_request()

    def run(self, voxels: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
        self.request.infer({0: backbone_input(voxels, self.settings, density)[:, None].numpy()})
        out = torch.from_numpy(self.request.get_output_tensor(0).data[:, 0])
        return finish(voxels, out, self.settings).contiguous()


@cache
def _openvino_core():
    """One OpenVINO runtime per process: its CPU plugin and thread pool load once and stay."""
    import openvino as ov

    core = ov.Core()
    try:
        core.set_property({"CACHE_DIR": str(cache_dir() / "compiled")})
    except RuntimeError as error:  # an unwritable cache folder: compile every run
        log.warning("no cache for compiled models (%s); set %s", error, CACHE_ENV)
    return core


_OPENVINO_ENGINES: dict[tuple[str, str], OpenVinoEngine] = {}


def _openvino_engine(model: TrueResidualUNet3D, key: str, precision: str) -> OpenVinoEngine:
    """The compiled engine of a checkpoint, once per process (compiling takes seconds)."""
    if (key, precision) not in _OPENVINO_ENGINES:
        _OPENVINO_ENGINES[key, precision] = OpenVinoEngine(model, key, precision)
    return _OPENVINO_ENGINES[key, precision]


def _converted_backbone(core, model: TrueResidualUNet3D, path: Path):
    """The backbone as an OpenVINO model with dynamic batch, height and width, converted once
    and kept at ``path`` (an interrupted save leaves no file: it is written under another
    name and renamed)."""
    import openvino as ov

    if path.exists():
        return core.read_model(path)
    log.info("converting the model for OpenVINO (once per checkpoint): %s", path)
    multiple = model.settings.size_multiple
    example = torch.zeros(1, 1, max(model.settings.bin_multiple, 2), 4 * multiple, 4 * multiple)
    converted = ov.convert_model(
        model.backbone.eval(), example_input=example, input=[ov.PartialShape([-1, 1, -1, -1, -1])]
    )
    temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.xml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(converted, temp, compress_to_fp16=False)
        os.replace(temp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(temp, path)
    except (OSError, RuntimeError) as error:  # a read-only or full cache: convert every run
        log.warning("cannot keep the converted model in %s (%s); set %s", path.parent, error,
                    CACHE_ENV)  # fmt: skip
        for leftover in (temp, temp.with_suffix(".bin")):
            with suppress(OSError):
                leftover.unlink()
    return converted


def cache_dir() -> Path:
    """Where converted models are kept: ``$DEFLARE_CACHE_DIR``, else ``$XDG_CACHE_HOME/deflare``,
    else ``~/.cache/deflare``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deflare"


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def inference_precision(precision: Precision, device: torch.device) -> str:
    """``auto``: bf16 where the hardware has it, else fp32 (fp16 on GPUs without bf16)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def make_engine(
    model: TrueResidualUNet3D,
    choice: EngineName,
    precision: Precision,
    device: torch.device,
    key: str,
) -> Engine:
    """The engine for this model on this device; ``key`` names the checkpoint in the cache."""
    chosen = inference_precision(precision, device)
    if chosen == "fp16" and device.type == "cpu":
        raise DeflareError("fp16 needs a CUDA GPU; use --precision fp32 or bf16")
    if choice == "openvino" and device.type != "cpu":
        raise DeflareError("--engine openvino runs on the CPU; use --device cpu or --engine torch")
    exportable = model.settings.exportable
    if choice == "openvino" and not exportable:
        raise DeflareError("this model (DensityNet with trees) runs in torch: use --engine torch")
    if choice == "openvino" or (choice == "auto" and device.type == "cpu" and exportable):
        if openvino_available():
            return _openvino_engine(model, key, chosen)
        if choice == "openvino":
            raise DeflareError(
                "--engine openvino needs the optional 'openvino' package: "
                "pip install 'deflare[fast]'"
            )
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[chosen]
    return TorchEngine(model.to(device, memory_format=torch.channels_last_3d), device, dtype)


def describe(engine: Engine, device: torch.device) -> str:
    """One line for the user: engine, precision, and why that precision."""
    if device.type == "cuda":
        return f"{engine.name} {engine.precision} on {torch.cuda.get_device_name(device)}"
    why = "CPU with bf16" if cpu_has_bf16() else "CPU without bf16 (no AVX512-BF16 or AMX)"
    return f"{engine.name} {engine.precision} on {why}, {torch.get_num_threads()} threads"


@contextmanager
def denormals_flushed(device: torch.device) -> Iterator[None]:
    """Denormal floats flushed to zero on a CPU while the network runs, and only then.

    Nearly empty (sparse) inputs drive activations into the denormal range, which x86 computes
    many times slower. The flag is per thread and inherited by threads started while it is set:
    left on, it crashed a later multi-threaded SciPy KD-tree query (``deflare evaluate``'s
    Chamfer distance), so it is switched off again after each call. (glibc allocator tuning
    through ``mallopt`` was tried too and dropped; OpenVINO, the default CPU engine, reuses its
    own buffers.)
    """
    if device.type != "cpu":
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
