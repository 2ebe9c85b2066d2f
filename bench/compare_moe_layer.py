#!/usr/bin/env python3
"""Side by side: bench/moe_layer_bench (moejit) and bench/torch_moe_layer.py
(PyTorch), from their JSON files of one device call.

  python3 bench/compare_moe_layer.py moe_layer_bench.json torch_moe.json
"""
import json
import sys


def main():
    moejit = json.load(open(sys.argv[1]))["results"]
    torch = json.load(open(sys.argv[2]))["results"]
    peers = {(r["shape"], r["variant"], r["pass"]): r["median_ms"] for r in torch}
    print(f"{'shape':30s} {'pass':8s} {'moejit ms':>10s} {'grouped_mm':>10s} {'loop':>9s} {'dense':>8s} {'vs grouped_mm':>14s}")
    for r in moejit:
        # torch labels: "T16384 D384 F1536 E8 K2"; moejit's label is the same text
        key = (r["shape"], r["pass"])
        g = peers.get((key[0], "grouped_mm", key[1]))
        loop = peers.get((key[0], "loop", key[1]))
        dense = peers.get((key[0], "dense", key[1]))
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        ratio = f"{g / r['median_ms']:.2f}x" if g else "-"
        print(f"{r['shape']:30s} {r['pass']:8s} {r['median_ms']:10.3f} {fmt(g):>10s} {fmt(loop):>9s} {fmt(dense):>8s} {ratio:>14s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
