"""Renamed keyword arguments keep working for a while, with a DeprecationWarning."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable


def renamed_keyword(old: str, new: str) -> Callable:
    """Decorator: accept ``old=`` as ``new=`` (warning once per call site), refuse both."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both {new!r} and its old name {old!r}; "
                                    f"pass {new!r} only.")
                warnings.warn(f"The {old!r} keyword of {fn.__qualname__} is now called {new!r}; "
                              f"{old!r} will be removed in a future release.", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return wrapper
    return decorate
