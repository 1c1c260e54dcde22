"""Flow control: queues with limits that hold across every worker, per-key limits, sliding-
window rate limits, backpressure and debounce. The value objects are defined in
`perdure.core.limits`; storage enforces them inside its claim and trigger transactions."""

from perdure.core.limits import Debounce, QueueLimits, RateLimit, claim_allowance

__all__ = ["Debounce", "QueueLimits", "RateLimit", "claim_allowance"]
