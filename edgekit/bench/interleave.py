"""Interleaved rounds: every artifact runs a slice of its counted runs in turn (A B C A B C …),
so that drift of the machine (thermal throttling, a neighbour's job, frequency scaling) hits
all of them alike and their ratios stay fair."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from edgekit.progress import progress

H = TypeVar("H")


def split(total: int, rounds: int) -> list[int]:
    """``total`` runs over ``rounds`` rounds, as evenly as whole runs allow (each >= 1)."""
    rounds = max(1, min(rounds, total))
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def default_rounds(runs: int, artifacts: int) -> int:
    """One round is enough for a single artifact; several get up to 10 turns each."""
    return 1 if artifacts == 1 else min(10, runs)


def run_rounds(
    handles: Sequence[H],
    runs: int,
    rounds: int,
    seconds: float,
    run: Callable[[H, int, float], list[float]],
    desc: str = "benchmark",
) -> list[list[float]]:
    """Call ``run(handle, n, seconds)`` round by round, handle by handle; the times each
    handle returned, concatenated in order. ``seconds`` is the total minimum duration per
    handle, spread over the rounds like the runs."""
    plan = split(runs, rounds)
    per_round_s = seconds / len(plan) if seconds else 0.0
    times: list[list[float]] = [[] for _ in handles]
    steps = [(r, i) for r in range(len(plan)) for i in range(len(handles))]
    for r, i in progress(steps, desc=desc, total=len(steps)):
        times[i].extend(run(handles[i], plan[r], per_round_s))
    return times
