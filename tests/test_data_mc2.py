"""MC2 loader on a tiny fake MC2 directory in the documented format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mechmod.data import load_cases, load_mc2, open_image
from mechmod.errors import MechmodError

RECORDS = [
    {"id": "c1", "task": "color", "image": "img/a.png", "question": "What color is the car?",
     "answer_vision": "Red", "answer_text": "blue", "description": "The car is blue."},
    {"id": "c2", "task": "color", "image": "img/a.png", "question": "What color is the car?",
     "vision_answer": "red", "text_answer": "green", "conflict_text": "The car is green.", "dt": 1, "dv": 2,
     "group": "car"},
    {"id": "p1", "task": "position", "image": "img/b.jpg", "question": "Where is the dog?",
     "answer_vision": "left", "answer_text": "right", "context": "The dog is on the right.",
     "options": ["Left", "right", "middle"], "control": "text_irrelevant"},
    {"id": "o1", "task": "object", "image": "img/b.jpg", "question": "What is on the table?",
     "answer_vision": "coffee mug", "answer_text": "teapot", "description": "A teapot sits on the table."},
]


def _fake(root: Path, records=RECORDS, jsonl=True) -> Path:
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "img" / "a.png")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(root / "img" / "b.jpg", quality=90)
    if jsonl:
        (root / "mc2.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        (root / "mc2.json").write_text(json.dumps(records))
    return root


@pytest.mark.parametrize("jsonl", [True, False])
def test_load_mc2(tmp_path, jsonl):
    src = _fake(tmp_path / "MC2", jsonl=jsonl)
    out = load_mc2(src, tmp_path / "out", progress=False)
    df = load_cases(out).set_index("case_id")
    assert list(df.index) == ["mc2-c1", "mc2-c2", "mc2-p1", "mc2-o1"]
    c1, c2, p1, o1 = (df.loc[f"mc2-{k}"] for k in ("c1", "c2", "p1", "o1"))
    assert c1.answer_vision == "red" and c1.answer_text == "blue" and c1.description == "The car is blue."
    assert c1.question == "What color is the car? Please use one word to answer this question."
    assert sorted(c1.candidates) == ["blue", "green", "red"]  # all answers of the task
    assert (c2["dv"], c2["dt"], c2.group_id, c2.answer_text) == (2, 1, "mc2-car", "green")
    assert c2.description == "The car is green."
    assert list(p1.candidates) == ["left", "right", "middle"] and p1.control == "text_irrelevant"
    assert p1.description == "The dog is on the right."
    assert o1.question.endswith("Please answer with a short phrase.")  # multi-word answer
    assert c1.image_path == c2.image_path == "images/mc2/img/a.png"
    assert (out / p1.image_path).read_bytes() == (src / "img" / "b.jpg").read_bytes()
    assert open_image(out, p1.image_path).size == (40, 30)
    man = json.loads((out / "manifest.json").read_text())
    assert man["task"] == "mc2" and man["tasks"] == ["color", "object", "position"]


@pytest.mark.parametrize("change, msg", [
    ({"answer_text": None}, r"mc2\.jsonl:2: missing field 'answer_text'"),
    ({"image": "../escape.png"}, r"mc2\.jsonl:2: .*escapes"),
    ({"image": "/etc/hosts"}, r"mc2\.jsonl:2: .*relative"),
    ({"image": "img/missing.png"}, r"mc2\.jsonl:2: .*missing\.png.*not found"),
    ({"id": "c1"}, r"mc2\.jsonl:2: duplicate id 'c1'"),
    ({"control": "other"}, r"mc2\.jsonl:2: control 'other'"),
    ({"dv": "hard"}, r"mc2\.jsonl:2: dv must be an integer"),
])
def test_mc2_errors_name_the_line(tmp_path, change, msg):
    recs = [dict(r) for r in RECORDS]
    for k, v in change.items():
        if v is None:
            recs[1].pop(k, None)
            recs[1].pop("text_answer", None)
        else:
            recs[1][k] = v
    src = _fake(tmp_path / "MC2", recs)
    with pytest.raises(MechmodError, match=msg):
        load_mc2(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_mc2_missing_files(tmp_path):
    with pytest.raises(MechmodError, match="not a directory"):
        load_mc2(tmp_path / "none", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MechmodError, match="mc2.jsonl nor mc2.json"):
        load_mc2(tmp_path / "empty", tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mc2.jsonl").write_text('{"id": "x"}\n{oops\n')
    with pytest.raises(MechmodError, match=r"mc2\.jsonl:2: not valid JSON"):
        load_mc2(bad, tmp_path / "o")
    broken = _fake(tmp_path / "broken")
    (broken / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(MechmodError, match=r"mc2\.jsonl:1: .*a\.png"):
        load_mc2(broken, tmp_path / "o")


def test_mc2_cli(tmp_path, capsys):
    from mechmod.cli import main

    src = _fake(tmp_path / "MC2")
    assert main(["dataset", "mc2", "--mc2-dir", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "wrote 4 cases" in capsys.readouterr().out
    assert main(["dataset", "mc2", "--mc2-dir", str(tmp_path / "x"), "--out", str(tmp_path / "o2")]) == 2
