"""The decision script sent to Redis, assembled from the ``.lua`` files shipped as package data."""

from __future__ import annotations

import hashlib
from importlib.resources import files

from .algorithms._outcome import TIME_TOLERANCE_US

__all__ = ["DECIDE_SCRIPT", "DECIDE_SHA"]

# decide.lua comes last: it calls the functions the algorithm files add to `algorithms`.
_PARTS = ("gcra.lua", "sliding_log.lua", "sliding_window.lua", "fixed_window.lua", "decide.lua")
_LUA = files("sluicegate") / "lua"

#: One script for every algorithm and for any number of items: one SHA to keep cached.
_PRELUDE = f"local algorithms = {{}}\nlocal TIME_TOLERANCE_US = {TIME_TOLERANCE_US!r}\n\n"
DECIDE_SCRIPT = _PRELUDE + "\n".join((_LUA / part).read_text("utf-8") for part in _PARTS)
DECIDE_SHA = hashlib.sha1(DECIDE_SCRIPT.encode("utf-8")).hexdigest()
