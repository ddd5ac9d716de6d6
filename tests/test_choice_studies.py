"""The three 'where the choice is made' studies end to end on the tiny LLaVA:
every conflict case gets its rows, and each table agrees with a second
computation of the same quantity."""

import numpy as np
import pytest

from mechmod.interventions.attribution import attribute_cases
from mechmod.interventions.clean import from_baseline
from mechmod.interventions.flow import run_flow
from mechmod.interventions.head_scaling import run_head_scaling
from tests.run_helpers import color_dataset


@pytest.fixture(scope="module")
def clean(mllm):
    return from_baseline(mllm, color_dataset(1, (0,)), batch_size=4, n_boot=20)


def test_attribution_rows_add_up_to_the_total_per_case(mllm, clean):
    rows = attribute_cases(mllm, clean, batch_size=4)
    assert set(rows["case_id"]) == set(clean.table["case_id"])
    for _, sub in rows.groupby("case_id"):
        parts = sub[sub["component"].isin(["embed", "attn", "attn_bias", "mlp"])]["contribution"].sum()
        total = float(sub.loc[sub["component"] == "total", "contribution"].iloc[0])
        assert abs(parts - total) <= 1e-3 * sub["contribution"].abs().sum() + 1e-5


def test_flow_rows_cover_every_window_and_case(mllm, clean):
    rows = run_flow(mllm, clean, flows=("image->last",), k=1, batch_size=4)
    n = len(clean.table)
    assert len(rows) == mllm.n_layers * n
    assert sorted(set(rows["window_start"])) == list(range(mllm.n_layers))
    assert (rows["flipped"] == (rows["follow"] != rows["follow_knocked"])).all()


def test_head_scaling_at_alpha_one_reproduces_the_clean_answers(mllm, clean):
    rows, summary = run_head_scaling(mllm, clean, {"h": [(0, 0)]}, alphas=(0.0, 2.0), batch_size=4, n_boot=20)
    one = rows[rows["alpha"] == 1.0].set_index("case_id").loc[clean.table["case_id"]]
    np.testing.assert_array_equal(one["y_m"].to_numpy(object), clean.table["y_m"].to_numpy(object))
    assert sorted(set(rows["alpha"])) == [0.0, 1.0, 2.0] and summary["alphas"] == [0.0, 1.0, 2.0]
