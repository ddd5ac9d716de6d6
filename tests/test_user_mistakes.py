"""A user's mistake ends in one line naming the file or option and what to
do, exit code 2, never a traceback: bad results tables and run
directories, bad options (checked before anything is loaded or written), a
full disk, damaged models and lenses, absurd sizes. Fuzzed with hypothesis
over the CLI's options and over run directories (50 examples, 1,000 with
``-m slow``)."""

import json
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechmod import summary as summary_module
from mechmod.cli import main
from mechmod.data import load_cases
from mechmod.data.schema import CASES, MANIFEST
from mechmod.errors import MechmodError
from mechmod.rundir import RunDir
from tests.run_dirs import error_line, finished_run, simulated_results
from tests.run_helpers import cli_args, color_dataset, copy_dataset, tiny_mllm, tiny_model_dir
from tests.test_hostile import rewrite, set_column


def _summarize_table(tmp_path, table: pd.DataFrame) -> RunDir:
    run = RunDir(finished_run(tmp_path / "run"))
    table.to_parquet(run.results)
    return run


# ------------------------------------------------------------ results tables
def test_summarize_leaves_out_what_a_missing_column_is_needed_for(tmp_path, capsys):
    run = _summarize_table(tmp_path, simulated_results().drop(columns=["image_id"]))
    assert main(["summarize", str(run.path)]) == 0
    err = capsys.readouterr().err
    assert "left out: entropy_by_tier (needs column(s) image_id)" in err
    summary = json.loads(run.summary.read_text())
    assert set(summary["left_out"]) == {"entropy_by_tier", "accuracy_by_tier", "case_study"}
    assert "entropy_by_tier" not in summary and summary["tfr"] is not None
    assert "left out: Unimodal uncertainty by tier" in run.report.read_text()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_dh_rel_is_refused_before_anything_is_written(tmp_path, capsys, bad):
    table = simulated_results()
    table.loc[table.index[table["control"] == "none"][0], "dh_rel"] = bad
    run = _summarize_table(tmp_path, table)
    before = {p: p.read_bytes() for p in (run.results, run.summary, run.report)}
    assert main(["summarize", str(run.path)]) == 2
    line = error_line(capsys.readouterr().err)
    assert "results.parquet: column 'dh_rel' has 1 NaN or infinite value(s) in scored rows (e.g. case 'c000-0-none')" in line
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000])
def test_a_broken_run_json_is_named(tmp_path, capsys, content):
    run = RunDir(finished_run(tmp_path / "run"))
    run.run_file.write_bytes(content)
    assert main(["summarize", str(run.path)]) == 2
    assert f"error: {run.run_file}: " in error_line(capsys.readouterr().err)


def test_a_manifest_nested_too_deep_is_refused(tmp_path, capsys):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    (ds / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MechmodError, match="nested too deeply"):
        load_cases(ds)
    assert main(["dataset", "check", str(ds)]) == 2
    assert "manifest.json: JSON nested too deeply" in error_line(capsys.readouterr().err)


def test_every_case_failing_still_writes_the_results_the_message_points_to(tmp_path, capsys):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    for png in (ds / "images").rglob("*.png"):
        png.write_bytes(b"")
    tiny_mllm()
    capsys.readouterr()
    assert main(cli_args(ds, tmp_path / "run")) == 2
    assert "no successfully scored case" in error_line(capsys.readouterr().err)
    results = pd.read_parquet(RunDir(tmp_path / "run").results)
    assert len(results) == 18 and results["error"].str.startswith("image: ").all()
    assert not RunDir(tmp_path / "run").summary.exists()


def test_a_full_disk_ends_in_one_line_and_never_a_summary_without_report(tmp_path, capsys):
    run = RunDir(finished_run(tmp_path / "run"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, hard))  # `ulimit -f 300`: report.html does not fit
    try:
        rc = main(["summarize", str(run.path)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert rc == 2
    assert "report.html: cannot write (File too large)" in error_line(capsys.readouterr().err)
    assert not run.summary.exists()
    assert not list(run.path.glob(".*.tmp"))


# --------------------------------------------------------------- options
@pytest.mark.parametrize("option,value,message", [
    ("--device", "banana", "--device 'banana': not a device"),
    ("--device", "cuda:7", "--device cuda:7: "),
    ("--radius", "nan", "--radius nan: give a finite number >= 0"),
    ("--radius", "-1", "--radius -1.0: give a finite number >= 0"),
    ("--groups", "100001", "--groups 100001: at most 100000"),
    ("--batch-size", "many", "'many' is not a valid integer"),
])
def test_a_bad_option_is_refused_before_anything_is_loaded_or_written(tmp_path, capsys, option, value, message):
    if value == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "never-loaded"), "--out", str(out), option, value]) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not out.exists()


def test_summarize_radius_and_out_naming_a_file(tmp_path, capsys):
    run = finished_run(tmp_path / "run")
    assert main(["summarize", str(run), "--radius", "inf"]) == 2
    assert "--radius inf" in error_line(capsys.readouterr().err)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(cli_args(color_dataset(groups=1), afile)) == 2
    assert f"--out {afile}: is a file, not a directory" in error_line(capsys.readouterr().err)


def test_a_model_with_damaged_weights_is_named(tmp_path, capsys):
    model = Path(shutil.copytree(tiny_model_dir(), tmp_path / "model"))
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    assert main(cli_args(color_dataset(groups=1), tmp_path / "run", "--model", str(model))) == 2
    assert "check that its weights files are complete" in error_line(capsys.readouterr().err)


def _lens(tmp_path) -> Path:
    from mechmod.lenses import TunedLens, Unembed

    mllm = tiny_mllm()
    return TunedLens(Unembed.from_model(mllm), mllm.n_layers).save(tmp_path / "lens")


@pytest.mark.parametrize("key,value", [("n_layers", "four"), ("training", [1, 2])])
def test_a_tuned_lens_with_a_malformed_config_is_named(tmp_path, capsys, key, value):
    lens = _lens(tmp_path)
    config = json.loads((lens / "config.json").read_text())
    (lens / "config.json").write_text(json.dumps(dict(config, **{key: value})))
    capsys.readouterr()
    assert main(cli_args(color_dataset(groups=1), tmp_path / "run", "--lens", "tuned", "--lens-path", str(lens))) == 2
    assert f"{lens / 'config.json'}: " in error_line(capsys.readouterr().err)


def test_a_nan_tuned_lens_says_retrain_not_dtype(tmp_path, capsys):
    from mechmod.lenses import TunedLens, Unembed

    mllm = tiny_mllm()
    lens = TunedLens(Unembed.from_model(mllm), mllm.n_layers)
    with torch.no_grad():
        lens.weight.fill_(float("nan"))
    lens.save(tmp_path / "lens")
    capsys.readouterr()
    assert main(cli_args(color_dataset(groups=1), tmp_path / "run", "--lens", "tuned",
                         "--lens-path", str(tmp_path / "lens"))) == 2
    line = error_line(capsys.readouterr().err)
    assert "retrain it with `mechmod lens train`" in line and "--dtype" not in line


# ---------------------------------------------------------------- sizes
def test_descriptions_and_tiers_outside_the_limits_are_refused(tmp_path):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    table = pq.read_table(ds / CASES)
    first = table.column("case_id")[0].as_py()
    for column, values, message in [
        ("description", ["x" * 2001] + table.column("description").to_pylist()[1:],
         f"case {first!r} has a description of 2001 characters, over the limit of 2000"),
        ("dv", pa.array([14] + table.column("dv").to_pylist()[1:], pa.int64()),
         f"case {first!r} has tiers dv=14, dt=0; the color tiers are dv 0..13, dt 0..2"),
        ("dt", pa.array([-1] + table.column("dt").to_pylist()[1:], pa.int64()), "dt=-1"),
    ]:
        rewrite(ds, set_column(table, column, pa.array(values) if isinstance(values, list) else values))
        with pytest.raises(MechmodError, match=message):
            load_cases(ds)


def test_absurd_group_counts_are_refused(tmp_path, capsys):
    assert main(["dataset", "color", "--groups", "1000000", "--out", str(tmp_path / "d")]) == 2
    assert "at most 100000" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------- fuzz
FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
COLUMNS = sorted(simulated_results().columns)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=8)


@st.composite
def run_damage(draw):
    """One or two hostile changes to a finished run directory."""
    return [(draw(st.sampled_from(["drop", "retype", "nan", "inf", "results_bytes", "results_gone", "run_json",
                                   "run_json_key", "summary_json", "summary_key", "part_bytes", "part_table"])),
             draw(st.sampled_from(COLUMNS)), draw(JSON), draw(st.binary(max_size=40)), draw(st.integers(0, 10**6)))
            for _ in range(draw(st.integers(1, 2)))]


def _retyped(values: pd.Series, n: int) -> list:
    kind = n % 5
    if kind == 0:
        return [str(v) for v in values]
    if kind == 1:
        return [bool(n % 2)] * len(values)
    if kind == 2:
        return [[1, "x"]] * len(values)
    if kind == 3:
        return [None] * len(values)
    return [float(n)] * len(values)


def _damage(run: RunDir, kind, column, value, blob, n) -> None:
    if kind in ("drop", "retype", "nan", "inf"):
        try:
            table = pd.read_parquet(run.results)
        except (OSError, pa.ArrowException):  # an earlier change removed or broke it
            return
        if column in table and kind == "drop":
            table = table.drop(columns=[column])
        elif column in table and kind == "retype":
            table[column] = _retyped(table[column], n)
        elif column in table:
            row = n % len(table)
            table[column] = table[column].astype(object)
            table.at[row, column] = float("nan") if kind == "nan" else float("inf")
        try:
            table.to_parquet(run.results)
        except (pa.ArrowException, ValueError, TypeError):  # pyarrow cannot store it: keep the bytes hostile instead
            run.results.write_bytes(blob)
    elif kind == "results_bytes":
        run.results.write_bytes(blob if n % 2 or not run.results.is_file() else run.results.read_bytes()[: n % 5000])
    elif kind == "results_gone":
        run.results.unlink(missing_ok=True)  # summarize merges the parts
    elif kind == "run_json":
        run.run_file.write_bytes(blob if n % 2 else json.dumps(value).encode())
    elif kind == "run_json_key":
        key = ["model", "radius", "lens", "lens_path", "n_cases", "uncertainty"][n % 6]
        run.run_file.write_text(json.dumps(dict(_json_object(run.run_file), **{key: value})))
    elif kind == "summary_json":
        run.summary.write_bytes(blob if n % 2 else json.dumps(value).encode())
    elif kind == "summary_key":
        key = ["balance", "balance_ci", "curve", "tfr", "partial", "n_cases", "balance_point"][n % 7]
        run.summary.write_text(json.dumps(dict(_json_object(run.summary), **{key: value})))
    elif kind == "part_bytes":
        (run.parts_dir / f"part-{n % 100000:05d}.parquet").write_bytes(blob)
    elif kind == "part_table":
        pd.DataFrame({column: [value if not isinstance(value, (dict, list)) else str(value)] * 3}).to_parquet(
            run.parts_dir / f"part-{n % 100000:05d}.parquet")


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``, {} where an earlier change broke it."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def _one_line_or_success(rc: int, err: str) -> None:
    assert rc in (0, 2), err
    if rc == 2:
        error_line(err)
    assert "Traceback" not in err


def _fuzz_run_dir(damages, capsys, monkeypatch) -> None:
    monkeypatch.setattr(summary_module, "N_BOOT", 20)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(finished_run(Path(tmp) / "run"))
        good = finished_run(Path(tmp) / "good")
        for damage in damages:
            _damage(run, *damage)
        capsys.readouterr()
        _one_line_or_success(main(["summarize", str(run.path)]), capsys.readouterr().err)
        rc = main(["compare", str(run.path), str(good), "--n-boot", "10", "--out", str(Path(tmp) / "c.html"),
                   *(["--allow-partial"] if damages[0][4] % 2 else [])])
        _one_line_or_success(rc, capsys.readouterr().err)


@settings(max_examples=50, **FUZZ)
@given(damages=run_damage())
def test_fuzz_run_directories(damages, capsys, monkeypatch):
    _fuzz_run_dir(damages, capsys, monkeypatch)


OPTIONS = {
    "--radius": st.sampled_from(["0.5", "-1", "nan", "inf", "1e308", "x", "0"]),
    "--batch-size": st.sampled_from(["1", "0", "-3", "x", str(10**12)]),
    "--chunk-size": st.sampled_from(["1", "0", "-1", "x"]),
    "--device": st.sampled_from(["cpu", "banana", "cuda:7", "", "cpu:0", "meta", "cuda:-1"]),
    "--dtype": st.sampled_from(["float32", "bfloat16", "int8", "x"]),
    "--groups": st.sampled_from(["1", "0", "-2", "100001", "x"]),
    "--seed": st.sampled_from(["0", "-1", "x"]),
    "--lens": st.sampled_from(["logit", "tuned", "x"]),
    "--backend": st.sampled_from(["nnsight", "transformer_lens", "x"]),
    "--uncertainty": st.sampled_from(["entropy", "margin", "x"]),
    "--device-map": st.sampled_from(["auto", "[1]", "{}", '{"a": true}', "x"]),
    "--num-processes": st.sampled_from(["1", "0", "-1", "x"]),
}


@st.composite
def run_command(draw):
    """`mechmod run` with hostile options; the model never loads (a garbage
    folder or none), so a run ends at the latest when it is loaded."""
    picked = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True))
    args = [a for name in picked for a in (name, draw(OPTIONS[name]))]
    return (draw(st.sampled_from(["garbage", "missing", "no-config"])),
            draw(st.sampled_from(["valid", "missing", "file", "garbage", "generate"])),
            draw(st.sampled_from(["new", "file", "stranger", "run", "nested-in-file"])), args)


def _fuzz_run_options(model, dataset, out, args, capsys, workdir: Path) -> None:
    models = {"garbage": workdir / "garbage-model", "missing": workdir / "nope", "no-config": workdir}
    data = {"valid": color_dataset(groups=1), "missing": workdir / "nope", "file": workdir / "afile",
            "garbage": workdir / "stranger", "generate": None}
    outs = {"new": workdir / "new" / "run", "file": workdir / "afile", "stranger": workdir / "stranger",
            "run": finished_run(workdir / "run"), "nested-in-file": workdir / "afile" / "run"}
    argv = ["run", "--model", str(models[model]), "--out", str(outs[out]), "--quiet", *args]
    if data[dataset] is not None:
        argv += ["--dataset", str(data[dataset])]
    elif "--groups" not in args:
        argv += ["--groups", "0"]  # refused before a dataset is generated: keep the fuzz fast
    capsys.readouterr()
    _one_line_or_success(main(argv), capsys.readouterr().err)


@pytest.fixture(scope="module")
def garbage_model(tmp_path_factory) -> Path:
    model = Path(shutil.copytree(tiny_model_dir(), tmp_path_factory.mktemp("garbage") / "garbage-model"))
    (model / "model.safetensors").write_bytes(b"garbage")
    return model


@settings(max_examples=50, **FUZZ)
@given(command=run_command())
def test_fuzz_run_options(command, capsys, garbage_model):
    _fuzz_run_options_in_scratch(command, capsys, garbage_model)


def _fuzz_run_options_in_scratch(command, capsys, garbage_model):
    """One fuzzed command in a scratch directory holding a garbage model, a file and a stranger's folder."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(garbage_model, work / "garbage-model")
        (work / "afile").write_text("x")
        (work / "stranger").mkdir()
        (work / "stranger" / "notes.txt").write_text("mine")
        _fuzz_run_options(*command, capsys, work)


@pytest.mark.slow
def test_fuzz_run_directories_1000_examples(capsys, monkeypatch):
    @settings(max_examples=1000, **FUZZ)
    @given(damages=run_damage())
    def fuzz(damages):
        _fuzz_run_dir(damages, capsys, monkeypatch)

    fuzz()


@pytest.mark.slow
def test_fuzz_run_options_1000_examples(capsys, garbage_model):
    @settings(max_examples=1000, **FUZZ)
    @given(command=run_command())
    def fuzz(command):
        _fuzz_run_options_in_scratch(command, capsys, garbage_model)

    fuzz()
