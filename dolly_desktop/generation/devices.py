"""OpenVINO inference devices, with names a person can read."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dolly_desktop.errors import DollyError

AUTO = "AUTO"
# Virtual devices OpenVINO resolves to real ones: "AUTO", "AUTO:GPU,CPU", "HETERO:GPU,CPU".
_VIRTUAL = ("AUTO", "HETERO", "MULTI")


@dataclass(frozen=True)
class Device:
    id: str
    name: str

    def label(self) -> str:
        return f"{self.id} — {self.name}"


@lru_cache(maxsize=1)
def list_devices() -> tuple[Device, ...]:
    """Real devices first (as OpenVINO lists them: CPU, GPU.0, NPU...), then AUTO."""
    import openvino as ov

    core = ov.Core()
    found = []
    for dev in core.available_devices:
        try:
            name = str(core.get_property(dev, "FULL_DEVICE_NAME"))
        except RuntimeError:
            name = dev
        found.append(Device(dev, name))
    found.append(Device(AUTO, "Automatic: OpenVINO picks the best available device"))
    return tuple(found)


def check_device(device: str) -> str:
    """Return the device id in OpenVINO's spelling, or refuse one this machine lacks."""
    wanted = device.strip().upper()
    known = [d.id for d in list_devices()]
    base, _, targets = wanted.partition(":")
    if base in _VIRTUAL:
        parts = [t for t in targets.split(",") if t]
        bad = [t for t in parts if t not in known and t.split(".")[0] not in known]
        if not bad:
            return wanted
        wanted = bad[0]
    elif wanted in known or (wanted == "GPU" and any(k.startswith("GPU.") for k in known)):
        return wanted
    raise DollyError(f"Unknown device {device!r}: this machine has {', '.join(known)}.")
