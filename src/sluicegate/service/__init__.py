"""The decision service: rule configuration (``config``), in the envoyproxy/ratelimit format."""

from __future__ import annotations
