"""What every dataset writer shares: tier lists from the command line, the
seed and group-count checks, and the progress bar."""

from __future__ import annotations

from tqdm.auto import tqdm

from mechmod.errors import MechmodError


def parse_tiers(spec, n: int, what: str) -> tuple[int, ...]:
    """'0-4,7' / [0, 1] / None (all) -> sorted tuple of tiers in 0..n-1."""
    if spec is None:
        return tuple(range(n))
    items: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        for p in parts:
            if isinstance(p, str) and "-" in p.strip()[1:]:
                a, b = p.strip().split("-", 1)
                items += list(range(int(a), int(b) + 1))
            else:
                if isinstance(p, float) and not p.is_integer():
                    raise ValueError
                items.append(int(str(p).strip()) if isinstance(p, str) else int(p))
    except ValueError:
        raise MechmodError(f"invalid {what} tier list {spec!r}; use e.g. '0-4,7' (tiers 0..{n - 1})") from None
    bad = sorted({t for t in items if not 0 <= t < n})
    if bad or not items:
        raise MechmodError(f"invalid {what} tier(s) {bad or spec!r}; tiers are 0..{n - 1}")
    return tuple(sorted(set(items)))


def check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise MechmodError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


#: most groups a generator makes: 100,000 colour groups are already 12.6 million cases
MAX_GROUPS = 100_000


def check_groups(groups) -> int:
    if isinstance(groups, bool) or int(groups) != groups or groups <= 0:
        raise MechmodError(f"--groups must be a positive integer, got {groups!r}")
    if groups > MAX_GROUPS:
        raise MechmodError(f"--groups {groups}: at most {MAX_GROUPS} (already 12.6 million colour cases, more than "
                           "a study can run); generate several datasets with different seeds instead")
    return int(groups)


def _progress(it, total: int, enabled: bool, desc: str):
    if not enabled:
        return it
    return tqdm(it, total=total, desc=desc, unit="group", mininterval=0.5)
