"""The scripts sent to Redis, assembled from the ``.lua`` files shipped as package data."""

from __future__ import annotations

import hashlib
from importlib.resources import files

from .algorithms._outcome import TIME_TOLERANCE_US

__all__ = ["DECIDE_SCRIPT", "DECIDE_SHA", "REFUND_SCRIPT", "REFUND_SHA"]

# The entry point comes last: it calls the functions the algorithm files add to `algorithms`.
_ALGORITHMS = ("gcra.lua", "sliding_log.lua", "sliding_window.lua", "fixed_window.lua")
_LUA = files("sluicegate") / "lua"
_PRELUDE = f"local algorithms = {{}}\nlocal TIME_TOLERANCE_US = {TIME_TOLERANCE_US!r}\n\n"


def _script(entry_point: str) -> tuple[str, str]:
    text = _PRELUDE + "\n".join((_LUA / part).read_text("utf-8") for part in (*_ALGORITHMS, entry_point))
    return text, hashlib.sha1(text.encode("utf-8")).hexdigest()


#: One script for every algorithm and for any number of items: one SHA to keep cached.
DECIDE_SCRIPT, DECIDE_SHA = _script("decide.lua")
#: Only Redis Cluster needs it: undoes a committed slot of a ``hit_all`` denied in another slot.
REFUND_SCRIPT, REFUND_SHA = _script("refund.lua")
