"""Test-wide settings (never reach a hub, modest CPU threads) and the shared
session fixtures: each tiny model is built once per session and saved to a
temporary directory; modules load it fresh (booting the TransformerLens
bridge rewires the model it boots on, so an in-memory instance never
crosses modules, except run_helpers.tiny_mllm(), which no test may bridge)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import run_helpers  # noqa: E402

torch.set_num_threads(1)  # tiny test models: one thread avoids OpenMP spin on a shared 2-core box


def pytest_collection_modifyitems(config, items):
    """``slow`` tests are opt-in: they run only when ``-m`` names them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llava_dir():
    """The tiny LLaVA's directory, saved once per session (read-only: copy it before damaging it)."""
    return run_helpers.tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_dir():
    """``family -> directory`` of that family's tiny model, each saved once per session (read-only)."""
    return run_helpers.tiny_family_dir


@pytest.fixture(scope="module")
def mllm(tiny_llava_dir):
    """The tiny LLaVA, loaded fresh for each module (modules on other families override it)."""
    from mechmod.models import load_model

    return load_model(str(tiny_llava_dir))


@pytest.fixture(scope="session", autouse=True)
def shared_model_stays_unbridged():
    """Fails the session if a test booted the TransformerLens bridge on the
    one instance shared across modules (it would rewire it for the others)."""
    yield
    if run_helpers.tiny_mllm.cache_info().currsize:
        assert getattr(run_helpers.tiny_mllm(), "_tl_bridge", None) is None, \
            "a test booted the TransformerLens bridge on run_helpers.tiny_mllm(): use the `mllm` fixture"
