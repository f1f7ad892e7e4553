"""What ``@twinned``'s dispatch costs a call (handgrad.functional.function).

    python -m handgrad.benchmarks.dispatch                 # markdown table to stdout
    python -m handgrad.benchmarks.dispatch --repeats 41

What is timed: the forward call of an empty Function (y = x.view_as(x), x (3,) requiring grad) through
each way in: ``Fn.call`` (what the wrappers call: the dispatch, then torch's C apply of the fast class),
``Fn.fast_apply`` (torch's C apply alone, no dispatch: the cost of the combined class before any check),
and the transform-ready twin's apply outside any transform (what every call would cost without the fast
class: torch binds its arguments with inspect.signature). Then the checks the dispatch makes, one by one.

Method: thread CPU time (``time.thread_time``, so another job's use of the cores is not counted), one
intra-op thread; each sample is the fastest of three loops of ``number`` calls; the contenders take
turns, and the median over ``repeats`` samples is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from datetime import date

import torch

from handgrad.functional import function
from handgrad.functional.autocast import autocast_on_any_device
from handgrad.functional.function import TwinnedFunction, twinned


@twinned
class Empty(TwinnedFunction):
    """y = x (a view): the call with no arithmetic.  grad_x = grad_y,  t_y = t_x"""

    @staticmethod
    def forward(input):
        return input.view_as(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output

    @staticmethod
    def jvp(ctx, t_input):
        return t_input.view_as(t_input)  # a view, as the forward's output is


def contenders() -> dict[str, Callable[[], object]]:
    x = torch.randn(3, requires_grad=True)
    return {
        "Empty.call(x): dispatch + torch's C apply": lambda: Empty.call(x),
        "Empty.fast_apply(x): torch's C apply alone": lambda: Empty.fast_apply(x),
        "Empty.transformable.apply(x): the twin, no transform": lambda: Empty.transformable.apply(x),
        "check: is_dynamo_compiling()": function.is_dynamo_compiling,
        "check: transforms_active()": function.transforms_active,
        "check: forward_ad._current_level >= 0": lambda: function.forward_ad._current_level >= 0,
        "check: autocast_on_any_device()": autocast_on_any_device,
        "an empty lambda (the timing floor)": lambda: None,
    }


def medians(repeats: int = 21, number: int = 5000) -> dict[str, float]:
    """Microseconds a call of each contender: the median of ``repeats`` turns."""
    calls = contenders()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(min(timeit.repeat(call, number=number, repeat=3, timer=time.thread_time)) / number)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def markdown(us: dict[str, float]) -> str:
    lines = ["| call | us |", "|---|---:|"] + [f"| {name} | {value:.3f} |" for name, value in us.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21, help="turns of the contenders (median over these)")
    parser.add_argument("--number", type=int, default=5000, help="calls a loop")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{date.today()}, torch {torch.__version__}, thread CPU time, one thread, medians of {args.repeats} turns\n")
    print(markdown(medians(args.repeats, args.number)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
