"""Input checks shared by every public entry point.

Each check raises ``ValueError`` or ``TypeError`` with a message of the form
"The 'gamma' parameter of TabularMDP must be in (0, 1). Got 1.2 instead.", so the
user learns which parameter, what was expected and what was given, before any
compiled kernel sees the data.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ._kernels.checks import all_finite


def _where(owner: str) -> str:
    return f" of {owner}" if owner else ""


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return repr(value)


def check_real_scalar(value: Any, name: str, owner: str = "", *, low: float | None = None,
                      high: float | None = None, low_open: bool = True,
                      high_open: bool = True) -> float:
    """Return ``value`` as a float after checking it is a finite real in the given interval."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"The '{name}' parameter{_where(owner)} must be a real number. "
                        f"Got {_describe(value)} instead.")
    value = float(value)
    lo_ok = low is None or (value > low if low_open else value >= low)
    hi_ok = high is None or (value < high if high_open else value <= high)
    if not np.isfinite(value) or not (lo_ok and hi_ok):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be in {interval}. "
                         f"Got {value!r} instead.")
    return value


def check_int(value: Any, name: str, owner: str = "", *, low: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer ``>= low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"The '{name}' parameter{_where(owner)} must be an integer. "
                        f"Got {_describe(value)} instead.")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be an integer >= {low}. "
                         f"Got {value} instead.")
    return value


def as_float_array(value: Any, name: str, owner: str = "", *, ndim: int | None = None,
                   shape: tuple[int | None, ...] | None = None, allow_negative: bool = True,
                   shape_text: str | None = None) -> np.ndarray:
    """Convert to a C-contiguous float64 array and check its shape and entries.

    ``shape`` may contain ``None`` for free dimensions. NaN and inf are always rejected;
    negative entries when ``allow_negative`` is False. ``shape_text`` names the expected
    shape in messages, e.g. ``"(S, A) = (5, 2)"`` (default: the numbers of ``shape``).
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"The '{name}' parameter{_where(owner)} must be an array of real numbers. "
                        f"Got {_describe(value)} instead.")
    if type(value) is np.ndarray and value.dtype == np.float64 and value.flags.c_contiguous:
        arr = value  # already what the kernels take (the common case on a hot path: no conversion)
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"The '{name}' parameter{_where(owner)} must be an array of real numbers. "
                            f"Got {type(value).__name__} ({exc}) instead.") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"The '{name}' parameter{_where(owner)} must be an array of real numbers. "
                            f"Got {_describe(arr)} instead.")
        arr = np.ascontiguousarray(arr, dtype=np.float64)
    want_ndim = len(shape) if shape is not None else ndim
    if want_ndim is not None and arr.ndim != want_ndim:
        expected = shape_text or (_shape_text(shape) if shape is not None
                                  else _shape_text(tuple([None] * want_ndim)))
        raise ValueError(f"The '{name}' parameter{_where(owner)} must have shape {expected}. "
                         f"Got shape {arr.shape} instead.")
    if shape is not None and any(w is not None and w != g for w, g in zip(shape, arr.shape)):
        raise ValueError(f"The '{name}' parameter{_where(owner)} must have shape "
                         f"{shape_text or _shape_text(shape)}. Got shape {arr.shape} instead.")
    check_finite(arr, name, owner)
    if not allow_negative and arr.size and arr.min() < 0:
        idx = np.unravel_index(int(np.argmin(arr)), arr.shape)
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be non-negative. "
                         f"Got {arr[idx]!r} at index {tuple(int(i) for i in idx)} instead.")
    return arr


def check_finite(arr: np.ndarray, name: str, owner: str = "") -> None:
    """Raise ValueError naming the first NaN or inf entry of ``arr``."""
    if arr.size and not all_finite(arr.reshape(-1)):
        bad = np.flatnonzero(~np.isfinite(arr.ravel()))[0]
        idx = np.unravel_index(int(bad), arr.shape)
        raise ValueError(f"The '{name}' parameter{_where(owner)} must contain only finite values. "
                         f"Got {arr.ravel()[bad]!r} at index {tuple(int(i) for i in idx)} instead.")


def check_choice(value: Any, name: str, choices: tuple[str, ...], owner: str = "") -> str:
    """Check that ``value`` is one of the string ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be one of "
                         f"{', '.join(repr(c) for c in choices)}. Got {value!r} instead.")
    return value


def check_nonempty_list(value: Any, name: str, owner: str = "") -> list:
    """Accept a single item or a non-empty sequence of items; return a list."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be a non-empty list. "
                         f"Got an empty {type(value).__name__} instead.")
    return items


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_computed_finite(value: Any, quantity: str, owner: str, hint: str = "") -> None:
    """Raise FloatingPointError naming ``quantity`` when a computed result overflowed.

    Inputs are validated finite, so a non-finite result means float64 ran out of range:
    the exact answer is not representable and returning it as inf/NaN would be silent.
    """
    arr = np.asarray(value)
    if arr.size and not np.isfinite(arr).all():
        flat = arr.ravel()
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        where = "" if arr.ndim == 0 else f" at index {tuple(int(i) for i in np.unravel_index(bad, arr.shape))}"
        raise FloatingPointError(f"{owner}: {quantity} overflowed the float64 range ({float(flat[bad])!r}{where}). "
                                 f"{hint}".rstrip())


def check_seed(seed: Any, name: str, owner: str = "") -> np.random.Generator:
    """A numpy Generator from an int >= 0 seed or a Generator (which is used, not copied)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"The '{name}' parameter{_where(owner)} must be an int seed or a "
                        f"numpy.random.Generator. Got {_describe(seed)} instead.")
    if seed < 0:
        raise ValueError(f"The '{name}' parameter{_where(owner)} must be a non-negative int seed. "
                         f"Got {seed} instead.")
    return np.random.default_rng(int(seed))
