"""The validators every config uses: counts, numbers, choices, sizes and devices, one rule each.

Each raises ValueError with a sentence that names the setting and what it got, so that a
frozen config's ``__post_init__`` is a list of calls, and every command reports the same
mistake in the same words. Sizes are (height, width) in pixels.
"""
from __future__ import annotations

import re
from typing import Sequence

Shape = tuple[int, int]

_DEVICE = re.compile(r"cpu|cuda(?::(\d+))?")


def count(name: str, value, minimum: int = 1, allow_none: bool = False):
    """``value`` as a whole number >= ``minimum`` (None passes where allowed); bools are not counts."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def number(name: str, value, minimum: float | None = None, maximum: float | None = None,
           open_maximum: bool = False) -> float:
    """``value`` as a real number within [minimum, maximum] (``open_maximum``: maximum excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN fails ==
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_high = maximum is not None and (value >= maximum if open_maximum else value > maximum)
    if (minimum is not None and value < minimum) or too_high:
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        raise ValueError(f"{name} must be within [{low}, {high}{')' if open_maximum else ']'}, got {value!r}")
    return value


def span(name: str, value, centre: float, minimum: float, maximum: float) -> tuple[float, float]:
    """torchvision's range argument: a number x means [centre - x, centre + x] (clamped at ``minimum``),
    a (low, high) pair itself; both ends within [minimum, maximum], low <= high."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
        low, high = (number(name, v, minimum, maximum) for v in value)
        if low > high:
            raise ValueError(f"{name}: low must be <= high, got {tuple(value)!r}")
        return float(low), float(high)
    number(name, value, 0, maximum - centre)
    return max(minimum, centre - float(value)), centre + float(value)


def positive(name: str, value, maximum: float | None = None, open_maximum: bool = False) -> float:
    """``value`` as a real number > 0 (and within ``maximum``)."""
    number(name, value, minimum=0, maximum=maximum, open_maximum=open_maximum)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def size(name: str, value) -> Shape:
    """A (height, width) pair of positive ints; an int means a square, as torchvision's sizes."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a positive int (a square) or a (height, width) pair, got {value!r}")
    return (value[0], value[1])


def parse_size(text: str) -> Shape:
    """Parse ``"224"`` or ``"HxW"`` (e.g. ``"256x192"``: height 256, width 192) into (height, width)."""
    parts = str(text).lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size must be N or HxW (height x width) with positive integers, got {text!r}") from None
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"size must be N or HxW (height x width) with positive integers, got {text!r}")
    return values  # type: ignore[return-value]


def device(name: str, value, simulated: bool = False) -> str:
    """'cpu', 'cuda' or 'cuda:N', by spelling only (``available_device`` asks the machine);
    with ``simulated`` also 'sim:R', the simulated accelerator (``feeding.sim``)."""
    if simulated and isinstance(value, str) and value.startswith("sim"):
        from feeding.sim import SimSpec

        SimSpec.parse(value)  # sim:0, sim:abc: a one-line error naming what R must be
        return value
    if not isinstance(value, str) or _DEVICE.fullmatch(value) is None:
        also = " or 'sim:R' (a simulated accelerator training R img/s)" if simulated else ""
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N'{also}, got {value!r}")
    return value


def device_index(value: str) -> int | None:
    """The CUDA index a device names (plain 'cuda': 0), None for the CPU."""
    match = _DEVICE.fullmatch(device("device", value))
    return None if value == "cpu" else int(match.group(1) or 0)


def available_device(name: str, value, simulated: bool = False) -> str:
    """``device``, and where it is CUDA, that this machine has that GPU."""
    value = device(name, value, simulated)
    if value == "cpu" or value.startswith("sim:"):
        return value
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"{name} {value!r} asked for, but CUDA is not available here (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'}, no GPU visible); use {name}='cpu'")
    if device_index(value) >= torch.cuda.device_count():
        raise ValueError(f"{name} {value!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return value
