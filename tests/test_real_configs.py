"""The five supported checkpoints' real tokenizers, chat templates and
processors, on random-weight models shrunk from their real configs
(tests/real_models.py): prompts token for token as the real processor
builds them, image-token counts, spans, answer labels, decoding, shared
prefixes, and a whole `mechmod run`. Skipped unless MECHMOD_REAL_CONFIGS
names the folder of those files (.ci/run sets it when ../shared/real-configs
exists)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from mechmod.answers import OTHER, LabelSet
from mechmod.data import load_cases
from mechmod.decoding import model_next_logits, over_cache, reforward
from mechmod.models import MLLM, load_model
from mechmod.prefix import cache_kwarg, trace_shared
from mechmod.scoring import score
from mechmod.tracing import trace
from tests.real_models import ENV, FOLDERS, IMAGE_TOKENS_800x600, build_real, real_configs, source_dir
from tests.run_helpers import assert_same_rows, child_env

pytestmark = pytest.mark.skipif(real_configs() is None, reason=(
    f"{ENV} is not set to a folder of the real checkpoints' tokenizers and configs "
    "(.ci/run sets it from ../shared/real-configs)"))

TASKS = {
    "color": ("red", "yellow", "blue", "green", "purple", "orange"),
    "shape": ("cube", "sphere", "cylinder"),
    "material": ("metal", "rubber"),
    "clevr_color": ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"),
}
DESC, QUESTION = "The circle is blue.", "What color is the circle? Answer with one word."


@pytest.fixture(scope="session", params=list(FOLDERS))
def real(request, tmp_path_factory) -> MLLM:
    """The family's shrunk model, saved and loaded as `mechmod` loads models."""
    family = request.param
    return load_model(str(build_real(family, tmp_path_factory.mktemp(family) / "model")))


def _image() -> Image.Image:
    return Image.new("RGB", (800, 600), (200, 30, 30))


def _processor_ids(proc, with_image: bool, text: str, chat_template=None) -> torch.Tensor:
    """What the real processor itself makes of image + text through its chat template."""
    content = ([{"type": "image", "image": _image()}] if with_image else []) + [{"type": "text", "text": text}]
    out = proc.apply_chat_template([{"role": "user", "content": content}], chat_template=chat_template,
                                   add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    return out["input_ids"]


@pytest.mark.parametrize("with_image", [True, False])
def test_encode_equals_the_real_processor(real, with_image):
    enc = real.encode([_image() if with_image else None], [DESC], [QUESTION])
    expected = _processor_ids(real.processor, with_image, f"{DESC} {QUESTION}")
    assert torch.equal(enc.inputs["input_ids"].cpu(), expected)


def test_image_tokens_and_spans(real):
    enc = real.encode([_image()], [DESC], [QUESTION])
    ids, spans = enc.inputs["input_ids"][0].cpu(), {k: v[0] for k, v in enc.spans.items()}
    assert int((ids == real.image_token_id).sum()) == int(spans["image"].sum()) == IMAGE_TOKENS_800x600[real.family]
    assert real.tokenizer.decode(ids[spans["description"]]).strip() == DESC
    assert real.tokenizer.decode(ids[spans["question"]]).strip() == QUESTION


@pytest.mark.parametrize("task", list(TASKS))
def test_labels_own_whole_words_and_long_unique_prefixes_only(real, task):
    tok = real.tokenizer
    labels = LabelSet(tok, list(TASKS[task]))
    owners: dict[int, str] = {}
    for lab in labels.labels:
        for t in labels.token_ids(lab):
            text = tok.decode([t]).strip().casefold()
            assert text == lab or (len(text) >= 3 and lab.startswith(text)), (lab, tok.convert_ids_to_tokens(t))
            assert t not in owners, (t, owners.get(t), lab)
            owners[t] = lab
        for text in (lab, " " + lab, lab.capitalize(), " " + lab.capitalize()):  # a one-token spelling is owned
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                assert ids[0] in labels.token_ids(lab), (lab, text)
    for letter in ("B", " B", "C", " C", "c", " c", "R", " R", "G", " G", "OR", " OR"):  # pieces the issue named
        first = tok.encode(letter, add_special_tokens=False)[-1]
        assert first not in owners, (letter, owners.get(first))


def _script(tok, text: str) -> list[int]:
    """The tokens a model writes for ``text`` as the answer (the real
    tokenizer's own split: e.g. '▁C' 'ube' '.' in Llama's vocabulary)."""
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("task, answer, expected", [
    ("shape", "Cube.", "cube"), ("shape", "Cylinder.", "cylinder"),
    ("color", "BLUE.", "blue"), ("color", "BOTH.", OTHER), ("color", "Black.", OTHER), ("color", "Both", OTHER),
    ("clevr_color", "Cyan.", "cyan"), ("clevr_color", "Green.", "green"),
])
def test_prediction_is_the_written_word(real, task, answer, expected):
    """A model whose first token is the first piece of ``answer`` and which
    then writes the rest (a constructed logits function)."""
    tok = real.tokenizer
    labels = LabelSet(tok, list(TASKS[task]))
    script = _script(tok, answer)
    V = real.lm_head.weight.shape[0]

    def one_hot(ids):
        logits = torch.full((len(ids), V), -1e4)
        logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
        return logits

    def continuation(rows, written):
        k = written.shape[1]
        return one_hot([script[k] if k < len(script) else tok.eos_token_id] * len(rows))

    assert labels.predict(one_hot([script[0]]), continuation) == [expected]


def test_cache_continuation_equals_a_full_reforward(real):
    enc = real.encode([_image(), Image.new("RGB", (600, 800), (30, 30, 200))], [DESC, None], [QUESTION, QUESTION])
    with torch.no_grad():
        out = real.model(**enc.inputs, use_cache=True, logits_to_keep=1)
    cached = over_cache(real, enc.inputs, getattr(out, cache_kwarg(real.model)))
    full = reforward(enc.inputs, model_next_logits(real.model), real.tokenizer.pad_token_id)
    rows = torch.tensor([0, 1])
    written = torch.tensor([_script(real.tokenizer, "Cube.")[:2], _script(real.tokenizer, "BLUE.")[:2]])
    torch.testing.assert_close(cached(rows, written), full(rows, written), atol=1e-4, rtol=0)


def test_shared_prefix_equals_full_prompts(real):
    prompts = [(None, QUESTION), (DESC, QUESTION), ("A banana is red.", QUESTION)]
    got = trace_shared(real, [_image()], [prompts], batch_size=2)[0]
    ref = trace(real, real.encode([_image()] * 3, [d for d, _ in prompts], [q for _, q in prompts]))
    torch.testing.assert_close(torch.log_softmax(got.logits, -1), torch.log_softmax(ref.logits, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(got.resid, ref.resid, atol=1e-4, rtol=0)


def test_mechmod_run_completes_quietly_and_shared_prefixes_equal_full_prompts(real, tmp_path):
    # the command as a user runs it (a fresh process, Python's default warning filters): no warning on stderr
    out = tmp_path / "run"
    env = {k: v for k, v in child_env().items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-m", "mechmod", "run", "--model", real.name, "--groups", "1",
                           "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in proc.stderr.splitlines() if re.search(r"warn|deprecat", line, re.IGNORECASE)]
    assert not warned, f"{real.family}: `mechmod run` printed warnings:\n" + "\n".join(warned)
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) > 0 and (results["status"] == "ok").all()
    assert (out / "summary.json").is_file() and (out / "report.html").is_file()
    # the run shares image prefixes (the default); every prompt run in full gives the same rows
    unshared = score(real, load_cases(out / "dataset"), out / "dataset", batch_size=4, share_prefix=False)
    assert_same_rows(results, unshared, atol=1e-4)


def test_gemma3_uses_the_tokenizers_template_when_the_processor_has_none(real, tmp_path):
    if real.family != "gemma3":
        pytest.skip("Gemma 3 is the checkpoint whose template may sit in tokenizer_config.json only")
    from transformers import AutoProcessor

    real_files = source_dir("gemma3", Path(real.name).parent)  # decompressed when the model was built
    files = tmp_path / "files"
    files.mkdir()
    for f in real_files.iterdir():
        if f.name != "chat_template.json":  # the template is left in tokenizer_config.json only
            (files / f.name).symlink_to(f)
    proc = AutoProcessor.from_pretrained(files)
    assert proc.chat_template is None and proc.tokenizer.chat_template
    mllm = MLLM(real.model, proc, real.adapter, name="gemma3 without a processor template")
    assert mllm.prompt("hi", with_image=True) == "<bos><start_of_turn>user\n<start_of_image>hi<end_of_turn>\n" \
                                                 "<start_of_turn>model\n"
    enc = mllm.encode([_image()], [DESC], [QUESTION])
    expected = _processor_ids(proc, True, f"{DESC} {QUESTION}", chat_template=proc.tokenizer.chat_template)
    assert torch.equal(enc.inputs["input_ids"].cpu(), expected)
