"""Architecture invariants, measured from the source (scripts/architecture.py)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("architecture", ROOT / "scripts" / "architecture.py")
arch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(arch)


@pytest.fixture(scope="module")
def graph():
    return arch.imports(arch.modules())


def test_import_graph_sees_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "mechmod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from mechmod import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    monkeypatch.setattr(arch, "ROOT", pkg)
    g = arch.imports(arch.modules())
    assert g["mechmod.a"] == {"mechmod.b"} and g["mechmod.b"] == {"mechmod.a"}
    assert arch.cycles(g) == [["mechmod.a", "mechmod.b"]]


def test_no_import_cycle(graph):
    assert arch.cycles(graph) == []


def test_no_import_against_the_data_flow(graph):
    assert arch.against_flow(graph) == []


def test_every_module_has_a_stage():
    assert [n for n in arch.modules() if arch.stage(n) == len(arch.STAGES)] == []


def test_no_module_over_500_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in arch.modules().items()}
    assert {n: k for n, k in long.items() if k > 500} == {}


def test_import_mechmod_has_no_side_effects():
    code = ("import sys; hook = sys.excepthook; import mechmod; "
            "assert sys.excepthook is hook; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
