"""Where the network runs: device choice (CUDA, then Apple MPS, then CPU) and CPU threads."""

from __future__ import annotations

import os

import torch

from close_blender.errors import CloseError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else MPS, else CPU; or an explicit device, checked."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CloseError(f"unknown device {spec!r}",
                         "use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CloseError("CUDA was asked for but this torch has no usable CUDA device",
                             "use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CloseError(f"there is no CUDA device {device.index} "
                             f"({torch.cuda.device_count()} found)")
    elif device.type == "mps":
        if not _mps_available():
            raise CloseError("Apple MPS was asked for but is not available",
                             "use --device auto or cpu")
    elif device.type != "cpu":
        raise CloseError(f"unsupported device {spec!r}", "use auto, cpu, cuda or mps")
    return device


def configure_threads(n_threads: int | None = None) -> int:
    """Use one intra-op thread per core unless the user set OMP/MKL thread counts.

    Returns the number of threads torch uses.
    """
    if n_threads is None:
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
            return torch.get_num_threads()
        affinity = getattr(os, "sched_getaffinity", None)
        n_threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    n_threads = max(1, int(n_threads))
    if torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)
    return n_threads
