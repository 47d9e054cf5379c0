"""Moved to :mod:`kat_scheduler.rules.eligibility`; this name re-exports it for existing imports."""

from kat_scheduler.rules.eligibility import (
    NOT_DUE_SKIP,
    SkipReason,
    Trigger,
    clearance_skip,
    grace_period,
    grace_skip,
    static_skip,
)

__all__ = ["NOT_DUE_SKIP", "SkipReason", "Trigger", "clearance_skip", "grace_period", "grace_skip", "static_skip"]
