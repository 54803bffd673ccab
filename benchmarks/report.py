"""Turns pytest-benchmark JSON files into a markdown table and a PNG chart.

For each op and size, every provider's median time is shown with its speed-up over the eager
baseline of the same run (the provider named "eager", else the first whose name starts with
"eager") and its peak memory (benchmarks/_common.py: CUDA allocator peak; on CPU the larger of the sampled RSS growth and
torch's CPU allocator peak).

Usage: python benchmarks/report.py RESULT.json [...] [--out DIR]  → DIR/report.md, DIR/speedup.png
"""
import argparse
import json
import os
from collections import defaultdict


def load(paths):
    rows, machine = [], None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = machine or data.get("machine_info", {})
        commit = data.get("commit_info", {})
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            stats = b.get("stats") or {}
            if not stats or "op" not in info:
                continue
            rows.append({
                "op": info["op"], "size": str(info.get("size", "")), "provider": info["provider"],
                "median_s": stats["median"], "iqr_s": stats.get("iqr", 0.0),
                "rounds": stats.get("rounds", 0), "peak_bytes": info.get("peak_bytes"),
                "device": info.get("device", "cpu"), "commit": commit.get("id", "")[:12],
            })
    return rows, machine


def baseline_of(providers):
    if "eager" in providers:
        return "eager"
    eager = [p for p in providers if p.startswith("eager")]
    return eager[0] if eager else None


def table(rows):
    groups = defaultdict(dict)
    for r in rows:
        groups[(r["op"], r["size"])][r["provider"]] = r
    lines = ["| op | size | provider | median | speed-up vs eager | peak memory |",
             "|---|---|---|---:|---:|---:|"]
    speedups = []
    for (op, size), provs in sorted(groups.items()):
        base = baseline_of(list(provs))
        for name, r in sorted(provs.items(), key=lambda kv: kv[1]["median_s"], reverse=True):
            ratio = provs[base]["median_s"] / r["median_s"] if base else None
            if ratio is not None and name != base:
                speedups.append((f"{op}\n{size}", name, ratio))
            mem = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.1f} MiB"
            lines.append(f"| {op} | {size} | {name} | {r['median_s'] * 1e3:,.2f} ms | "
                         f"{'' if ratio is None else f'{ratio:,.2f}x'} | {mem} |")
    return "\n".join(lines), speedups


def chart(speedups, path):
    """Horizontal bars: each reidkern backend's speed-up over eager per op and size (log scale)."""
    try:
        import matplotlib
    except ImportError:  # e.g. the GPU check machine: the table is the result, the chart a view
        print("matplotlib is not installed: no speedup.png")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{g.replace(chr(10), '  ')}  [{p}]", s) for g, p, s in speedups if p.startswith("reidkern")]
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(bars) + 1.2))
    ys = range(len(bars))
    ax.barh(ys, [s for _, s in bars], color=["#3b75af" if s >= 1 else "#c44e52" for _, s in bars])
    ax.axvline(1.0, color="grey", lw=1, ls="--")
    ax.set_yticks(ys, [label for label, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the eager reference (median times, same run; log scale)")
    ax.set_title("reidkern vs eager PyTorch")
    for y, (_, s) in zip(ys, bars):
        ax.text(s, y, f" {s:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    rows, machine = load(args.json)
    md, speedups = table(rows)
    os.makedirs(args.out, exist_ok=True)
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", ""))
    header = (f"# reidkern benchmarks\n\nMachine: {machine.get('node', '')} {cpu}, "
              f"Python {machine.get('python_version', '')}; commit "
              f"{rows[0]['commit'] if rows else ''}\n\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(header + md + "\n")
    if chart(speedups, os.path.join(args.out, "speedup.png")):
        print(f"wrote {os.path.join(args.out, 'speedup.png')}")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
