"""Compute lower bounds for the attention and top-k benchmarks on this machine.

Measures the float32 GEMM rate with all of PyTorch's threads (torch.mm, 2048^3, MKL/oneDNN near
the cores' peak) and divides each op's unavoidable GEMM work at the benchmark shape by it: the
least time any float32 implementation needs for forward + backward. A speed target below that
bound cannot be met on this machine in float32. The minimal bytes each op must move are listed
too, for orientation only: with this VM's 480 MiB L3 the benchmark's working sets stay in cache,
so no bandwidth figure gives a safe memory bound, and none is claimed.

Usage: python benchmarks/roofline.py [benchmarks.json] [--out roofline.md]
With a pytest-benchmark JSON from the same machine, the table also shows each op's best baseline
(eager / SDPA), the target time, and reidkern's median.
"""
import argparse
import json
import time

import torch

F32 = 4


def _median_time(fn, repeat=7):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def gemm_flops():
    """float32 GEMM FLOP/s measured now (2048^3 torch.mm, median of 7)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / _median_time(lambda: a @ b)


def template_attention_work(B, H, Nq, L, D, q_batch1, shared_kv):
    """``(GEMM FLOPs, bytes)`` of forward + backward: 6 GEMMs of B*H*Nq*L*D multiply-adds (QKᵀ,
    PV; dP, dV, dQ, dK); reads q, k, v (twice) and writes out, dq, dk, dv."""
    q = (1 if q_batch1 else B) * H * Nq * D
    kv = (1 if shared_kv else B) * H * L * D
    o = B * H * Nq * D
    return 6 * 2 * B * H * Nq * L * D, F32 * (2 * (q + 2 * kv) + 2 * o + o + q + 2 * kv)


def topk_work(B, L, Np, C, k):
    """``(GEMM FLOPs, bytes)`` of forward + backward: the weighted sums are B*Np*k*C
    multiply-adds each way (3 passes); reads tokens twice, writes the parts and the token gradient."""
    tokens, scores, parts = B * L * C, B * L * Np, B * Np * C
    return 3 * 2 * B * Np * k * C, F32 * (2 * (tokens + scores) + 2 * parts + tokens + 2 * scores)


# name in the benchmark JSON → (op, size prefix, floor function, args, target factor, baselines)
CASES = [
    ("template_attention", "dpti_d256", template_attention_work, (64, 8, 6, 128, 32, True, False), 2.0, ("eager", "sdpa")),
    ("template_attention", "dpti_d768", template_attention_work, (64, 8, 8, 192, 96, True, False), 2.0, ("eager", "sdpa")),
    ("template_attention", "lgur_dga", template_attention_work, (64, 6, 192, 400, 64, False, True), 2.0, ("eager", "sdpa")),
    ("template_attention", "lgur_pgu", template_attention_work, (64, 6, 6, 192, 512, True, False), 2.0, ("eager", "sdpa")),
    ("topk_token_aggregate", "cal", topk_work, (64, 162, 6, 2048, 14), 4.0, ("eager",)),
]


def _medians(path):
    out = {}
    for b in json.load(open(path))["benchmarks"]:
        info = b["extra_info"]
        out[(info["op"], info["size"].split()[0], info["provider"])] = b["stats"]["median"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="?", help="pytest-benchmark JSON of the same machine")
    ap.add_argument("--out", help="write the table as markdown to this file")
    args = ap.parse_args()
    flops = gemm_flops()
    lines = [f"float32 GEMM rate ({torch.get_num_threads()} threads, torch.mm 2048^3): {flops / 1e9:.0f} GFLOP/s.",
             "Lower bound = GEMM FLOPs of forward + backward / that rate.", ""]
    med = _medians(args.json) if args.json else {}
    lines += ["| op | size | GEMM work | bytes moved (min) | lower bound | best baseline | target | "
              "reidkern-cpp | target above the bound |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda s: "" if s is None else f"{s * 1e3:,.1f} ms"  # noqa: E731
    for op, size, work_fn, dims, factor, baselines in CASES:
        work, nbytes = work_fn(*dims)
        floor = work / flops
        base = min((med[(op, size, p)] for p in baselines if (op, size, p) in med), default=None)
        ours = med.get((op, size, "reidkern-cpp"))
        target = None if base is None else base / factor
        verdict = "" if target is None else ("no: unreachable in float32" if target < floor else "yes")
        lines.append(f"| {op} | {size} | {work / 1e9:.2f} GFLOP | {nbytes / 2**20:,.0f} MiB | {fmt(floor)} | "
                     f"{fmt(base)} | {fmt(target)} ({factor:g}x) | {fmt(ours)} | {verdict} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        open(args.out, "w").write(text)


if __name__ == "__main__":
    main()
