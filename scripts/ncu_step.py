#!/usr/bin/env python3
"""One decode step's kernels from an Nsight Compute CSV, grouped by role.

Reads the CSVs that gpu-test.sh's `profile` group writes
(`ncu --metrics gpu__time_duration.sum --csv --page raw`, one bench-one-batch
run with graphs off) and prints a Markdown table per file: calls, median and
total microseconds and share of the step for each kind of kernel. A decode
step is the kernels after the second-to-last argmax up to the last one.

    python3 scripts/ncu_step.py out/ncu_decode_w8a8.csv out/ncu_decode_bf16.csv
"""

import collections
import csv
import statistics
import sys

# Substrings of the kernel name (demangled as ncu prints it, or mangled as CUPTI records
# it) -> role, first match wins.
ROLES = [
    (("stream_kernel",), "W8A8 GEMM, stream_m16"),
    (("stream_linear",), "bf16 GEMM, stream_linear"),
    (("cutlass::Kernel2", "cutlass7Kernel2"), "W8A8 GEMM, CUTLASS sm80"),
    (("cutlass",), "W8A8 GEMM, CUTLASS sm90"),
    (("skinny",), "W8A8 GEMM, skinny"),
    (("split::decode_kernel", "5split13decode_kernel"), "attention (split-KV, ours)"),
    (("BatchPrefillWithPagedKV",), "attention (FlashInfer tensor cores)"),
    (("BatchDecode",), "attention (FlashInfer CUDA cores)"),
    (("MergeStates",), "attention merge (split KV)"),
    (("fused_add_rms_norm_quant",), "add + RMSNorm + int8 quant"),
    (("fused_add_rms_norm",), "add + RMSNorm"),
    (("rms_norm",), "RMSNorm"),
    (("quant_kernel",), "int8 quant of a GEMM input"),
    (("qk_norm_rope",), "q/k RMSNorm + RoPE + KV store"),
    (("silu_and_mul_quant",), "SiLU x up + int8 quant"),
    (("silu_and_mul",), "SiLU x up"),
    (("embedding",), "embedding"),
    (("argmax",), "argmax"),
    (("feed_tokens",), "feed_tokens (overlap scheduling)"),
]


def load(path):
    """(kernel name, microseconds) per launch, in launch order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header_at = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    header = rows[header_at]
    name, time = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    # The row after the header holds units (ns).
    return [(r[name], float(r[time].replace(",", "")) / 1e3) for r in rows[header_at + 2 :] if len(r) > time]


def role(kernel):
    for keys, label in ROLES:
        if any(key in kernel for key in keys):
            return label
    return "cuBLAS (" + kernel.split("(")[0][:40] + ")"


def main(paths):
    for path in paths:
        kernels = load(path)
        argmax = [i for i, (k, _) in enumerate(kernels) if "argmax" in k]
        if len(argmax) < 2:
            print(f"{path}: fewer than two argmax launches, no whole decode step")
            continue
        step = kernels[argmax[-2] + 1 : argmax[-1] + 1]
        total = sum(us for _, us in step)
        groups = collections.defaultdict(list)
        for k, us in step:
            groups[role(k)].append(us)
        print(f"{path}: {len(step)} kernels, {total:.0f} us")
        print("| kernel | calls | median us | total us | share |")
        print("|---|---:|---:|---:|---:|")
        for label, times in sorted(groups.items(), key=lambda g: -sum(g[1])):
            share = 100 * sum(times) / total
            print(f"| {label} | {len(times)} | {statistics.median(times):.1f} | {sum(times):.0f} | {share:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
