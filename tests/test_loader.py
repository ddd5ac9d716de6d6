"""Inputs built in loader workers give the rows built in process; the
default worker rule; a bad worker count named; the run logs its timing,
forwards stopped by exception included."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mechmod import runner
from mechmod.errors import MechmodError
from mechmod.lenses import LogitLens, Unembed
from mechmod.loader import default_workers, prepare, prepared_chunks
from mechmod.rundir import RunDir
from tests.run_helpers import color_dataset, copy_dataset, run_config, tiny_mllm


def _run(ds, out, workers, capsys):
    mllm = tiny_mllm()
    cfg = run_config(ds, batch_size=4, loader_workers=workers)
    runner.run_study(mllm, LogitLens(Unembed.from_model(mllm)), ds, out, cfg, chunk_size=8, progress=True)  # logs timing
    timing = [line for line in capsys.readouterr().err.splitlines() if line.startswith("timing: ")]
    return pd.read_parquet(RunDir(out).results), json.loads(timing[-1].removeprefix("timing: "))


def test_rows_built_in_workers_equal_rows_built_in_process(tmp_path, capsys):
    ds = copy_dataset(color_dataset(groups=1), tmp_path / "ds")
    (ds / pd.read_parquet(ds / "cases.parquet")["image_path"].iloc[-1]).write_bytes(b"not a png")  # one fails alike
    a, ta = _run(ds, tmp_path / "w0", 0, capsys)
    b, tb = _run(ds, tmp_path / "w2", 2, capsys)
    pd.testing.assert_frame_equal(a, b)
    assert (a["status"] == "failed").any() and (a["status"] == "ok").any()
    assert (ta["loader_workers"], tb["loader_workers"]) == (0, 2) and ta["chunks"] == tb["chunks"] > 1
    assert ta["model"] > 0 and ta["inputs_built"] > 0 and ta["scoring"] > 0


def test_prepared_prefixes_come_in_chunk_order_on_the_cpu(tmp_path):
    ds = color_dataset(groups=1)
    cases = pd.read_parquet(ds / "cases.parquet")
    chunks = [cases.iloc[:5], cases.iloc[5:12]]
    got = list(prepared_chunks(tiny_mllm(), chunks, ds, share_prefix=True, workers=1))
    assert [list(p.cases["case_id"]) for p in got] == [list(c["case_id"]) for c in chunks]
    ref = prepare(tiny_mllm(), chunks[1], ds, share_prefix=True)
    assert set(got[1].prefixes) == set(chunks[1]["image_path"]) == set(ref.prefixes)
    for path, prefix in got[1].prefixes.items():
        assert all(v.device.type == "cpu" and v.equal(ref.prefixes[path].inputs[k]) for k, v in prefix.inputs.items())
    assert prepare(tiny_mllm(), chunks[0], ds, share_prefix=False).prefixes == {}


def test_default_workers_follow_the_device_and_the_cores():
    assert default_workers("cpu", cpus=64) == 0  # the forward uses every core
    assert [default_workers("cuda", cpus=n) for n in (2, 3, 4, 16)] == [0, 1, 2, 2]
    with pytest.raises(MechmodError, match="--loader-workers must be >= 0"):
        list(prepared_chunks(tiny_mllm(), [], color_dataset(groups=1), True, workers=-1))


def test_the_forward_clock_counts_forwards_that_stop_by_exception():
    import time

    import torch

    from mechmod.backends.shared_prefix import KeysCached

    class Stops(torch.nn.Module):  # as a prefix forward stopping at its last keys (keys_only)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            time.sleep(0.05)
            raise KeysCached

    model, timing = Stops(), runner.Timing()
    with runner._ForwardClock(model, timing):
        for _ in range(2):
            with pytest.raises(KeysCached):
                model(torch.zeros(1))
    assert timing.model >= 0.1
