"""``[backend] devices``: the devices a run trains and samples on, as torch names.

``cpu``, ``gpu:N`` or ``cuda:N`` (both mean ``cuda:N``), comma-separated. With one
device, training and the in-process engine share it; with two (split mode), the
in-process engine samples on the first and training runs on the last. This module
imports no torch, so a config can be checked without loading it.
"""

from __future__ import annotations

import re

from retrain.errors import ConfigIssue

_DEVICE = re.compile(r"^(cpu|gpu:\d+|cuda:\d+)$")
DEVICES_FIX = "write cpu, gpu:N or cuda:N, comma-separated for split mode (e.g. \"gpu:0,gpu:1\")"


def parse_devices(devices: str) -> list[str]:
    """``devices`` as torch device strings; ``ValueError`` naming a bad entry."""
    parsed = []
    for item in devices.split(","):
        name = item.strip().lower()
        if not _DEVICE.match(name):
            raise ValueError(f"'{item.strip()}' is not a device")
        parsed.append("cpu" if name == "cpu" else "cuda:" + name.split(":")[1])
    return parsed


def device_issues(devices: str) -> list[ConfigIssue]:
    """What is wrong with ``[backend] devices`` as a whole (empty when it is usable)."""
    try:
        parsed = parse_devices(devices)
    except ValueError as exc:
        return [ConfigIssue("", "backend", "devices", str(exc), DEVICES_FIX)]
    if len(parsed) > 2:
        return [ConfigIssue("", "backend", "devices", f"{len(parsed)} devices given; split mode uses two",
                            "list one device, or two (sampling on the first, training on the last)")]
    return []
