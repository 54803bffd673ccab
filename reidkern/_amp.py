"""Whether torch.autocast is on for a device type, for any device (meta included)."""
import torch


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types autocast does not know
    (``meta``), where torch's own query raises RuntimeError."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
