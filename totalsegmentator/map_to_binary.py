"""``totalsegmentator.map_to_binary``: the official class tables, built on first use by
:mod:`totalseg.registry.official_maps` (no hand-kept copy here)."""
from totalseg.registry.official_maps import NAMES as __all__, table as _table


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _table(name)
