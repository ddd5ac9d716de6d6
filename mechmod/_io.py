"""Crash-safe file writing: everything mechmod writes goes to a temporary
file in the same directory and is renamed into place, so a reader never
sees a half-written file. Files get the usual mode (``0666 & ~umask``), and
a write that fails (disk full, file size limit, permissions) raises a
MechmodError naming the file. JSON is read here too, refusing what is not
JSON with a MechmodError."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mechmod.errors import MechmodError


def umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(path: Path, err: OSError) -> MechmodError:
    return MechmodError(f"{path}: cannot write ({err.strerror or err}); check the free disk space, the file size "
                        "limit (ulimit -f) and the permissions, then re-run")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the mode
    ``open()`` would (mkstemp makes 0600) and rename it onto ``path``
    (atomic on POSIX); on failure remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, path)
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_json(path: str | os.PathLike, hint: str, expect: type | None = None) -> Any:
    """The JSON value in ``path`` (of type ``expect`` when given). A file that
    cannot be read, is not UTF-8 JSON, is nested too deeply or holds another
    type raises a MechmodError naming it and ending with ``hint`` (what to do)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MechmodError(f"{path}: cannot read ({err.strerror or err}); {hint}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MechmodError(f"{path}: not valid JSON ({err}); {hint}") from None
    except RecursionError:
        raise MechmodError(f"{path}: JSON nested too deeply to read; {hint}") from None
    if expect is not None and not isinstance(value, expect):
        raise MechmodError(f"{path}: holds a JSON {type(value).__name__}, expected a JSON "
                           f"{'object' if expect is dict else expect.__name__}; {hint}")
    return value


def remove_stale_temps(directory: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Remove the temporary files ``.{prefix}*.tmp`` that :func:`atomic_path`
    of a killed writer left in ``directory``; returns those removed. Only
    call it where no other process is writing files with that prefix."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.glob(f".{prefix}*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays as Python values, paths as
    strings, tuples as lists, dict keys as strings, and NaN / inf (an empty
    bin, an undefined rate) as None, so that it is strict JSON."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(path: str | os.PathLike, table) -> None:
    """Write a pyarrow Table (or pandas DataFrame) atomically, without
    timestamps or other run-dependent metadata so equal tables give equal
    bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
