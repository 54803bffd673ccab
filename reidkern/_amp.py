"""torch.autocast queries and switches that work on any device (meta included)."""
import contextlib

import torch


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types autocast does not know
    (``meta``), where torch's own query raises RuntimeError."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str):
    """``torch.autocast(device_type, enabled=False)``; a no-op context for device types autocast
    does not know (``meta``), where torch's own context raises RuntimeError."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
