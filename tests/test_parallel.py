"""Data-parallel runs (2 CPU processes over gloo) give the rows of a
single-process run; the split keeps an image's cases on one rank; a run can
be resumed with another world size; a model spread by a device map traces
the same residuals."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from mechmod import distributed
from mechmod.cli import main
from mechmod.cli.run import parse_device_map
from mechmod.data import load_cases
from mechmod.errors import MechmodError
from mechmod.tracing import trace
from tests.run_helpers import (ROOT, assert_same_rows, child_env, cli_args, color_dataset, reference_results,
                               run_in_process, tiny_mllm, tiny_model_dir)


def _uneven_cases():
    rows = []
    for img, n in [("a", 9), ("b", 1), ("c", 4), ("d", 9), ("e", 2), ("f", 7), ("g", 3)]:
        rows += [{"case_id": f"{img}-{k}", "image_id": img} for k in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_shards_partition_the_cases_by_image(size):
    for cases in (_uneven_cases(), load_cases(color_dataset(groups=2))):
        shards = [distributed.shard_cases(cases, r, size) for r in range(size)]
        ids = [c for s in shards for c in s["case_id"]]
        assert sorted(ids) == sorted(cases["case_id"])  # every case once
        owners = {}
        for r, s in enumerate(shards):
            for img in s["image_id"].unique():
                assert owners.setdefault(img, r) == r  # an image's cases on one rank
        if size <= cases["image_id"].nunique():
            biggest = cases.groupby("image_id").size().max()
            lengths = [len(s) for s in shards]
            assert max(lengths) - min(lengths) <= 2 * biggest


def test_world_comes_from_the_launcher_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.detect_world() == distributed.World(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.detect_world() == distributed.World(3, 4, 1)
    with pytest.raises(MechmodError, match="MASTER_ADDR"):
        distributed.setup()
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(MechmodError, match="RANK=4"):
        distributed.detect_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(MechmodError, match="not an integer"):
        distributed.detect_world()


def test_two_processes_give_the_rows_of_one_and_resume_with_another_world_size(tmp_path, capsys):
    ds = color_dataset(groups=1)  # 2 images, 18 cases
    whole = reference_results(groups=1)

    out = tmp_path / "two"
    assert main(cli_args(ds, out, "--num-processes", "2", "--batch-size", "4")) == 0
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert parts and all(p.startswith(("part-r000-", "part-r001-")) for p in parts), parts
    images = {r: set(pd.concat([pd.read_parquet(p) for p in (out / "parts").glob(f"part-r00{r}-*.parquet")])["image_id"])
              for r in (0, 1)}
    assert images[0] and images[1] and not images[0] & images[1]  # one image per rank, none split
    merged = pd.read_parquet(out / "results.parquet")
    assert_same_rows(merged, whole)
    assert '"n_cases": 18' in (out / "summary.json").read_text()

    # rank 1's work lost: one process resumes the 2-process run and scores only those cases
    for p in (out / "parts").glob("part-r001-*.parquet"):
        p.unlink()
    (out / "results.parquet").unlink()
    resumed = run_in_process(ds, out, batch_size=4)
    assert [p.name for p in (out / "parts").glob("part-0*.parquet")] == ["part-00000.parquet"]
    assert len(pd.read_parquet(out / "parts" / "part-00000.parquet")) == 9  # only rank 1's image
    assert_same_rows(resumed, whole)


def test_a_failing_process_fails_the_launch_with_a_clear_message(tmp_path, capsys, monkeypatch):
    # the children refuse --batch-size 0 at once (the parent's own check is bypassed here)
    assert distributed.launch_local(2, ["run", "--batch-size", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    monkeypatch.setattr(distributed, "launch_local", lambda n, args, launch_id=None: 3)
    assert main(cli_args(color_dataset(groups=1), tmp_path / "r", "--num-processes", "2")) == 2
    assert "data-parallel process exited with code 3" in capsys.readouterr().err


def test_device_map_parsing():
    assert parse_device_map(None) is None and parse_device_map("auto") == "auto"
    assert parse_device_map('{"model": 0, "lm_head": "cpu"}') == {"model": 0, "lm_head": "cpu"}
    for bad in ("everywhere", "[1, 2]", "{}", '{"model": true}'):
        with pytest.raises(MechmodError, match="--device-map"):
            parse_device_map(bad)


# Layers on different devices: on CPU, accelerate can only split a model
# between "cpu" and "disk" (offloaded weights, streamed in by its hooks at
# forward time); an all-"cpu" map is not dispatched at all. So the vision
# tower (the first parameters, where nnsight would send the inputs) and
# layer 1 go to "disk": the trace then runs through accelerate's hooks, and
# every layer's reading must equal the plain model's. (Checked on a GPU too:
# layers split between offloaded "cpu" and "cuda:0".)
SPLIT_MAP = {"model.vision_tower": "disk", "model.multi_modal_projector": "cpu",
             "model.language_model.embed_tokens": "cpu", "model.language_model.layers.0": "cpu",
             "model.language_model.layers.1": "disk", "model.language_model.norm": "cpu",
             "model.language_model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_a_model_split_by_a_device_map_traces_the_same():
    from PIL import Image

    from mechmod.models import load_model

    plain = tiny_mllm()
    split = load_model(str(tiny_model_dir()), device_map=SPLIT_MAP)  # passes the self-check
    assert hasattr(split.layers[1], "_hf_hook"), "accelerate did not dispatch the layer"
    assert next(split.model.parameters()).device.type == "meta"  # offloaded vision tower
    img = Image.new("RGB", (40, 30), (200, 30, 30))
    for images, descs in (([img, img], ["The circle is red.", "a banana"]), ([None], ["The circle is blue."])):
        q = ["What color is the circle?"] * len(images)
        a, b = trace(plain, plain.encode(images, descs, q)), trace(split, split.encode(images, descs, q))
        assert b.resid.device.type == "cpu" and b.resid.shape == a.resid.shape
        torch.testing.assert_close(b.resid, a.resid, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)


def test_a_device_map_offloading_the_unembedding_is_refused():
    from mechmod.models import load_model

    with pytest.raises(MechmodError, match="offloads the model's lm_head"):
        load_model(str(tiny_model_dir()), device_map=dict(SPLIT_MAP, lm_head="disk"))


@pytest.mark.slow
def test_accelerate_launch_runs_data_parallel(tmp_path):
    """`accelerate launch --multi_gpu` is accelerate's torchrun launcher (its
    `--cpu` mode starts a single process), which on a CPU-only machine gives
    two gloo ranks."""
    ds = color_dataset(groups=1)
    whole = run_in_process(ds, tmp_path / "one", batch_size=4)
    out = tmp_path / "acc"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "mechmod", *cli_args(ds, out, "--batch-size", "4")]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name[:10] for p in (out / "parts").glob("part-*.parquet")} == {"part-r000-", "part-r001-"}
    assert_same_rows(pd.read_parquet(out / "results.parquet"), whole)
    shutil.rmtree(out)
