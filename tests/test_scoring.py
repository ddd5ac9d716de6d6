"""`mechmod.score`: a table of the three answers, independent of batching,
with bad cases recorded and the rest scored."""

import numpy as np
import pytest

from mechmod.answers import LabelSet
from mechmod.data import generate_color, load_cases
from mechmod.errors import MechmodError
from mechmod.models import load_model
from mechmod.scoring import score
from tests.tiny_llava import build_tiny_llava


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    mllm = load_model(str(build_tiny_llava(root / "model")))
    ds = generate_color(root / "ds", groups=1, seed=2, dv=[0, 5], progress=False)
    return mllm, ds, load_cases(ds)


def test_score_is_independent_of_batching_and_prefix_sharing(setup):
    mllm, ds, cases = setup
    one = score(mllm, cases, ds, batch_size=1, share_prefix=False)
    many = score(mllm, cases, ds, batch_size=7)
    assert list(one["case_id"]) == list(cases["case_id"]) == list(many["case_id"])
    for col in ("y_v", "y_t", "y_m", "follow"):
        assert (one[col] == many[col]).all(), col
    for col in ("h_v", "h_t", "h_m", "dh_rel"):
        np.testing.assert_allclose(one[col], many[col], atol=1e-4, err_msg=col)
    np.testing.assert_allclose(np.stack(one["p_m"]), np.stack(many["p_m"]), atol=1e-5)
    for span in ("image", "description", "question"):  # attention mass per layer, with and without the cache
        a, b = np.stack(one[f"attn_{span}"]), np.stack(many[f"attn_{span}"])
        assert a.shape == (len(cases), mllm.n_layers)
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=span)
    p = np.stack(one["p_v"])
    assert p.shape == (len(cases), 6) and (p >= 0).all() and (p.sum(1) <= 1 + 1e-6).all()


def test_a_bad_image_fails_only_its_cases(setup, tmp_path):
    mllm, _, _ = setup
    ds = generate_color(tmp_path / "ds", groups=1, seed=3, dv=[0, 5], progress=False)
    cases = load_cases(ds)
    bad = cases["image_path"].iloc[0]
    (ds / bad).write_bytes(b"")
    rows = score(mllm, cases, ds)
    failed = rows[rows["status"] == "failed"]
    assert set(failed["case_id"]) == set(cases.loc[cases["image_path"] == bad, "case_id"])
    assert (rows.loc[rows["status"] == "ok", "y_m"] != "").all()


def test_a_label_without_tokens_is_named(setup):
    mllm, _, _ = setup
    with pytest.raises(MechmodError, match="zebraish"):
        LabelSet(mllm.tokenizer, ["red", "zebraish"])
