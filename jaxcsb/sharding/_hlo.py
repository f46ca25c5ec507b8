"""Finding the collectives in compiled HLO text: the check that a sharded step communicates
only where its design says it does (no all-gather hidden in front of a custom call)."""

from __future__ import annotations

import re

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)

# `%name = f32[8,40]{1,0} all-gather(%p), ...`; async pairs appear as `all-gather-start(` and
# `all-gather-done(`: the start is counted, the done is not.
_OP = re.compile(r"=\s*\S.*?\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def collectives(hlo_text: str) -> dict[str, list[str]]:
    """The collective instructions of ``hlo_text`` (e.g. ``jax.jit(f).lower(*args).compile()
    .as_text()``), by kind: ``{"all-gather": [line, ...], ...}``; kinds absent from the text
    are absent from the result."""
    found: dict[str, list[str]] = {}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m:
            found.setdefault(m.group(1), []).append(line.strip())
    return found
