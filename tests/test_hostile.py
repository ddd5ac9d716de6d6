"""Hostile inputs: each is refused with a clear MechmodError, or recorded
as a failed case with its reason while the run goes on (summary.json counts
failures by kind); the dataset loader is fuzzed with hypothesis; the package
never unpickles and never runs remote code by default."""

import ast
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import mechmod
from mechmod.cli import main
from mechmod.data import load_cases, open_image
from mechmod.data.schema import CASES, MANIFEST, _sha256
from mechmod.errors import MechmodError
from mechmod.scoring import NONFINITE
from tests.run_helpers import cli_args, color_dataset, copy_dataset, run_in_process, tiny_mllm


# ------------------------------------------------------------------ helpers
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few bytes whose header claims width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def rewrite(ds: Path, table: pa.Table, n_cases: int | None = None) -> None:
    """Replace cases.parquet, keeping the manifest's digest (and, unless
    given, its row count) consistent, so only the intended lie remains."""
    pq.write_table(table, ds / CASES)
    man = json.loads((ds / MANIFEST).read_text())
    man["sha256"][CASES] = _sha256(ds / CASES)
    man["n_cases"] = table.num_rows if n_cases is None else n_cases
    (ds / MANIFEST).write_text(json.dumps(man))


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


# ------------------------------------------- failed cases, the run goes on
def test_bad_images_and_inf_logits_fail_their_cases_and_the_run_goes_on(tmp_path):
    ds = copy_dataset(color_dataset(groups=2), tmp_path / "ds")  # 4 images x 9 cases
    cases = load_cases(ds)
    paths = sorted(cases["image_path"].unique())
    (ds / paths[0]).write_bytes((ds / paths[0]).read_bytes()[:60])  # truncated
    (ds / paths[1]).write_bytes(b"")  # 0 bytes
    (ds / paths[2]).write_bytes(bomb_png(30000, 30000))  # decompression bomb
    good = cases[cases["image_path"] == paths[3]]

    # float16 overflow: the logits of every prompt holding the word "same" become inf
    mllm = tiny_mllm()
    same = mllm.tokenizer.convert_tokens_to_ids("same")
    seen = {}
    hooks = [
        mllm.model.register_forward_pre_hook(lambda m, a, kw: seen.update(ids=kw.get("input_ids")), with_kwargs=True),
        mllm.lm_head.register_forward_hook(
            lambda m, i, out: out.masked_fill((seen["ids"] == same).any(-1).view(-1, *[1] * (out.ndim - 1)), float("inf"))),
    ]
    try:
        res = run_in_process(ds, tmp_path / "run", batch_size=4, mllm=mllm)
    finally:
        for h in hooks:
            h.remove()
    assert len(res) == len(cases) and res["case_id"].is_unique
    failed = res.set_index("case_id")["error"]
    for path, what in zip(paths[:3], ["truncated or corrupt", "empty (0 bytes)", "decompression bomb"]):
        ids = cases.loc[cases["image_path"] == path, "case_id"]
        assert failed[ids].str.startswith("image: ").all() and failed[ids].str.contains(what, regex=False).all(), what
    inf_ids = good.loc[good["description"].str.contains(r"\bsame\b"), "case_id"]
    assert len(inf_ids) == 3
    assert failed[inf_ids].str.startswith(f"{NONFINITE}: non-finite values in h_t").all()
    ok = res[res["status"] == "ok"]
    assert set(ok["case_id"]) == set(good["case_id"]) - set(inf_ids)
    assert ok[["h_v", "h_t", "h_m", "dh_rel"]].notna().all().all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["failures_by_kind"] == {"image": 27, NONFINITE: 3}
    assert summary["n_failed"] == 30 and summary["n_cases"] == 6


@pytest.mark.parametrize("name,data,message", [
    ("zero", b"", "empty"),
    ("truncated", png()[:40], "truncated or corrupt"),
    ("garbage", b"GIF89a" + b"\xff" * 30, "truncated or corrupt"),
    ("bomb-header", bomb_png(30000, 30000), "decompression bomb"),
    ("bomb-over-our-limit", bomb_png(5000, 5000), "over the limit"),
])
def test_open_image_refuses(tmp_path, name, data, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(data)
    with pytest.raises(MechmodError, match=message):
        open_image(tmp_path, "images/x.png")


# ------------------------------------------------ refused before any model
def _escape_up(ds, table, tmp_path):
    return set_column(table, "image_path", pa.array(["../outside.png"] * table.num_rows))


def _escape_abs(ds, table, tmp_path):
    return set_column(table, "image_path", pa.array([str(tmp_path / "outside.png")] * table.num_rows))


def _escape_symlink(ds, table, tmp_path):
    rel = table.column("image_path")[0].as_py()
    (ds / rel).unlink()
    os.symlink(tmp_path / "outside.png", ds / rel)
    return table


def _non_utf8(ds, table, tmp_path):
    bad = pa.array([b"The circle is \xff\xfe red."] * table.num_rows, type=pa.binary()).view(pa.string())
    return set_column(table, "description", bad)


def _binary_text(ds, table, tmp_path):
    return set_column(table, "question", pa.array([b"\xc3\x28?"] * table.num_rows, type=pa.binary()))


@pytest.mark.parametrize("break_it,message", [
    (_escape_up, "escapes the dataset directory"),
    (_escape_abs, "must be relative"),
    (_escape_symlink, "resolves outside"),
    (_non_utf8, "non-UTF-8"),
    (_binary_text, "'question' has type binary"),
])
def test_hostile_cases_are_refused_before_loading_a_model(tmp_path, capsys, break_it, message):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    (tmp_path / "outside.png").write_bytes(png())
    rewrite(ds, break_it(ds, pq.read_table(ds / CASES), tmp_path))
    assert main(cli_args(ds, tmp_path / "run", "--model", str(tmp_path / "never-loaded"))) == 2
    full = capsys.readouterr().err
    err = full.strip().splitlines()[-1]  # (building the tiny model may print progress first)
    assert err.startswith("error: ") and message in err and "Traceback" not in full
    assert not (tmp_path / "run").exists()


def test_a_manifest_that_lies_is_refused(tmp_path):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    table = pq.read_table(ds / CASES)
    rewrite(ds, table, n_cases=table.num_rows + 1)
    with pytest.raises(MechmodError, match=r"has 18 rows but manifest.json says n_cases=19"):
        load_cases(ds)
    rewrite(ds, table, n_cases="18")
    with pytest.raises(MechmodError, match="'n_cases' is '18'"):
        load_cases(ds)
    rewrite(ds, table)
    (ds / CASES).write_bytes((ds / CASES).read_bytes()[:-200])  # truncated after the digest was taken
    with pytest.raises(MechmodError, match="does not match the digest"):
        load_cases(ds)
    man = json.loads((ds / MANIFEST).read_text())
    del man["sha256"][CASES]
    (ds / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(MechmodError, match="cannot read as parquet"):
        load_cases(ds)


# ------------------------------------------------------------------- fuzz
def _base_dataset() -> dict[str, bytes]:
    """A minimal valid dataset, as file name -> bytes."""
    rows = []
    for i, img in enumerate(["images/a.png", "images/b.png"]):
        rows.append(dict(case_id=f"c{i}", group_id="g", task="color", dv=0, dt=i, control="none", image_id=img[7:8],
                         image_path=img, description="The circle is red.", question="What color is the circle?",
                         answer_vision="blue", answer_text="red", candidates=["red", "blue"], seed=0))
    from mechmod.data.schema import to_table

    buf = io.BytesIO()
    pq.write_table(to_table(rows), buf)
    files = {CASES: buf.getvalue(), "images/a.png": png((0, 0, 200)), "images/b.png": png((0, 200, 0))}
    import hashlib

    man = {"format": "mechmod-cases/1", "n_cases": 2, "files": [CASES, "images/"],
           "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}
    files[MANIFEST] = json.dumps(man).encode()
    return files


BASE = _base_dataset()
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=12)
TEXT = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    ["../x.png", "/etc/passwd", "images/../../x", "images\\a.png", "C:x", "", ".", "images/a.png/", "images//a.png"])
COLUMN = st.sampled_from(["case_id", "group_id", "dv", "control", "image_path", "description", "candidates", "seed"])


@st.composite
def damage(draw):
    """One hostile change to the base dataset: (kind, details)."""
    kind = draw(st.sampled_from(["manifest_bytes", "manifest_json", "manifest_key", "cases_bytes", "cases_truncate",
                                 "column_drop", "column_type", "column_null", "column_text", "column_non_utf8",
                                 "duplicate_rows", "image_bytes", "image_gone", "bomb"]))
    return kind, draw(st.binary(max_size=64)), draw(JSON), draw(TEXT), draw(COLUMN), draw(st.integers(0, 10**6))


def _apply(d: Path, kind, blob, value, text, column, n) -> None:
    files = dict(BASE)
    man = json.loads(files[MANIFEST])
    table = pq.read_table(io.BytesIO(files[CASES]))
    i = table.schema.get_field_index(column)
    if kind == "manifest_bytes":
        files[MANIFEST] = blob
    elif kind == "manifest_json":
        files[MANIFEST] = json.dumps(value).encode()
    elif kind == "manifest_key":
        man[["format", "files", "n_cases", "sha256", "n_groups"][n % 5]] = value
    elif kind == "cases_bytes":
        files[CASES] = blob
    elif kind == "cases_truncate":
        files[CASES] = files[CASES][: n % len(files[CASES])]
    elif kind == "column_drop":
        table = table.remove_column(i)
    elif kind == "column_type":
        table = table.set_column(i, column, pa.array([str(v) for v in table.column(column).to_pylist()]) if n % 2 else
                                 pa.array([n] * table.num_rows))
    elif kind == "column_null":
        table = table.set_column(i, column, pa.nulls(table.num_rows, table.schema.field(i).type))
    elif kind == "column_text":
        typ = table.schema.field(i).type
        new = [text] * table.num_rows if pa.types.is_string(typ) else [[text]] * table.num_rows
        table = table.set_column(i, column, pa.array(new) if pa.types.is_string(typ) or pa.types.is_list(typ) else
                                 pa.array([text] * table.num_rows))
    elif kind == "column_non_utf8":
        table = table.set_column(i, column, pa.array([blob + b"\xff"] * table.num_rows, pa.binary()).view(pa.string()))
    elif kind == "duplicate_rows":
        table = pa.concat_tables([table, table.slice(n % 2, 1)])
    elif kind == "image_bytes":
        files["images/a.png"] = blob if n % 3 else files["images/a.png"][: n % 80]
    elif kind == "image_gone":
        del files["images/b.png"]
    elif kind == "bomb":
        files["images/a.png"] = bomb_png(1 + n % 50000, 1 + (n * 7) % 50000)
    if kind.startswith(("column", "duplicate")):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        files[CASES] = buf.getvalue()
        if n % 2:  # keep the digest consistent half the time, to reach the deeper checks
            man["sha256"][CASES] = __import__("hashlib").sha256(files[CASES]).hexdigest()
    if kind not in ("manifest_bytes", "manifest_json"):
        files[MANIFEST] = json.dumps(man).encode()
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)


def _fuzz_once(change, verify) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "ds"
        _apply(d, *change)
        try:
            df = load_cases(d, verify_hashes=verify)
        except MechmodError:
            return
        assert df["case_id"].is_unique and len(df) == json.loads((d / MANIFEST).read_text())["n_cases"]
        assert all((d / rel).resolve().is_relative_to(d.resolve()) for rel in df["image_path"])
        for rel in df["image_path"].unique():
            try:
                open_image(d, rel)
            except MechmodError:
                pass


FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


@settings(max_examples=50, **FUZZ)
@given(change=damage(), verify=st.booleans())
def test_fuzz_dataset_loader_raises_only_mechmod_errors(change, verify):
    _fuzz_once(change, verify)


@pytest.mark.slow
def test_fuzz_dataset_loader_1000_examples():
    @settings(max_examples=1000, **FUZZ)
    @given(change=damage(), verify=st.booleans())
    def fuzz(change, verify):
        _fuzz_once(change, verify)

    fuzz()


# --------------------------------------------------------------- security
PKG = Path(mechmod.__file__).parent


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


def test_no_pickle_no_unsafe_torch_load_no_remote_code_by_default():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        src = path.read_text()
        tree = ast.parse(src)
        where = path.relative_to(PKG.parent)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal") for n in names):
                    problems.append(f"{where}:{node.lineno}: imports a pickle-like module")
        for node, owner, name in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and owner == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if "trust_remote_code" in kw and isinstance(kw["trust_remote_code"], ast.Constant) and kw["trust_remote_code"].value:
                problems.append(f"{where}:{node.lineno}: trust_remote_code=True")
            if name in ("read_pickle", "from_pickle") or (name == "load" and owner in ("np", "numpy") and
                                                         isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value):
                problems.append(f"{where}:{node.lineno}: {owner}.{name} unpickles")
            if name == "from_pretrained" and "use_safetensors" in kw and not (
                    isinstance(kw["use_safetensors"], ast.Constant) and kw["use_safetensors"].value is True):
                problems.append(f"{where}:{node.lineno}: from_pretrained(use_safetensors=...) not True")
        for fn in ast.walk(tree):  # every trust_remote_code parameter defaults to False
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = fn.args.args + fn.args.kwonlyargs
                defaults = [None] * (len(fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults) + list(fn.args.kw_defaults)
                for a, d in zip(args, defaults):
                    if a.arg == "trust_remote_code" and d is not None and not (isinstance(d, ast.Constant) and d.value is False):
                        problems.append(f"{where}:{fn.lineno}: {fn.name}(trust_remote_code=...) does not default to False")
        for node, owner, name in _calls(tree):  # on the command line: only by an explicit, off-by-default flag
            if name == "option" and node.args and isinstance(node.args[0], ast.Constant) and "remote" in str(node.args[0].value):
                kw = {k.arg: k.value for k in node.keywords}
                flag = isinstance(kw.get("is_flag"), ast.Constant) and kw["is_flag"].value is True
                on = isinstance(kw.get("default"), ast.Constant) and kw["default"].value is not False
                if not flag or on or "/" in str(node.args[0].value):
                    problems.append(f"{where}:{node.lineno}: {node.args[0].value} must be an off-by-default is_flag option")
    assert not problems, "\n".join(problems)


def test_weights_load_through_safetensors_only():
    src = (PKG / "models" / "__init__.py").read_text()
    assert "use_safetensors=True" in src
    lens_src = (PKG / "lenses" / "tuned_lens.py").read_text()
    assert "safetensors" in lens_src and "torch.load" not in lens_src
