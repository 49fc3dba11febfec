"""Whether this command runs in a process of its own (the console script) or inside another
program (tests, a notebook): only a process of its own may tune the interpreter for itself."""

from __future__ import annotations

whole = False
