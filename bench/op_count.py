"""Counting the operators a PyTorch region dispatches, as tchcv counts its own
(`tchcv::device::op_count`): torch.profiler's CPU activity records from libtorch's RecordFunction
hook on every thread; we keep its FUNCTION-scope events, each with the FUNCTION-scope events it
called directly. tchcv turns both sides' lists into the figures (operators, host syncs) with one
definition.

    calls, result = count_ops(fn)      # calls: [[name, [child names]], ...]
"""

import warnings

from torch.profiler import ProfilerActivity, profile

FUNCTION_SCOPE = 0  # at::RecordScope::FUNCTION


def count_ops(fn):
    """Run fn() once under the profiler; returns ([[name, [child names]], ...], fn's result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = fn()
    calls = [
        [event.name, [c.name for c in event.cpu_children if c.scope == FUNCTION_SCOPE]]
        for event in prof.events()
        if event.scope == FUNCTION_SCOPE
    ]
    return calls, result
