"""Data-parallel runs: which process am I, which cases are mine, and the
two synchronisation points of a run.

A run is data parallel when the launcher says so through the usual
environment (``accelerate launch``, ``torchrun`` and ``mechmod run
--num-processes N`` all set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``). The processes join a ``gloo`` process
group, used only for barriers (results never travel through it: every rank
writes its own parquet parts into the shared run directory).

* Split: :func:`shard_cases` gives each rank a contiguous block of images
  (sorted by ``image_id``) holding about ``1/world`` of the cases; an image's
  cases stay on one rank, so its vision-only answer is computed once. The
  split depends only on the dataset and the world size, never on progress,
  so all ranks agree on it without talking.
* Resume: a rank skips every case already in any part (of any rank, or of a
  single-process run), so a run may be resumed with another world size.
* Merge: rank 0 finalizes once every rank has passed the final barrier.

``mechmod run --num-processes N`` spawns N local ``python -m mechmod run``
processes with this environment (:func:`launch_local`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

from mechmod.errors import MechmodError
from mechmod.rundir import LAUNCH_ENV

#: seconds a barrier may wait for the slowest rank (ranks finish their shares
#: at different times, resumed ranks may have little left); override with
#: MECHMOD_DIST_TIMEOUT_S
DEFAULT_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (``size == 1``: alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        """Wait for every rank (nothing to do alone)."""
        if not self.parallel:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            raise MechmodError("internal: barrier before the process group was set up (call distributed.setup())")
        dist.barrier()

    def share(self, value):
        """Rank 0's ``value`` on every rank (a barrier for the others): e.g.
        the launch id of the run directory rank 0 holds."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise MechmodError(f"environment variable {name}={value!r} is not an integer") from None


def detect_world() -> World:
    """The rank and world size: from an initialised ``torch.distributed``
    process group, else from the launcher's environment, else alone."""
    import torch.distributed as dist

    local = _env_int("LOCAL_RANK")
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        return World(rank=rank, size=size, local_rank=rank if local is None else local)
    size = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK")
    if rank is None:
        rank = local if local is not None and size > 1 else 0
    if size < 1 or not 0 <= rank < size:
        raise MechmodError(f"RANK={rank} is not in [0, WORLD_SIZE={size}); check the launcher's environment")
    return World(rank=rank, size=size, local_rank=rank if local is None else local)


def setup() -> World:
    """Detect the world and, when data parallel, join the gloo process group
    (once; an existing group, e.g. accelerate's, is reused)."""
    world = detect_world()
    if not world.parallel:
        return world
    import torch.distributed as dist

    if dist.is_initialized():
        return world
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise MechmodError(f"WORLD_SIZE={world.size} but MASTER_ADDR/MASTER_PORT are not set; start a data-parallel "
                           "run with `accelerate launch -m mechmod run ...`, torchrun, or `mechmod run --num-processes N`")
    timeout = _env_int("MECHMOD_DIST_TIMEOUT_S") or DEFAULT_TIMEOUT_S
    try:
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as err:
        raise MechmodError(f"rank {world.rank}/{world.size}: cannot join the gloo process group at "
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({err})") from None
    return world


def teardown() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_cases(cases, rank: int, size: int):
    """This rank's cases: a contiguous block of images (by ``image_id``)
    holding about ``len(cases) / size`` cases. Depends only on the cases and
    the world size; every case belongs to exactly one rank and an image's
    cases to the same one."""
    if size == 1:
        return cases
    counts = cases.groupby("image_id", sort=True).size()
    total = int(counts.sum())
    owner = {}
    start = 0
    for image_id, n in counts.items():
        # the rank whose 1/size slice holds the image's middle case
        owner[image_id] = min(size - 1, int((start + n / 2) * size // total))
        start += int(n)
    return cases[cases["image_id"].map(owner) == rank]


# ------------------------------------------------------------- local launch
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(n: int, args: Sequence[str], launch_id: str | None = None, poll_s: float = 0.2) -> int:
    """Run ``python -m mechmod *args`` in ``n`` local processes forming one
    data-parallel world (the environment ``accelerate launch`` would give),
    carrying ``launch_id`` (the run directory this process holds for them,
    :meth:`mechmod.rundir.RunDir.launch`). Returns 0 when all succeed; when
    one fails the others are stopped and its exit code is returned."""
    if n < 1:
        raise MechmodError(f"--num-processes must be >= 1, got {n}")
    if _env_int("WORLD_SIZE") not in (None, 1):
        raise MechmodError("--num-processes inside an already data-parallel launch (WORLD_SIZE is set); use one or the other")
    port = _free_port()
    procs = []
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(n),
                   GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if launch_id is not None:
            env[LAUNCH_ENV] = launch_id
        procs.append(subprocess.Popen([sys.executable, "-m", "mechmod", *args], env=env))
    failed: int | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        failed = 130
    _stop(procs)
    return failed


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
