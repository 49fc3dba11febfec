"""Whether this command runs in a process of its own (the console script) or inside another
program (tests, a notebook): only a process of its own may tune the interpreter for itself.

Its garbage collector, for one: start-up makes objects that live until exit (Dagster's, mostly),
and collecting while they are made only walks them again and again (0.2 s of the 1.0 s that
``run`` spends importing, measured). The console script starts with the collector off;
``pause_collecting`` and ``collect_from_here`` bracket each further stretch of set-up.
"""

from __future__ import annotations

import gc

whole = False


def pause_collecting() -> None:
    """More set-up follows (imports, the Dagster instance)."""
    if whole:
        gc.disable()


def collect_from_here() -> None:
    """Set-up is over: what exists now lives until exit, so the collector leaves it alone
    (``gc.freeze``) and sees only what comes after (3-9% of a run's CPU, measured)."""
    if whole:
        gc.freeze()
        gc.enable()
