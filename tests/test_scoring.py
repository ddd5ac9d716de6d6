"""`mechmod.score`: a table of the three answers, independent of batching,
with bad cases recorded and the rest scored."""

import numpy as np
import pytest
import torch

from mechmod.answers import LabelSet
from mechmod.data import load_cases, open_image
from mechmod.errors import MechmodError
from mechmod.scoring import score
from mechmod.tracing import trace
from tests.run_helpers import color_dataset, copy_dataset


@pytest.fixture(scope="module")
def setup(mllm):
    ds = color_dataset(groups=1)
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
    case = cases.iloc[0]  # its vision-only input traced directly: the same probabilities and entropy
    enc = mllm.encode([open_image(ds, case.image_path)], [None], [case.question])
    logits = trace(mllm, enc, keep_resid=False).logits
    direct = LabelSet(mllm.tokenizer, list(case.candidates)).label_probs(logits)[0]
    np.testing.assert_allclose(one["p_v"].iloc[0], direct.numpy(), atol=1e-5)
    logp = torch.log_softmax(logits[0].double(), -1)
    assert one["h_v"].iloc[0] == pytest.approx(float(-(logp.exp() * logp).sum()), abs=1e-4)


def test_a_bad_image_fails_only_its_cases(setup, tmp_path):
    mllm, shared, _ = setup
    ds = copy_dataset(shared, tmp_path / "ds")
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
