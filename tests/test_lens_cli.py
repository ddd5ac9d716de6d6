"""`mechmod lens train` then `mechmod run --lens tuned`: the tuned lens is
trained, saved, checked against the model's unembedding and used by a run,
whose report shows its held-out fidelity."""

import json

from mechmod.cli import main
from tests.run_helpers import color_dataset, tiny_model_dir


def test_train_a_lens_then_run_with_it(tmp_path):
    model, ds = str(tiny_model_dir()), color_dataset(groups=3)
    lens_dir = tmp_path / "lens"
    assert main(["lens", "train", "--model", model, "--dataset", str(ds), "--steps", "5", "--batch-size", "8",
                 "--threads", "1", "--quiet", "--out", str(lens_dir)]) == 0
    fidelity = json.loads((lens_dir / "fidelity.json").read_text())
    n_res = len(fidelity["heldout"]["kl_logit"])
    assert n_res == len(fidelity["heldout"]["kl_tuned"]) == 3  # the embedding output + 2 decoder layers
    assert fidelity["heldout"]["layers"] == [-1, 0, 1]
    assert (lens_dir / "lens.safetensors").is_file()
    run = tmp_path / "run"
    assert main(["run", "--model", model, "--dataset", str(ds), "--lens", "tuned", "--lens-path", str(lens_dir),
                 "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["lens"] == "tuned"
    assert "Lens fidelity" in (run / "report.html").read_text()
    # a lens for another model is refused with a message naming the mismatch
    other = tmp_path / "other-model"
    from tests.tiny_llava import build_tiny_llava

    build_tiny_llava(other, seed=1)
    assert main(["run", "--model", str(other), "--dataset", str(ds), "--lens", "tuned", "--lens-path",
                 str(lens_dir), "--out", str(tmp_path / "run2"), "--quiet"]) == 2
