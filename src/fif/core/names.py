"""Messages for an unknown name that list the valid ones, nearest first."""

from __future__ import annotations

import difflib
from typing import Iterable


def unknown_name_message(what: str, name: str, valid: Iterable[str], where: str = "") -> str:
    """``unknown dataset 'x' in benchmark 'mini'; did you mean 'y'? Valid: a, b, c``."""
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    msg = f"unknown {what} {name!r}" + (f" in {where}" if where else "")
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    shown = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
    return msg + f" Valid: {shown}"
