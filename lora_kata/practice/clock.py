"""Times as the practice commands show them: a clock face, the time used of a session's budget."""

from __future__ import annotations

from lora_kata.practice.state import Session


def clock(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour on."""
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}" if hours else f"{rest // 60}:{rest % 60:02}"


def time_used(session: Session, at: float) -> str:
    """'time 12:34 of 25:00, 12:26 left' (or '... over')."""
    used, budget = session.seconds(at), session.minutes * 60
    left = f"{clock(budget - used)} left" if used <= budget else f"{clock(used - budget)} over"
    return f"time {clock(used)} of {clock(budget)}, {left}"


def over(session: Session, at: float) -> bool:
    return session.seconds(at) > session.minutes * 60
