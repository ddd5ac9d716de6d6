"""A run directory and every file name in it, in one place.

    RUN/run.json                      the RunConfig (a resume with another one is refused)
    RUN/parts/part-NNNNN.parquet      one per scored chunk of a single process,
    RUN/parts/part-rRRR-NNNNN.parquet or of data-parallel rank RRR
    RUN/results.parquet               the merged parts, ``region`` filled
    RUN/summary.json, RUN/report.html
    RUN/dataset/                      the dataset `mechmod run` generates without --dataset

Parts are written atomically (:mod:`mechmod._io`), so a killed writer leaves
at most a hidden ``.NAME.XXXX.tmp`` file that no reader globs; a part damaged
after the fact is set aside as ``*.unreadable`` and its cases are scored again.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mechmod import _io
from mechmod.errors import MechmodError


@dataclass(frozen=True)
class RunConfig:
    """What a run is: the model, the dataset and how it is decoded. A run
    directory holds one config; resuming with a different one is refused."""

    model: str
    dataset: str
    dataset_sha256: str
    lens: str = "logit"
    lens_path: str | None = None
    backend: str = "nnsight"
    uncertainty: str = "entropy"
    batch_size: int = 8
    radius: float = 0.5
    share_prefix: bool = True
    attention: bool = True

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a resume (batch size and prefix
        sharing change speed, not results)."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("share_prefix")
        return d


class RunDir:
    """The files of one run directory (nothing is created until :meth:`open`)."""

    RUN_FILE = "run.json"
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
    def open(self, config: RunConfig) -> RunDir:
        """Create the run directory, or check that it holds a run of the same
        config (so a resume never mixes models or datasets)."""
        if self.run_file.is_file():
            try:
                held = json.loads(self.run_file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise MechmodError(f"{self.run_file}: unreadable ({err}); use a new --out directory") from None
            mine = config.identity()
            theirs = {k: held.get(k) for k in mine}
            if theirs != mine:
                diff = ", ".join(f"{k}: {theirs[k]!r} here vs {mine[k]!r} asked" for k in mine if theirs[k] != mine[k])
                raise MechmodError(f"{self.path} holds a different run ({diff}); choose a new --out directory or "
                                   "re-run with the same settings to resume")
        else:
            _io.remove_stale_temps(self.path, prefix=self.RUN_FILE)  # a kill while writing run.json left its temp
            if self.path.exists() and any(p.name != self.DATASET for p in self.path.iterdir()):
                raise MechmodError(f"{self.path} exists and is not a mechmod run directory; choose a new --out directory")
            self.path.mkdir(parents=True, exist_ok=True)
            _io.write_json(self.run_file, asdict(config))
        self.parts_dir.mkdir(exist_ok=True)
        return self

    def config(self) -> dict[str, Any]:
        """run.json as a dict ({} when the directory has none, e.g. a results table summarized alone)."""
        return json.loads(self.run_file.read_text()) if self.run_file.is_file() else {}

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
        return sorted(self.parts_dir.glob("part-*.parquet"))

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
        """A part as a pyarrow Table, or None when it cannot be read: it is
        then renamed ``*.unreadable`` (so its cases are scored again) with a
        warning. Parts are written by rename, so this only happens to a file
        damaged after the fact."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path, columns=columns)
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
            raise MechmodError(f"{self.path}: no results yet (no {self.PARTS}/part-*.parquet)")
        tables = [t for t in (self.read_part(p) for p in parts) if t is not None]
        if not tables:
            raise MechmodError(f"{self.path}: no readable part in {self.PARTS}/; re-run the same command to "
                               "score the cases again")
        df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        return df.drop_duplicates("case_id", keep="last").sort_values("case_id", kind="stable").reset_index(drop=True)

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
