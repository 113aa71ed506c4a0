#!/usr/bin/env python3
"""Where a CUDA-graph decode step's time goes, from `bench-one-batch --kernel-timeline`.

Reads the CSV that flag writes (CUPTI concurrent-kernel records: start, end, stream,
graph, graph node, name; one row per kernel, graph replays included). A decode step is
the kernels after one argmax up to the next (the engine samples eagerly after replaying
the step's graph) that include graph-replayed ones; the median step by span is printed as
a Markdown table: per kind of kernel its calls, median and total microseconds, then the
step's span and the graph replay's, the kernels' summed time, the idle gaps between
consecutive kernels and their overlap (programmatic dependent launch). A second table
gives, per pair of consecutive kinds over every step, the median start of the second
kernel relative to the end of the first (negative where it launched early behind it, PDL)
and of its end (what it adds to the step's critical path). A third gives the same per
position within a layer (middle layers only), which tells apart kernels of one kind.

    python3 scripts/timeline_step.py out/timeline_w8a8.csv
"""

import collections
import csv
import statistics
import sys

from ncu_step import role


def load(path):
    """(start ns, end ns, graph id, kernel name) per kernel, in start order."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted((int(r["start_ns"]), int(r["end_ns"]), int(r["graph"]), r["name"]) for r in rows)


def decode_steps(kernels):
    """The kernels of each decode step: after one argmax up to the next, with a graph replay."""
    marks = [i for i, k in enumerate(kernels) if "argmax" in k[3]]
    steps = [kernels[a + 1 : b + 1] for a, b in zip(marks, marks[1:])]
    return [s for s in steps if any(k[2] != 0 for k in s)]


def report(path):
    steps = decode_steps(load(path))
    if not steps:
        print(f"{path}: no decode step (two argmax kernels around a graph replay)")
        return
    spans = sorted((s[-1][1] - s[0][0], i) for i, s in enumerate(steps))
    span, at = spans[len(spans) // 2]
    step = steps[at]
    busy = sum(end - start for start, end, _, _ in step)
    groups = collections.defaultdict(list)
    for start, end, _, name in step:
        groups[role(name)].append((end - start) / 1e3)
    # Between consecutive kernels: idle time (> 0) or overlap (< 0).
    deltas = [b[0] - a[1] for a, b in zip(step, step[1:])]
    gaps = [d for d in deltas if d > 0]
    overlaps = [-d for d in deltas if d < 0]
    replayed = [k for k in step if k[2] != 0]
    replay_span = max(k[1] for k in replayed) - replayed[0][0]
    print(
        f"{path}: median of {len(steps)} decode steps, {len(step)} kernels ({len(replayed)} from the graph), "
        f"span {span / 1e3:.0f} us (graph replay {replay_span / 1e3:.0f} us)"
    )
    print("| kernel | calls | median us | total us | share of span |")
    print("|---|---:|---:|---:|---:|")
    for label, times in sorted(groups.items(), key=lambda g: -sum(g[1])):
        share = 100 * sum(times) / (span / 1e3)
        print(f"| {label} | {len(times)} | {statistics.median(times):.1f} | {sum(times):.0f} | {share:.1f}% |")
    print(f"| kernels' sum | | | {busy / 1e3:.0f} | {100 * busy / span:.1f}% |")
    gap_median = statistics.median(gaps) / 1e3 if gaps else 0.0
    print(f"| idle gaps ({len(gaps)}) | | {gap_median:.2f} | {sum(gaps) / 1e3:.0f} | {100 * sum(gaps) / span:.1f}% |")
    print(f"| overlap ({len(overlaps)}) | | | -{sum(overlaps) / 1e3:.0f} | -{100 * sum(overlaps) / span:.1f}% |")
    print()
    # The end-to-end column is what the second kernel adds to the step's critical path.
    print("| kernel | next kernel | pairs | median start after its end, us | earliest | median end after its end, us |")
    print("|---|---|---:|---:|---:|---:|")
    for (first, second), pairs in sorted(pair_deltas(steps).items(), key=lambda p: -len(p[1])):
        starts = [s for s, _ in pairs]
        ends = [e for _, e in pairs]
        print(
            f"| {first} | {second} | {len(pairs)} | {statistics.median(starts):.2f} | {min(starts):.2f} "
            f"| {statistics.median(ends):.2f} |"
        )
    layer_table(steps)


def is_layer_norm(kind):
    """Whether a kernel kind is a layer's input norm (not the q/k norm inside attention)."""
    return "RMSNorm" in kind and not kind.startswith("q/k")


def layer_table(steps):
    """Per position in a middle layer (the first and last two skipped), over every step: the
    kernel, the median it adds to the critical path (its end minus the previous kernel's end)
    and its median duration. A layer starts at the norm before its qkv GEMM: the last
    residual norm within four kernels before each attention kernel."""
    added = collections.defaultdict(list)
    ran = collections.defaultdict(list)
    for step in steps:
        att = [i for i, k in enumerate(step) if role(k[3]).startswith("attention (")]
        starts = []
        for a in att:
            norms = [i for i in range(max(a - 4, 1), a) if is_layer_norm(role(step[i][3]))]
            starts.append(norms[-1] if norms else a)
        for first, end in zip(starts[2:-3], starts[3:-2]):
            for i in range(first, end):
                key = (i - first, role(step[i][3]))
                added[key].append((step[i][1] - step[i - 1][1]) / 1e3)
                ran[key].append((step[i][1] - step[i][0]) / 1e3)
    if not added:
        return
    most = max(len(v) for v in added.values())
    rows = sorted(k for k, v in added.items() if 2 * len(v) >= most)
    total = sum(statistics.median(added[k]) for k in rows)
    print()
    print("| # | kernel in a middle layer | adds to the critical path, us | runs for, us |")
    print("|---:|---|---:|---:|")
    for pos, kind in rows:
        print(f"| {pos} | {kind} | {statistics.median(added[(pos, kind)]):.2f} | {statistics.median(ran[(pos, kind)]):.2f} |")
    print(f"| | layer | {total:.1f} | |")


def pair_deltas(steps):
    """Per (kind, next kind), every step: the next kernel's start and end minus the first's end (us)."""
    deltas = collections.defaultdict(list)
    for step in steps:
        for a, b in zip(step, step[1:]):
            deltas[(role(a[3]), role(b[3]))].append(((b[0] - a[1]) / 1e3, (b[1] - a[1]) / 1e3))
    return deltas


if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p)
