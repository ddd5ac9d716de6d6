"""The one record schema of every mechmod dataset (docs/architecture.md §1):
staging and writing a dataset directory, loading and validating it, and
opening its images safely.

A dataset is a directory::

    DIR/cases.parquet   one row per conflict case (controls included)
    DIR/images/...      PNG files, referenced by relative path
    DIR/manifest.json   written last

Writers stage everything in a hidden directory inside ``DIR`` and move it
into place at the very end, manifest.json last (:class:`DatasetDir`), so an
interrupted run never leaves a ``DIR`` that looks complete, and the next
writer into ``DIR`` removes the stage a killed one left.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from mechmod import _io
from mechmod.errors import MechmodError
from mechmod.names import CONTROLS, OPT_IN_CONTROLS

FORMAT = "mechmod-cases/1"
CASES = "cases.parquet"
MANIFEST = "manifest.json"
IMAGES = "images"

#: required columns and their kinds ("str", "int", "list[str]")
COLUMNS: dict[str, str] = {
    "case_id": "str",
    "group_id": "str",
    "task": "str",
    "dv": "int",
    "dt": "int",
    "control": "str",
    "image_id": "str",
    "image_path": "str",
    "description": "str",
    "question": "str",
    "answer_vision": "str",
    "answer_text": "str",
    "candidates": "list[str]",
    "seed": "int",
}

#: largest image open_image accepts (pixels); CLEVR is 480x320, ours <= 800x600
MAX_PIXELS = 4096 * 4096
#: longest description or question a case may have (characters); ours are under 300
MAX_TEXT = 2000
#: task -> (visual tiers, text tiers) of the generated sets (mechmod.data.color, .attribute, .clevr);
#: other tasks (MC2) only need tiers >= 0
TIERS = {"color": (14, 3), "shape": (4, 4), "material": (4, 4)}
#: name prefix of a writer's stage inside the dataset directory
STAGE_PREFIX = ".partial-"


# ----------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------


def mechmod_version() -> str:
    """The installed mechmod version (recorded in manifests)."""
    import mechmod

    v = getattr(mechmod, "__version__", None)
    if v is None:  # e.g. a stale editable install importing mechmod as a namespace package
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("mechmod")
        except PackageNotFoundError:
            v = "unknown"
    return str(v)


def png_bytes(img) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_out_dir(out: str | os.PathLike) -> Path:
    """``out`` must not exist, or be a directory empty but for the stages of
    killed writers (removed here), in a writable parent."""
    out = Path(out)
    if out.is_symlink():
        raise MechmodError(f"{out}: is a symbolic link; pass a real directory path")
    if out.exists():
        if not out.is_dir():
            raise MechmodError(f"{out}: exists and is not a directory; choose a new output directory")
        _remove_stale_stages(out)
        if any(out.iterdir()):
            raise MechmodError(f"{out}: directory is not empty; choose a new or empty output directory")
    parent = out.absolute().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MechmodError(f"{out}: cannot create the parent directory {parent} ({err.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise MechmodError(f"{out}: not writable; choose an output directory you can write to")
    return out


def _remove_stale_stages(out: Path) -> None:
    """Remove the stages killed writers left in ``out``; a stage still locked
    by its writer means another process is writing there: refused."""
    for stage in out.glob(f"{STAGE_PREFIX}*"):
        fd = os.open(stage, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MechmodError(f"{out}: another process is writing a dataset here; wait for it to finish or choose "
                               "another output directory") from None
        finally:
            os.close(fd)
        shutil.rmtree(stage, ignore_errors=True)


class DatasetDir:
    """Stage a dataset in a hidden directory inside ``out`` (locked while this
    writer lives); ``finish()`` writes cases.parquet and manifest.json and
    moves them into ``out``, manifest.json last. Used as a context manager:
    on any exception (or Ctrl-C) the stage is removed and ``out`` is left as
    it was; a SIGKILL leaves the stage, which the next writer removes."""

    def __init__(self, out: str | os.PathLike):
        self.out = check_out_dir(out)
        self.stage: Path | None = None
        self.images: dict[str, str] = {}  # relative path -> sha256
        self._created = False
        self._lock: int | None = None

    def __enter__(self) -> "DatasetDir":
        try:
            self._created = not self.out.exists()
            self.out.mkdir(exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.out))
            self._lock = os.open(self.stage, os.O_RDONLY)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except OSError as err:
            self.__exit__(None, None, None)
            raise MechmodError(f"{self.out}: cannot write there ({err.strerror})") from None
        (self.stage / IMAGES).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self.stage is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)
        if self._created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def write_image(self, rel: str, img=None, data: bytes | None = None) -> str:
        """Write a PNG (PIL image or encoded bytes) at ``rel`` (under images/)."""
        rel = _check_rel(rel, "image path")
        if data is None:
            data = png_bytes(img)
        path = self.stage / rel
        _io.write_bytes(path, data)
        self.images[rel] = hashlib.sha256(data).hexdigest()
        return rel

    def copy_image(self, rel: str, src: Path) -> str:
        return self.write_image(rel, data=Path(src).read_bytes())

    def finish(self, rows: list[dict] | Any, manifest: dict) -> Path:
        """Write cases.parquet (validated) and manifest.json, then move into place."""
        table = to_table(rows)
        validate_table(table, where=str(self.out / CASES), root=self.stage, check_files=True)
        _io.write_parquet(self.stage / CASES, table)
        files = {CASES: _sha256(self.stage / CASES), **dict(sorted(self.images.items()))}
        groups = sorted(set(table.column("group_id").to_pylist()))
        man = {
            "format": FORMAT,
            "n_cases": table.num_rows,
            "n_groups": len(groups),
            "files": [CASES, IMAGES + "/"],
            "n_images": len(self.images),
            **manifest,
            "sha256": files,
        }
        _io.write_json(self.stage / MANIFEST, man)  # last
        # mkstemp/mkdtemp create 0600/0700 entries: give them the usual modes
        mask = _umask()
        for root, dirs, fnames in os.walk(self.stage):
            os.chmod(root, 0o777 & ~mask)
            for f in fnames:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
        try:
            for name in (IMAGES, CASES, MANIFEST):  # manifest.json last: only then does out look complete
                os.replace(self.stage / name, self.out / name)
        except OSError as err:
            raise MechmodError(f"{self.out}: could not move the finished dataset into place ({err.strerror}); "
                               "did something else write there meanwhile?") from None
        self._created = False
        return self.out


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def to_table(rows):
    """rows (list of dicts or a DataFrame) -> pyarrow Table with the schema's types."""
    import pandas as pd
    import pyarrow as pa

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"rows lack required columns {missing}")
    extra = [c for c in df.columns if c not in COLUMNS]
    fields = []
    arrays = []
    for c in list(COLUMNS) + extra:
        kind = COLUMNS.get(c)
        vals = df[c].tolist()
        if kind == "str":
            t = pa.string()
        elif kind == "int":
            t = pa.int64()
        elif kind == "list[str]":
            t = pa.list_(pa.string())
            vals = [list(v) for v in vals]
        else:
            t = None
        arr = pa.array(vals, type=t)
        fields.append(pa.field(c, arr.type))
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# ----------------------------------------------------------------------------
# validating and loading
# ----------------------------------------------------------------------------


def _check_rel(rel: str, what: str = "path") -> str:
    if not isinstance(rel, str) or not rel:
        raise MechmodError(f"{what} {rel!r} is empty or not a string")
    if "\\" in rel or rel.startswith("/") or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise MechmodError(f"{what} {rel!r} must be relative to the dataset directory")
    parts = PurePosixPath(rel).parts
    if any(p in ("..", "") for p in parts):
        raise MechmodError(f"{what} {rel!r} escapes the dataset directory")
    return str(PurePosixPath(*parts))


def validate_table(table, where: str, root: Path | None = None, check_files: bool = False) -> None:
    """Check the required columns, their types, non-nulls, unique case ids,
    controls and relative image paths. Raises MechmodError naming ``where``."""
    import pyarrow as pa

    names = table.column_names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise MechmodError(f"{where}: missing required column(s) {', '.join(missing)}")
    for c, kind in COLUMNS.items():
        col = table.column(c)
        t = col.type
        ok = {
            "str": pa.types.is_string(t) or pa.types.is_large_string(t),
            "int": pa.types.is_integer(t),
            "list[str]": (pa.types.is_list(t) or pa.types.is_large_list(t))
            and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)),
        }[kind]
        if not ok:
            raise MechmodError(f"{where}: column {c!r} has type {t}, expected {kind}")
        if col.null_count:
            raise MechmodError(f"{where}: column {c!r} has {col.null_count} null value(s)")
    ids = table.column("case_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise MechmodError(f"{where}: case_id {dup!r} is not unique")
    bad = set(table.column("control").to_pylist()) - set(CONTROLS + OPT_IN_CONTROLS)
    if bad:
        raise MechmodError(f"{where}: unknown control value(s) {sorted(bad)}; expected {CONTROLS + OPT_IN_CONTROLS}")
    for col in ("description", "question"):
        for case, text in zip(ids, table.column(col).to_pylist()):
            if len(text) > MAX_TEXT:
                raise MechmodError(f"{where}: case {case!r} has a {col} of {len(text)} characters, over the limit "
                                   f"of {MAX_TEXT}; shorten it")
    for case, task, dv, dt in zip(ids, *(table.column(c).to_pylist() for c in ("task", "dv", "dt"))):
        n_dv, n_dt = TIERS.get(task, (None, None))
        if dv < 0 or dt < 0 or (n_dv is not None and (dv >= n_dv or dt >= n_dt)):
            table_of = f"the {task} tiers are dv 0..{n_dv - 1}, dt 0..{n_dt - 1}" if n_dv else "tiers are >= 0"
            raise MechmodError(f"{where}: case {case!r} has tiers dv={dv}, dt={dt}; {table_of}")
    for rel in sorted(set(table.column("image_path").to_pylist())):
        try:
            _check_rel(rel, "image_path")
        except MechmodError as err:
            raise MechmodError(f"{where}: {err}") from None
        if check_files and root is not None and not (root / rel).is_file():
            raise MechmodError(f"{where}: image_path {rel!r} does not exist in the dataset directory")


def read_manifest(d: str | os.PathLike) -> dict:
    """A dataset directory's manifest, checked for format, files, digests and n_cases."""
    d = Path(d)
    mpath = d / MANIFEST
    if not d.is_dir():
        raise MechmodError(f"{d}: not a directory (expected a mechmod dataset directory)")
    if not mpath.is_file():
        raise MechmodError(f"{mpath}: missing; {d} is not a complete dataset (was its generation interrupted?)")
    man = _io.read_json(mpath, f"re-create the dataset with `mechmod dataset` or restore {MANIFEST}")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise MechmodError(f"{mpath}: format is {man.get('format') if isinstance(man, dict) else None!r}, "
                           f"expected {FORMAT!r}")
    files = man.get("files", [])
    if not isinstance(files, list) or CASES not in files:
        raise MechmodError(f"{mpath}: does not list {CASES}")
    if not isinstance(man.get("sha256", {}), dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in man.get("sha256", {}).items()):
        raise MechmodError(f"{mpath}: 'sha256' must map file names to hex digests")
    n = man.get("n_cases")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise MechmodError(f"{mpath}: 'n_cases' is {n!r}, expected the number of rows of {CASES}")
    return man


def validate_dir(d: str | os.PathLike, verify_hashes: bool = False) -> dict:
    """Validate a dataset directory (see :func:`load_cases`); returns the manifest."""
    return _checked(d, verify_hashes)[1]


def load_cases(d: str | os.PathLike, verify_hashes: bool = False):
    """Load ``DIR/cases.parquet`` as a pandas DataFrame after validating:
    manifest present, of this format, listing cases.parquet; the parquet's
    digest matches the manifest; required columns, types, no nulls; row count
    equals ``n_cases``; image paths relative, inside DIR and present. With
    ``verify_hashes`` every image's digest is checked too. Errors are
    MechmodError naming the file and the problem."""
    return _checked(d, verify_hashes)[0]


def _checked(d: str | os.PathLike, verify_hashes: bool):
    """(cases, manifest) of a dataset directory, validated as :func:`load_cases` says."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(d)
    man = read_manifest(d)
    cpath = d / CASES
    if not cpath.is_file():
        raise MechmodError(f"{cpath}: missing (listed in {d / MANIFEST})")
    digests = man.get("sha256", {})
    if CASES in digests and _sha256(cpath) != digests[CASES]:
        raise MechmodError(f"{cpath}: content does not match the digest in manifest.json (modified or corrupt)")
    try:
        table = pq.read_table(cpath)
        table.validate(full=True)  # e.g. text that is not UTF-8 (parquet readers do not check)
    except (pa.ArrowException, OSError) as err:
        raise MechmodError(f"{cpath}: cannot read as parquet, or holds invalid data such as non-UTF-8 text ({err})") from None
    validate_table(table, where=str(cpath), root=d, check_files=True)
    if table.num_rows != man.get("n_cases"):
        raise MechmodError(f"{cpath}: has {table.num_rows} rows but manifest.json says n_cases={man.get('n_cases')}")
    root = d.resolve()
    for rel in sorted(set(table.column("image_path").to_pylist())):
        if not (d / rel).resolve().is_relative_to(root):
            raise MechmodError(f"{cpath}: image_path {rel!r} resolves outside {d}")
    if verify_hashes:
        for rel, digest in digests.items():
            if rel == CASES:
                continue
            rel = _check_rel(rel, "manifest.json sha256 entry")
            if not (d / rel).is_file() or not (d / rel).resolve().is_relative_to(root):
                raise MechmodError(f"{d / rel}: listed in manifest.json but missing or outside {d}")
            if _sha256(d / rel) != digest:
                raise MechmodError(f"{d / rel}: content does not match the digest in manifest.json")
    df = table.to_pandas()
    df["candidates"] = df["candidates"].map(list)
    return df, man  # the manifest stays out of df.attrs: pandas deep-copies attrs in every operation


def open_image(d: str | os.PathLike, rel: str, max_pixels: int = MAX_PIXELS):
    """Open ``DIR/rel`` as an RGB PIL image. Refuses paths that are absolute
    or escape DIR (also through symlinks), empty or truncated files, images
    larger than ``max_pixels`` (decompression bombs) and undecodable files,
    with a MechmodError naming the file."""
    from PIL import Image

    d = Path(d)
    rel = _check_rel(rel, "image path")
    path = d / rel
    if not path.resolve().is_relative_to(d.resolve()):
        raise MechmodError(f"{path}: resolves outside the dataset directory {d}")
    if not path.is_file():
        raise MechmodError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise MechmodError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning (its limit is above ours): refuse, don't warn
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise MechmodError(f"{path}: image is {w}x{h} = {w * h} pixels, over the limit of "
                                   f"{max_pixels} (possible decompression bomb)")
            im.load()
            return im.convert("RGB")
    except MechmodError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MechmodError(f"{path}: refused as a decompression bomb ({err})") from None
    except Exception as err:  # noqa: BLE001 - decoders of untrusted bytes raise many types (OSError, EOFError, struct.error...)
        raise MechmodError(f"{path}: cannot decode the image, truncated or corrupt ({type(err).__name__}: {err})") from None


def dataset_counts(values: Iterable) -> dict[str, int]:
    """A JSON-friendly, sorted count table."""
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))
