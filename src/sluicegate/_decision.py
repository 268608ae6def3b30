"""``Decision``: the answer to "may this key spend this cost now?"."""

from __future__ import annotations

from dataclasses import dataclass

from ._policy import Policy

__all__ = ["Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    """One rate-limit decision. Being over the limit is ``allowed=False``, not an exception.

    The fields answer what an HTTP layer needs for ``429``, ``Retry-After`` and ``RateLimit``
    headers. Times are seconds as floats, with microsecond resolution.
    """

    #: True when the cost was admitted (and, for ``hit``, consumed). Example: ``True``.
    allowed: bool
    #: The user key decided on. Example: ``"user:42"``.
    key: str
    #: The policy applied. Example: ``Policy.parse("100/minute")``.
    policy: Policy
    #: The most units the key can have available at once: ``burst`` for gcra, else ``limit``.
    #: Example: ``100``.
    limit: int
    #: Units still available after this decision, never negative. Example: ``99``.
    remaining: int
    #: Seconds until the key is back to full capacity (``remaining == limit``). Example: ``0.6``.
    reset_after: float
    #: 0.0 when allowed; otherwise seconds until the same cost would be allowed. Example: ``1.5``.
    retry_after: float
    #: True when the decision was made without the shared store (a fallback). Example: ``False``.
    degraded: bool = False
    #: For ``hit_all``: each item's own decision, in the order given. Empty otherwise.
    results: tuple[Decision, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The decision as JSON-ready fields (``sluicegate check --json`` and ``POST /v1/check``);
        the policy in its text form, ``results`` left out."""
        return {
            "allowed": self.allowed,
            "key": self.key,
            "policy": str(self.policy),
            "limit": self.limit,
            "remaining": self.remaining,
            "reset_after": self.reset_after,
            "retry_after": self.retry_after,
            "degraded": self.degraded,
        }
