"""Loading the refer pickles (``refs(unc).p``, ``refs(umd).p``) without letting them run code.

A pickle can name any importable callable and have the loader call it. The refer annotations are plain lists,
dicts, strings and numbers, which pickle encodes without naming any callable, so this loader refuses every global
reference outright.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a callable; loading it could run code."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: the refer annotations hold only lists, dicts, strings and numbers, "
            "so a pickle that names a callable is not one of them (and could run code)"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """Loads a pickle made only of plain containers, strings and numbers.

    Python 2 byte strings (the refer pickles predate Python 3) are decoded as UTF-8.

    Raises:
        UnsafePickleError: When the pickle references any callable or class.
        ValueError: When the file is truncated or not a pickle.
    """
    data = Path(path).read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: truncated or not a pickle ({type(err).__name__}: {err})") from err
