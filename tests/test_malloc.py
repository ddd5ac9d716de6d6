"""glibc's allocator keeps freed memory for the next forward
(mechmod._malloc): once the heap has grown to a forward's activations,
allocating them again costs no page faults (glibc's defaults, in a fresh
process on this project's machines, fault all 16,384 pages in again; how
often depends on the process's history, so only the kept case is
asserted)."""

import subprocess
import sys
import textwrap

import pytest

_FORWARDS = textwrap.dedent("""
    import resource, torch
    from mechmod._malloc import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # set once, then reported as set
    for _ in range(6):  # six forwards' activations: 4 blocks of 16 MB, written, then freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(4 * 2**20) for _ in range(4)]
        del blocks
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _last_forward_faults() -> int:
    out = subprocess.run([sys.executable, "-c", _FORWARDS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_activations_are_reused_without_page_faults():
    assert _last_forward_faults() < 1000  # of 16,384 pages
