"""Which device to run on, and whether bf16 is native there (emulated bf16 is far slower)."""

from __future__ import annotations

import torch

from common.cli import ConfigError


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_supported(device: str | torch.device) -> bool:
    """Whether bf16 autocast is native, hence fast, on `device` (emulated bf16 is not)."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):  # compute capability >= 8.0; V100 only emulates it
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    get = getattr(torch.cpu, "get_capabilities", None)  # cpuinfo's flags, public in torch 2.13
    if get is None:  # an older torch: its private x86 probes, where it has them
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    caps = get()
    # x86: AVX512-BF16 or AMX-BF16; ARM: the BF16 extension. Not `mkldnn_bf16_supported`: it
    # says True on any AVX-512 CPU, where oneDNN emulates bf16.
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16") or caps.get("bf16"))


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1") as a torch.device, or the best available one for None.
    An unknown or absent device is a ConfigError, not a traceback from deep inside a run."""
    try:
        device = torch.device(name or pick_device())
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here: use cpu")
    return device
