"""The top entries of a py-spy raw (folded) profile: ``python bench/spy_top.py FILE [N]``.

Prints the functions by share of samples spent in them (self) and under them (total), and
the threads' shares. A folded line is ``frame;frame;...;frame count`` (py-spy ``--format
raw``); a frame is ``function (file:line)``; the first frame names the process/thread.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_LINE = re.compile(r":\d+\)$")


def _func(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def top(path: str, n: int = 15) -> str:
    self_: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            samples += k
            frames = stack.split(";")
            thread = next((f for f in frames if f.startswith("thread ")), frames[0])
            threads[thread.strip()] += k
            funcs = [_func(f) for f in frames if "(" in f]
            if funcs:
                self_[funcs[-1]] += k
            for f in set(funcs):
                total[f] += k
    out = [f"{path}: {samples} samples"]
    for title, c in (("threads", threads), ("self", self_), ("total", total)):
        out.append(f"-- {title}")
        for f, k in c.most_common(n):
            out.append(f"{100 * k / max(1, samples):5.1f}%  {f}")
    return "\n".join(out)


if __name__ == "__main__":
    print(top(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
