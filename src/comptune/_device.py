"""`--device` for every command that runs a model: CUDA when present, else the CPU."""

from __future__ import annotations

import argparse

from .errors import UserError

DEVICE_HELP = "torch device to run on, e.g. cpu, cuda, cuda:1 (default: cuda if a GPU is visible, else cpu)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help=DEVICE_HELP)


def resolve_device(spec: str | None):
    """The torch.device for `spec` (None: cuda if available, else cpu); a clear error for a device
    this machine does not have, before anything is loaded."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"--device {spec!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} asks for a GPU, but this torch ({torch.__version__}) sees none "
                            "(no CUDA build or no visible GPU); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {spec}: comptune runs on cpu, cuda or mps")
    return device
