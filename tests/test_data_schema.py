"""The dataset directory: generate_color's files, schema round trip (pandas,
datasets), byte-identical reruns, validation errors and safe image opening."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mechmod.data import color as C
from mechmod.data import generate_color, load_cases, open_image
from mechmod.data.schema import COLUMNS, MAX_PIXELS
from mechmod.errors import MechmodError


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return generate_color(tmp_path_factory.mktemp("c") / "ds", groups=3, seed=4, progress=False)


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_layout_and_columns(ds):
    assert sorted(p.name for p in ds.iterdir()) == ["cases.parquet", "images", "manifest.json"]
    df = load_cases(ds)
    for c in COLUMNS:
        assert c in df.columns
    assert len(df) == 3 * 14 * 3 * 3
    assert df[list(COLUMNS)].notna().all().all()
    assert df["case_id"].is_unique
    assert set(df["control"]) == {"none", "text_irrelevant", "image_irrelevant"}
    assert set(df["task"]) == {"color"} and set(df["seed"]) == {4}
    assert set(df["dv"]) == set(range(14)) and set(df["dt"]) == {0, 1, 2}
    assert all(list(c) == list(C.COLORS) for c in df["candidates"])
    assert df["question"].str.endswith("Please use one word to answer this question.").all()
    assert (df["answer_vision"] != df["answer_text"]).all()
    # one image per (group, dv), shared by every dt and control of it
    per = df.groupby(["group_id", "dv"])["image_path"].nunique()
    assert (per == 1).all()
    assert df["image_path"].nunique() == 3 * 14 == len(list((ds / "images").iterdir()))
    assert df.groupby("image_id")["image_path"].nunique().eq(1).all()
    for rel in df["image_path"].unique():
        assert not Path(rel).is_absolute() and ".." not in rel and (ds / rel).is_file()
    man = json.loads((ds / "manifest.json").read_text())
    assert man["format"] == "mechmod-cases/1" and man["task"] == "color" and man["seed"] == 4
    assert man["n_cases"] == len(df) and man["n_groups"] == 3
    assert "cases.parquet" in man["files"] and set(man["sha256"]) == {"cases.parquet", *df["image_path"]}


def test_rows_match_the_images(ds):
    df = load_cases(ds)
    none = df[df.control == "none"]
    for _, r in none[none.dt == 0].iterrows():
        img = open_image(ds, r.image_path)
        a = np.asarray(img).astype(int)
        assert img.size == (r.image_width, r.image_height)
        n_vis = int((a == C.COLORS[r.answer_vision]).all(-1).sum())
        assert n_vis == round(r.target_visible_fraction * r.target_area_px)
        assert not (np.abs(a - np.array(C.COLORS[r.answer_text])).sum(-1) < 60).any()
        assert r.target_shape in r.description and r.answer_text in r.description


def test_controls_in_rows(ds):
    df = load_cases(ds)
    key = ["group_id", "dv", "dt"]
    base = df[df.control == "none"].set_index(key)
    for ctrl in ("text_irrelevant", "image_irrelevant"):
        sub = df[df.control == ctrl].set_index(key)
        assert len(sub) == len(base)
        j = sub.join(base, rsuffix="_base")
        assert (j.image_path == j.image_path_base).all()
        assert (j.answer_vision == j.answer_vision_base).all() and (j.answer_text == j.answer_text_base).all()
        for _, r in j.iterrows():
            assert r.target_shape not in re.findall(r"[a-z]+", r.description)
            if ctrl == "text_irrelevant":
                assert r.question == r.question_base and r.described_shape in C.TARGET_SHAPES
            else:
                assert r.asked_shape in C.CONTROL_SHAPES and r.target_shape not in r.question
            assert r.description.replace(r.described_shape, r.target_shape) == r.description_base


def test_no_controls_option(tmp_path):
    out = generate_color(tmp_path / "nc", groups=2, seed=0, controls=False, progress=False, dv="0,13")
    df = load_cases(out)
    assert set(df.control) == {"none"} and len(df) == 2 * 2 * 3
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["controls"] == ["none"] and man["options"]["dv"] == [0, 13]


def test_same_seed_same_bytes(ds, tmp_path):
    again = generate_color(tmp_path / "again", groups=3, seed=4, progress=False)
    assert _files(again) == _files(ds)
    other = generate_color(tmp_path / "other", groups=3, seed=5, progress=False, dv="0-1")
    assert _files(other)["cases.parquet"] != _files(ds)["cases.parquet"]


def test_parallel_workers_same_bytes(ds, tmp_path):
    par = generate_color(tmp_path / "par", groups=3, seed=4, progress=False, workers=2)
    assert _files(par) == _files(ds)


def test_loads_with_pandas_and_datasets(ds, tmp_path):
    df = pd.read_parquet(ds / "cases.parquet")
    assert len(df) == 378 and df["dv"].dtype == np.int64
    datasets = pytest.importorskip("datasets")
    hf = datasets.load_dataset("parquet", data_files=str(ds / "cases.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == 378
    assert hf.features["candidates"].feature.dtype == "string"
    assert hf[0]["case_id"] == df["case_id"][0]


# -- validation ------------------------------------------------------------------


def _copy(ds: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(ds, dst)
    return dst


def _rewrite(d: Path, df: pd.DataFrame, fix_digest=True, **man_changes):
    import pyarrow as pa

    from mechmod import _io

    _io.write_parquet(d / "cases.parquet", pa.Table.from_pandas(df, preserve_index=False))
    man = json.loads((d / "manifest.json").read_text())
    if fix_digest:
        man["sha256"]["cases.parquet"] = hashlib.sha256((d / "cases.parquet").read_bytes()).hexdigest()
    man.update(man_changes)
    (d / "manifest.json").write_text(json.dumps(man))


def test_validation_errors_name_file_and_problem(ds, tmp_path):
    d = _copy(ds, tmp_path / "a")
    (d / "manifest.json").unlink()
    with pytest.raises(MechmodError, match=r"manifest\.json.*missing"):
        load_cases(d)

    d = _copy(ds, tmp_path / "b")
    man = json.loads((d / "manifest.json").read_text())
    man["n_cases"] = 5
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(MechmodError, match=r"cases\.parquet.*378 rows.*n_cases=5"):
        load_cases(d)

    d = _copy(ds, tmp_path / "c")
    df = pq.read_table(d / "cases.parquet").to_pandas()
    df["dv"] = df["dv"].astype(str)
    _rewrite(d, df)
    with pytest.raises(MechmodError, match=r"cases\.parquet.*'dv'.*expected int"):
        load_cases(d)

    d = _copy(ds, tmp_path / "d")
    df = pq.read_table(d / "cases.parquet").to_pandas().drop(columns=["question"])
    _rewrite(d, df)
    with pytest.raises(MechmodError, match="missing required column.*question"):
        load_cases(d)

    for bad, msg in [("/etc/passwd", "relative"), ("../x.png", "escapes"), ("images/nope.png", "does not exist")]:
        d = _copy(ds, tmp_path / f"e{abs(hash(bad))}")
        df = pq.read_table(d / "cases.parquet").to_pandas()
        df.loc[0, "image_path"] = bad
        _rewrite(d, df)
        with pytest.raises(MechmodError, match=msg):
            load_cases(d)

    d = _copy(ds, tmp_path / "f")
    df = pq.read_table(d / "cases.parquet").to_pandas()
    df.loc[0, "control"] = "weird"
    _rewrite(d, df, fix_digest=False)
    with pytest.raises(MechmodError, match="digest"):
        load_cases(d)

    d = _copy(ds, tmp_path / "g")
    (d / "cases.parquet").write_bytes(b"not parquet")
    man = json.loads((d / "manifest.json").read_text())
    del man["sha256"]["cases.parquet"]
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(MechmodError, match="cannot read as parquet"):
        load_cases(d)

    d = _copy(ds, tmp_path / "h")
    victim = sorted((d / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    load_cases(d)  # image digests are only checked on request
    with pytest.raises(MechmodError, match=victim.name):
        load_cases(d, verify_hashes=True)


def test_open_image_refuses_bad_files(ds, tmp_path):
    df = load_cases(ds)
    rel = df.image_path[0]
    img = open_image(ds, rel)
    assert img.mode == "RGB" and img.size == (800, 600)
    for bad in ("../manifest.json", "/etc/hosts", "images/../../x.png"):
        with pytest.raises(MechmodError):
            open_image(ds, bad)
    d = tmp_path / "imgs"
    (d / "images").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    (d / "images" / "link.png").symlink_to(outside)
    with pytest.raises(MechmodError, match="outside"):
        open_image(d, "images/link.png")
    (d / "images" / "empty.png").write_bytes(b"")
    with pytest.raises(MechmodError, match="empty"):
        open_image(d, "images/empty.png")
    data = (ds / rel).read_bytes()
    (d / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MechmodError, match="cut.png.*(truncated|decode)"):
        open_image(d, "images/cut.png")
    (d / "images" / "junk.png").write_bytes(b"\x89PNG garbage" * 10)
    with pytest.raises(MechmodError, match="junk.png"):
        open_image(d, "images/junk.png")
    side = int(MAX_PIXELS**0.5) + 16
    Image.new("1", (side, side)).save(d / "images" / "bomb.png")
    with pytest.raises(MechmodError, match="bomb.png.*decompression bomb"):
        open_image(d, "images/bomb.png")
    with pytest.raises(MechmodError, match="not found"):
        open_image(d, "images/missing.png")
