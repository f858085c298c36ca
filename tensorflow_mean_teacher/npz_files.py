"""Reading an npz archive of data without ever unpickling anything in it.

`np.load(..., allow_pickle=False)` refuses an object array (a pickle inside the archive) and a
file that numpy would read as a pickle; `read_arrays` turns that refusal, a truncated or
damaged file, a single `.npy` array and missing keys into one `UnreadableArrays` whose message
says why, for the caller to put beside the file's name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


class UnreadableArrays(ValueError):
    """The file is not an npz archive of (the wanted) numeric arrays; str() says why."""


def _reason(error: Exception, key: str | None = None) -> str:
    if isinstance(error, ValueError) and "pickle" in str(error):
        what = (f"{key!r} is an object array (pickled data)" if key else
                "it is neither an npz archive nor an .npy file (numpy would read it as a pickle)")
        return f"{what}, which is never unpickled"
    return f"{type(error).__name__}: {error}"


def read_arrays(path: str | os.PathLike, keys: Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
    """The arrays `keys` (default: every array) of the npz at `path`.

    FileNotFoundError if it is missing; `UnreadableArrays` for anything else that is wrong.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # not a zip, a pickle, a bad header, a directory
        raise UnreadableArrays(_reason(error)) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UnreadableArrays("it is a single .npy array, not an npz archive")
    with archive:
        wanted = list(archive.files if keys is None else keys)
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise UnreadableArrays(
                f"it has no {' or '.join(map(repr, missing))} array (arrays found: "
                f"{sorted(archive.files) or 'none'})")
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = archive[key]
            except Exception as error:  # an object array, a truncated or damaged member
                raise UnreadableArrays(_reason(error, key)) from error
            if not isinstance(arrays[key], np.ndarray):  # a zip member that is not .npy
                raise UnreadableArrays(f"key {key!r} is not a .npy array")
    return arrays
