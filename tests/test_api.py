"""The public surface: every export resolves, and importing mechmod is cheap."""

import subprocess
import sys

import pytest

import mechmod


def test_every_export_resolves_to_the_object_of_that_name():
    for name in set(mechmod.__all__) - {"__version__"}:
        obj = getattr(mechmod, name)
        assert obj.__name__ == name and obj.__module__.startswith("mechmod."), (name, obj)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mechmod.nope


def test_import_does_not_pull_torch():
    code = "import sys, mechmod; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
