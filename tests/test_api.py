"""The public surface: every export resolves, and importing mechmod is cheap."""

import subprocess
import sys

import mechmod


def test_every_export_resolves():
    for name in mechmod.__all__:
        assert getattr(mechmod, name) is not None, name


def test_import_does_not_pull_torch():
    code = "import sys, mechmod; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
