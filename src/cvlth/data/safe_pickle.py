"""A pickle reader for dataset files that admits only numpy arrays and plain containers.

The CIFAR python batches are pickles, and ``pickle.load`` runs whatever callable a file names
(``os.system``, ``builtins.exec``): a crafted dataset folder would run code as soon as it is read.
:func:`load_restricted` resolves only the globals genuine CIFAR files (written by Python 2 or 3,
numpy 1 or 2, any protocol) need and refuses every other one before anything is called.
"""

from __future__ import annotations

import builtins
import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray, numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]

# (module, name) -> the object it stands for. numpy 1 pickles say ``numpy.core``, numpy 2
# ``numpy._core``; both resolve to numpy 2's objects without importing the deprecated shim.
_ALLOWED: dict[tuple[str, str], Any] = {
    **{
        (m, "_reconstruct"): multiarray._reconstruct
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{(m, "_frombuffer"): numeric._frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    # A numpy scalar (a label re-saved as np.int64): its dtype and raw bytes, nothing callable else.
    **{(m, "scalar"): multiarray.scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols 0-2.
    ("_codecs", "encode"): codecs.encode,
    # Containers and scalars, under their Python 3 and Python 2 module names.
    **{
        (module, name): getattr(builtins, name)
        for module in ("builtins", "__builtin__")
        for name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float")
    },
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable outside the allow-list (it was not imported, nor called)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"it refers to {module}.{name}, which a dataset file never needs") from None


def load_restricted(path: Path) -> Any:
    """Unpickle ``path`` (Python 2 strings read as bytes) with only the allow-listed globals."""
    with open(path, "rb") as handle:
        return _RestrictedUnpickler(handle, encoding="bytes").load()
