"""A run directory and every file name in it, in one place.

    RUN/run.json                      the RunConfig (a resume with another one is refused)
    RUN/run.lock                      held (flock) by the one launch writing here
    RUN/parts/part-NNNNN.parquet      one per scored chunk of a single process,
    RUN/parts/part-rRRR-NNNNN.parquet or of data-parallel rank RRR
    RUN/results.parquet               the merged parts, ``region`` filled
    RUN/report.html, RUN/summary.json written last: a summary always has its report
    RUN/dataset/                      the dataset `mechmod run` generates without --dataset
                                      (staged inside it, see mechmod.data.schema.DatasetDir)

A directory is accepted (:meth:`RunDir.accept`) before anything is written
into it. One launch writes at a time: its rank 0 (or the `mechmod run
--num-processes` parent) holds an exclusive ``flock`` on run.lock for the
launch's lifetime and records its pid and a launch id there; the launch's
other processes carry that id (``MECHMOD_LAUNCH_ID``, or shared by rank 0)
and so share the directory, while a second launch is refused naming the
first one's pid. The kernel drops the lock when a process dies, even by
SIGKILL, so a killed run never blocks the next one.

Parts are written atomically (:mod:`mechmod._io`), so a killed writer leaves
at most a hidden ``.NAME.XXXX.tmp`` file that no reader globs; a part damaged
after the fact is set aside as ``*.unreadable`` and its cases are scored again.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from mechmod import _io
from mechmod.errors import MechmodError

#: environment variable carrying the launch id to the processes of one launch
LAUNCH_ENV = "MECHMOD_LAUNCH_ID"


@dataclass(frozen=True)
class RunConfig:
    """What a run is: the model (and its dtype), the dataset (and the
    arguments it was generated with, if the run generated it) and how it is
    decoded. A run directory holds one config; resuming with a different
    one is refused. ``device`` and ``n_cases`` are recorded, not compared."""

    model: str
    dataset: str
    dataset_sha256: str
    lens: str = "logit"
    lens_path: str | None = None
    backend: str = "hooks"
    uncertainty: str = "entropy"
    batch_size: int = 8
    radius: float = 0.5
    share_prefix: bool = True
    attention: bool = True
    include_embedding: bool = False  # count the embedding output (layer -1) in the layer dynamics
    dtype: str | None = None
    dataset_args: dict | None = None
    device: str | None = None
    n_cases: int | None = None
    samples: int = 0  # sampled answers per unimodal prompt (0: no sampled-answer entropy)
    sample_seed: int = 0
    loader_workers: int | None = None  # processes building inputs ahead of the model (None: mechmod.loader's rule)

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a resume (batch size and prefix
        sharing change speed, not results; the device is a notice; a run
        without sampled answers matches run.json files older than them)."""
        d = asdict(self)
        for k in ("batch_size", "share_prefix", "device", "n_cases", "loader_workers") + (("samples", "sample_seed") if not self.samples else ()):
            d.pop(k)
        return d


_HELD: dict[str, tuple[int, str]] = {}  # lock file -> (fd, launch id) of the launches this process holds


class RunDir:
    """The files of one run directory (nothing is created until :meth:`open`)."""

    RUN_FILE = "run.json"
    LOCK = "run.lock"
    PARTS = "parts"
    RESULTS = "results.parquet"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    DATASET = "dataset"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def parts_dir(self) -> Path:
        return self.path / self.PARTS

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def dataset(self) -> Path:
        """Where `mechmod run` generates its dataset when given no --dataset."""
        return self.path / self.DATASET

    # ------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        """run.json as a dict ({} when the directory has none, e.g. a results table summarized alone)."""
        if not self.run_file.is_file():
            return {}
        return _io.read_json(self.run_file, "it is written by `mechmod run`: restore it, or re-run into a new "
                                            "--out directory", expect=dict)

    def expected_cases(self) -> int | None:
        """How many cases the run's dataset has: recorded in run.json, else
        (a run.json of an older mechmod) in the dataset's manifest; None
        when unknown."""
        config = self.config()
        n = config.get("n_cases")
        manifest = Path(config["dataset"]) / "manifest.json" if isinstance(config.get("dataset"), str) else None
        if n is None and manifest is not None and manifest.is_file():
            try:
                n = json.loads(manifest.read_text()).get("n_cases")
            except (OSError, ValueError, AttributeError, RecursionError):  # a damaged manifest: unknown
                n = None
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None

    def accept(self, identity: Mapping[str, Any]) -> None:
        """Refuse, before anything is written, a path that is not a
        directory, a directory holding something other than a mechmod run,
        and a run whose settings differ from ``identity`` (the fields given)."""
        if self.path.exists() and not self.path.is_dir():
            raise MechmodError(f"--out {self.path}: is a file, not a directory; give a new directory or a run directory")
        if self.run_file.is_file():
            held = self.config()
            theirs = {k: held.get(k) for k in identity}
            if theirs != dict(identity):
                diff = ", ".join(f"{k}: {theirs[k]!r} here vs {identity[k]!r} asked" for k in identity
                                 if theirs[k] != identity[k])
                raise MechmodError(f"{self.path} holds a different run ({diff}); choose a new --out directory or "
                                   "re-run with the same settings to resume")
        elif self.path.is_dir():
            other = sorted(p.name for p in self.path.iterdir() if not self._before_config(p.name))
            if other:
                raise MechmodError(f"{self.path} exists and is not a mechmod run directory (it holds {other[0]!r}); "
                                   "choose a new --out directory")

    def create(self) -> None:
        """Make the (accepted) run directory."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise MechmodError(f"--out {self.path}: cannot create the directory ({err.strerror}); give a path "
                               "in a writable directory") from None

    def _before_config(self, name: str) -> bool:
        """What a run directory may hold before run.json exists: the lock,
        the generated dataset, a temp file of run.json."""
        return name in (self.LOCK, self.DATASET) or (name.startswith(f".{self.RUN_FILE}.") and name.endswith(".tmp"))

    def open(self, config: RunConfig) -> list[str]:
        """Create the run (run.json, parts/), or check that the directory
        holds a run of the same config (so a resume never mixes models,
        dtypes or datasets). Returns notices for the user (a resume on
        another device). Call it holding the launch (:meth:`launch`)."""
        self.accept(config.identity())
        if self.run_file.is_file():
            held = self.config().get("device")
            notices = [f"{self.path} was started on {held}; resuming on {config.device} (numbers may differ in "
                       "the last digits)"] if held and config.device and held != config.device else []
        else:
            _io.remove_stale_temps(self.path, prefix=self.RUN_FILE)  # a kill while writing run.json left its temp
            self.create()
            _io.write_json(self.run_file, asdict(config))
            notices = []
        try:
            self.parts_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise MechmodError(f"{self.parts_dir}: cannot create the parts directory ({err.strerror}); move what "
                               "is there away") from None
        return notices

    # ------------------------------------------------------------ launch
    @contextmanager
    def launch(self) -> Iterator[str]:
        """Hold the (existing) run directory for this launch; yields the
        launch id. Re-entrant within a process. Inside a launch whose parent
        holds the lock (``MECHMOD_LAUNCH_ID`` matches run.lock) it joins it.
        Another launch holding it: MechmodError with its pid."""
        key = str(self.lock_file.absolute())
        if key in _HELD:
            yield _HELD[key][1]
            return
        if not self.path.is_dir():
            raise MechmodError(f"{self.path}: not a directory (a run directory is created by `mechmod run --out`)")
        try:  # the lock file keeps its inode for flock, so it is written in place, not through mechmod._io
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise MechmodError(f"{self.lock_file}: cannot open ({err.strerror}); check the permissions") from None
        ours = os.environ.get(LAUNCH_ENV)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = False
        except OSError:
            busy = True
        if busy:
            os.close(fd)
            holder = self.holder()
            if not ours or holder.get("launch") != ours:
                raise MechmodError(f"{self.path} is in use by another mechmod launch (pid {holder.get('pid', '?')}); "
                                   "wait for it to finish, or choose another --out directory")
            yield ours  # our launcher (the `--num-processes` parent) holds it for us
            return
        launch_id = ours or uuid.uuid4().hex
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "launch": launch_id}).encode())
        _HELD[key] = (fd, launch_id)
        try:
            yield launch_id
        finally:
            del _HELD[key]
            os.close(fd)  # releases the lock

    def holder(self) -> dict[str, Any]:
        """The pid and launch id recorded in run.lock ({} when none or unreadable)."""
        try:
            held = json.loads(self.lock_file.read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        return held if isinstance(held, dict) else {}

    def join(self, launch_id: str) -> None:
        """Check that ``launch_id`` (shared by rank 0) holds the directory:
        a data-parallel rank writes only for its own launch."""
        holder = self.holder()
        if holder.get("launch") != launch_id:
            raise MechmodError(f"{self.path} is held by another launch (pid {holder.get('pid', '?')}), not by this "
                               "one; wait for it to finish, or choose another --out directory")

    # ------------------------------------------------------------- parts
    @staticmethod
    def part_prefix(rank: int | None = None) -> str:
        """File-name prefix of one writer's parts: ``part-`` alone, ``part-rRRR-`` for a rank."""
        return "part-" if rank is None else f"part-r{rank:03d}-"

    def part_path(self, index: int, rank: int | None = None) -> Path:
        return self.parts_dir / f"{self.part_prefix(rank)}{index:05d}.parquet"

    def part_files(self) -> list[Path]:
        """The finished parts of every rank, sorted. Hidden temporary files
        of a killed writer never match."""
        return sorted(p for p in self.parts_dir.glob("part-*.parquet") if p.is_file())

    def next_part_index(self, rank: int | None = None) -> int:
        prefix = self.part_prefix(rank)
        idx = [int(p.stem[len(prefix):]) for p in self.part_files()
               if p.stem.startswith(prefix) and p.stem[len(prefix):].isdigit()]
        return max(idx) + 1 if idx else 0

    def write_part(self, index: int, rows: pd.DataFrame, rank: int | None = None) -> Path:
        path = self.part_path(index, rank)
        _io.write_parquet(path, rows)
        return path

    def read_part(self, path: Path, columns: list[str] | None = None):
        """A part as a pyarrow Table, or None when it cannot be read (or
        lacks a ``case_id`` column): it is then renamed ``*.unreadable`` (so
        its cases are scored again) with a warning. Parts are written by
        rename, so this only happens to a file damaged after the fact."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=columns)
            kind = table.schema.field("case_id").type if "case_id" in table.column_names else None
            if kind is None or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise pa.ArrowInvalid("no string column 'case_id'")
            return table
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError) as err:
            try:
                path.rename(path.with_name(path.name + ".unreadable"))
            except OSError:
                pass
            warnings.warn(f"{path}: unreadable ({err}); set aside as {path.name}.unreadable, "
                          "its cases will be scored again")
            return None

    def done_case_ids(self) -> set[str]:
        """Case ids already written to parts (finished or failed), by any rank."""
        done: set[str] = set()
        for part in self.part_files():
            table = self.read_part(part, columns=["case_id"])
            if table is not None:
                done.update(table.column("case_id").to_pylist())
        return done

    def read_parts(self) -> pd.DataFrame:
        """Every readable part's rows, one per case (the last written wins), by case id."""
        parts = self.part_files()
        if not parts:
            raise MechmodError(f"{self.path}: no results yet (no {self.RESULTS}, no {self.PARTS}/part-*.parquet); "
                               f"run `mechmod run --out {self.path}` first")
        tables = [t for t in (self.read_part(p) for p in parts) if t is not None]
        if not tables:
            raise MechmodError(f"{self.path}: no readable part in {self.PARTS}/; re-run the same command to "
                               "score the cases again")
        try:
            df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        except Exception as err:  # parts of different, incompatible schemas (written by hand or by another version)
            raise MechmodError(f"{self.parts_dir}: the parts cannot be merged ({err}); move the odd ones away "
                               "and re-run the same command to score their cases again") from None
        return df.drop_duplicates("case_id", keep="last").sort_values("case_id", kind="stable").reset_index(drop=True)

    # ----------------------------------------------------------- outputs
    def read_results(self) -> pd.DataFrame:
        if not self.results.is_file():
            raise MechmodError(f"{self.results}: not found; give a run directory written by `mechmod run`")
        try:
            return pd.read_parquet(self.results)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise MechmodError(f"{self.results}: cannot read as parquet ({err}); re-create it with "
                               f"`mechmod summarize {self.path}` from the run's parts") from None

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            raise MechmodError(f"{self.path}: no {self.SUMMARY}; give a run directory written by `mechmod run` "
                               "(or finish one with `mechmod summarize RUN`)")
        return _io.read_json(self.summary, f"rewrite it with `mechmod summarize {self.path}`", expect=dict)

    def write_outputs(self, results: pd.DataFrame, summary: Mapping[str, Any] | None = None,
                      report_html: str | None = None) -> None:
        """results.parquet, report.html, then summary.json. The old
        summary.json goes first, so a summary.json always comes with its
        report and results; without ``summary`` (nothing could be
        summarized) only results.parquet is written."""
        try:
            self.summary.unlink(missing_ok=True)
        except OSError as err:
            raise MechmodError(f"{self.summary}: cannot replace ({err.strerror}); check the permissions") from None
        _io.write_parquet(self.results, results)
        if summary is not None:
            _io.write_text(self.report, report_html)
            _io.write_json(self.summary, summary)

    # ----------------------------------------------------------- cleanup
    def clean_part_temps(self, rank: int | None = None) -> None:
        """Remove the temporary parts a killed writer left: one data-parallel
        rank's, or (``rank=None``, a single process) all of them. Call it
        where no other process writes those files."""
        _io.remove_stale_temps(self.parts_dir, prefix="" if rank is None else self.part_prefix(rank))

    def clean_temps(self) -> None:
        """Remove the temporary files a killed finalize left (e.g. of
        results.parquet) in the run directory itself."""
        _io.remove_stale_temps(self.path)
