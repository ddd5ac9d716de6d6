"""MC2 loader on hand-written records in the shape of the authors' release
(data/evaluate_final_text_error1.json) and a fake COCO folder of small JPEGs
under both naming schemes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mechmod.data import load_cases, load_mc2, open_image
from mechmod.errors import MechmodError

RECORDS = [
    {"image_id": "000000046962", "task": "activity_recognition", "question": "What are the sheep doing?",
     "answer_vision": "eating", "answer_text": "playing in a field",
     "context": "Several sheep is playfully bounding around in a feild beside a road."},
    {"image_id": "000000468632", "task": "activity_recognition", "question": "What is dark haired person doing?",
     "answer_vision": "running", "answer_text": " standing still",
     "context": " On a sunny afternoon, a group of young men is gathered at the edge of a soccer field. "},
    {"image_id": "000000277961", "task": "activity_recognition", "question": "What is the zebra doing?",
     "answer_vision": "eating", "answer_text": "drinking",
     "context": "Inside the wildlife park, the zebra roam around it's spacious enclosure."},
    {"image_id": "000000065860", "task": "attribute", "question": "What is the kite shaped like?",
     "answer_vision": "plane", "answer_text": "bird",
     "context": "The man fly a kite that is shaped like a colourful bird."},
    {"image_id": "000000046962", "task": "attribute", "question": "What color are the sheep?",
     "answer_vision": "white", "answer_text": "Black", "context": "The sheep are black."},
    {"image_id": "000000999999", "task": "sport_recognition", "question": "What is the man doing?",
     "answer_vision": "snowboarding", "answer_text": "figure skating", "context": "The skater glides."},
]
FILE = "evaluate_final_text_error1.json"


def _jpeg(path: Path, rgb) -> None:
    Image.new("RGB", (32, 24), rgb).save(path, format="JPEG", quality=90)


def _fake(root: Path, records=RECORDS) -> tuple[Path, list[Path]]:
    """The release file and two COCO folders: val2014 (plain and COCO_val2014_ names, a .png), train2014."""
    val, train = root / "coco" / "val2014", root / "coco" / "train2014"
    val.mkdir(parents=True)
    train.mkdir(parents=True)
    _jpeg(val / "000000046962.jpg", (200, 10, 10))
    _jpeg(val / "COCO_val2014_000000468632.jpg", (10, 200, 10))
    _jpeg(train / "COCO_train2014_000000277961.jpg", (10, 10, 200))
    Image.new("RGB", (20, 20), (90, 90, 90)).save(val / "000000065860.png")
    src = root / "data" / FILE
    src.parent.mkdir()
    src.write_text(json.dumps(records, indent=4))
    return src, [val, train]


def test_load_mc2_release(tmp_path):
    src, coco = _fake(tmp_path)
    lines: list[str] = []
    out = load_mc2(src, tmp_path / "out", coco, progress=False, report=lines.append)
    df = load_cases(out).set_index("case_id")
    stem = "mc2-evaluate_final_text_error1"
    assert list(df.index) == [f"{stem}-{i:05d}" for i in range(5)]  # record 5 has no image
    sheep, still, zebra, kite, colour = (df.loc[f"{stem}-{i:05d}"] for i in range(5))
    assert (sheep.answer_vision, sheep.answer_text) == ("eating", "playing in a field")
    assert list(sheep.candidates) == ["eating", "playing in a field"]
    assert sheep.description == RECORDS[0]["context"] and sheep.task == "activity_recognition"
    assert still.answer_text == "standing still" and list(still.candidates) == ["running", "standing still"]
    assert still.description.startswith("On a sunny afternoon") and still.description.endswith("field.")
    # a task with a multi-word answer asks for a short phrase, every record of it (zebra's are one word)
    assert sheep.question == "What are the sheep doing? Please answer with a short phrase."
    assert zebra.question == "What is the zebra doing? Please answer with a short phrase."
    assert kite.question == "What is the kite shaped like? Please use one word to answer this question."
    assert colour.answer_text == "black"
    assert (sheep.group_id, sheep["dv"], sheep["dt"], sheep.control) == (f"{stem}-00000", 0, 0, "none")
    # images: both naming schemes, the train2014 folder, a .png; one copy per COCO id
    assert sheep.image_path == colour.image_path == "images/coco/000000046962.jpg"
    assert sheep.image_id == colour.image_id == "coco-000000046962"
    assert still.image_path == "images/coco/000000468632.jpg"
    assert zebra.image_path == "images/coco/000000277961.jpg" and kite.image_path == "images/coco/000000065860.png"
    assert (out / still.image_path).read_bytes() == (coco[0] / "COCO_val2014_000000468632.jpg").read_bytes()
    assert open_image(out, zebra.image_path).size == (32, 24)
    assert sheep.source == f"mc2:{FILE}[0]"
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_images"] == 4 and man["tasks"] == ["activity_recognition", "attribute"]
    assert man["source"] == {"files": [FILE], "n_records": 6, "skipped": {"missing_image": 1, "same_answers": 0}}
    # the missing image: one line naming the record and the files looked for, then the count
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith(f"{src} record 5: skipped, no image for image_id 000000999999")
    assert "000000999999.jpg, COCO_val2014_000000999999.jpg, COCO_train2014_000000999999.jpg" in lines[0]
    assert str(coco[0]) in lines[0] and str(coco[1]) in lines[0]
    assert lines[1] == "skipped 1 of 6 MC2 records: 1 without an image, 0 with the same two answers"


def test_ids_from_each_file_name(tmp_path):
    src, coco = _fake(tmp_path, RECORDS[:2])
    second = src.with_name("evaluate_final_text_error2.json")
    second.write_text(json.dumps(RECORDS[1:3]))
    out = load_mc2([src, second], tmp_path / "out", coco, progress=False, report=lambda line: None)
    ids = list(load_cases(out)["case_id"])
    assert ids == ["mc2-evaluate_final_text_error1-00000", "mc2-evaluate_final_text_error1-00001",
                   "mc2-evaluate_final_text_error2-00000", "mc2-evaluate_final_text_error2-00001"]
    other_dir = tmp_path / "copy"
    other_dir.mkdir()
    (other_dir / FILE).write_text(json.dumps(RECORDS[:1]))
    with pytest.raises(MechmodError, match="same case ids"):
        load_mc2([src, other_dir / FILE], tmp_path / "out2", coco, progress=False)


def test_same_answers_are_skipped(tmp_path):
    recs = [dict(RECORDS[0]), dict(RECORDS[2], answer_vision="Horse", answer_text=" horse")]
    src, coco = _fake(tmp_path, recs)
    lines: list[str] = []
    out = load_mc2(src, tmp_path / "out", coco, progress=False, report=lines.append)
    assert list(load_cases(out)["case_id"]) == ["mc2-evaluate_final_text_error1-00000"]
    assert lines[0] == f"{src} record 1: skipped, both answers are 'horse' (no conflict)"


def test_no_image_found_is_one_error(tmp_path):
    src, coco = _fake(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    lines: list[str] = []
    with pytest.raises(MechmodError) as err:
        load_mc2(src, tmp_path / "out", empty, progress=False, report=lines.append)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no image of the 6 MC2 records is in {empty}")
    assert "000000046962.jpg" in msg and "COCO_val2014_000000046962.jpg" in msg
    assert lines == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, msg", [
    ("image_id", 46962, r"image_id must be a string, got int"),
    ("image_id", "../../etc/passwd", r"image_id '\.\./\.\./etc/passwd' is not a COCO image id"),
    ("image_id", "1234567890123", r"image_id '1234567890123' is not a COCO image id"),
    ("image_id", "\u0664\u0666\u0669", r"image_id '\u0664\u0666\u0669' is not a COCO image id"),  # Arabic-Indic digits
    ("task", ["activity"], r"task must be a string, got list"),
    ("task", "Activity Recognition", r"task 'activity recognition' must be one lower-case word"),
    ("question", None, r"question must be a string, got NoneType"),
    ("answer_vision", 3.5, r"answer_vision must be a string, got float"),
    ("answer_text", "   ", r"answer_text is empty"),
    ("context", {"icc": "The zebra drinks."}, r"context must be a string, got dict"),
    ("context", "x" * 2001, r"context is 2001 characters long, over the limit of 2000"),
    ("question", "What?\ud800", r"question holds a character that is not valid Unicode"),
    ("context", "MISSING", r"missing field 'context'"),
])
def test_hostile_records_are_refused(tmp_path, field, value, msg):
    recs = [dict(r) for r in RECORDS]
    if value == "MISSING":
        del recs[2][field]
    else:
        recs[2][field] = value
    src, coco = _fake(tmp_path, recs)
    with pytest.raises(MechmodError, match=rf"^{src} record 2: {msg}") as err:
        load_mc2(src, tmp_path / "out", coco, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_bad_files_and_folders(tmp_path):
    src, coco = _fake(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(MechmodError, match="not a file"):
        load_mc2(tmp_path / "none.json", out, coco)
    with pytest.raises(MechmodError, match=r"nowhere: not a directory"):
        load_mc2(src, out, [coco[0], tmp_path / "nowhere"])
    cases = [("{oops", "not valid JSON"), ('{"image_id": "1"}', "expected a JSON list of MC2 records, got a dict"),
             ("[]", "no records"), ('["text"]', "record 0: expected a JSON object, got str")]
    for text, msg in cases:
        src.write_text(text)
        with pytest.raises(MechmodError, match=msg):
            load_mc2(src, out, coco, progress=False)
    src.write_bytes(b"[\xff]")
    with pytest.raises(MechmodError, match="not UTF-8"):
        load_mc2(src, out, coco, progress=False)
    assert not out.exists()


def test_corrupt_image_names_the_record(tmp_path):
    src, coco = _fake(tmp_path)
    (coco[0] / "COCO_val2014_000000468632.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(MechmodError, match=rf"^{src} record 1: .*COCO_val2014_000000468632\.jpg: cannot decode"):
        load_mc2(src, tmp_path / "out", coco, progress=False)


def test_mc2_cli(tmp_path, capsys):
    from mechmod.cli import main

    src, (val, train) = _fake(tmp_path)
    args = ["dataset", "mc2", "--mc2-file", str(src), "--coco-dir", str(val), "--coco-dir", str(train)]
    assert main([*args, "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "wrote 5 cases" in captured.out
    assert f"{src} record 5: skipped, no image" in captured.err
    assert main([*args[:-2], "--coco-dir", str(tmp_path / "x"), "--out", str(tmp_path / "o2")]) == 2
    assert "x: not a directory" in capsys.readouterr().err
