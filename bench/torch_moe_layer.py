#!/usr/bin/env python3
"""The PyTorch peers of bench/moe_layer_bench: one MoE layer (router matmul,
softmax top-k with renormalized weights, GELU experts, weighted combine),
forward and forward+backward, in bf16, timed with CUDA events after warm-up
on random data (median of --iters runs), for the shapes of issue 10:

  loop         the per-expert Python loop (the Hugging Face / makeMoE way)
  grouped_mm   tokens sorted by expert, torch._grouped_mm for both expert
               matmuls (the fastest eager PyTorch form)
  dense        the dense floor: gelu(x @ w1) @ w2 over the same T*K rows
               (what the expert matmuls would cost with no routing at all)

The loss is mean(y * target) so the backward sees a random dy. Gradients are
taken for x, w_router, w_up and w_down, as in moejit's layer case.

  python3 bench/torch_moe_layer.py [--shapes T,D,F,E,K;...] [--iters 20] [--json FILE]

Prints one line per (shape, variant, pass) and, with --json, the numbers.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

SHAPES = "16384,384,1536,8,2;16384,768,3072,8,2;8192,4096,14336,8,2;24576,1536,256,128,8"


def timed(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def route(x, w_router, top_k):
    logits = x @ w_router
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
    return weights, experts


def layer_loop(x, w_router, w_up, w_down, top_k):
    weights, experts = route(x, w_router, top_k)
    y = torch.zeros_like(x)
    for e in range(w_up.shape[0]):
        token, slot = torch.where(experts == e)
        if token.numel() == 0:
            continue
        h = F.gelu(x[token] @ w_up[e], approximate="tanh")
        y.index_add_(0, token, (h @ w_down[e]) * weights[token, slot, None])
    return y


def layer_grouped_mm(x, w_router, w_up, w_down, top_k):
    weights, experts = route(x, w_router, top_k)
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=w_up.shape[0])
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    xs = x[token]
    h = F.gelu(torch._grouped_mm(xs, w_up, offs=offsets), approximate="tanh")
    ys = torch._grouped_mm(h, w_down, offs=offsets)
    ys = ys * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, token, ys)


def layer_dense(xr, w1, w2):
    return F.gelu(xr @ w1, approximate="tanh") @ w2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=SHAPES, help="T,D,F,E,K separated by ';'")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--variants", default="loop,grouped_mm,dense")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_moe_layer: no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for text in args.shapes.split(";"):
        T, D, Fd, E, K = (int(v) for v in text.split(","))
        label = f"T{T} D{D} F{Fd} E{E} K{K}"
        flops_fwd = 4.0 * T * K * D * Fd  # the two expert matmuls (router not counted)
        x = torch.randn(T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        target = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
        w_router = (torch.randn(D, E, device=dev) / D**0.5).to(torch.bfloat16).requires_grad_()
        w_up = (torch.randn(E, D, Fd, device=dev) / D**0.5).to(torch.bfloat16).requires_grad_()
        w_down = (torch.randn(E, Fd, D, device=dev) / Fd**0.5).to(torch.bfloat16).requires_grad_()
        params = [x, w_router, w_up, w_down]
        for variant in args.variants.split(","):
            if variant == "loop":
                fn = lambda: layer_loop(x, w_router, w_up, w_down, K)
            elif variant == "grouped_mm":
                fn = lambda: layer_grouped_mm(x, w_router, w_up, w_down, K)
            elif variant == "dense":
                xr = torch.randn(T * K, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
                w1 = w_up[0].detach().clone().requires_grad_()
                w2 = w_down[0].detach().clone().requires_grad_()
                target_r = torch.randn(T * K, D, device=dev, dtype=torch.bfloat16)
                fn = lambda: layer_dense(xr, w1, w2)
            else:
                raise SystemExit(f"--variants: unknown '{variant}' (expected loop, grouped_mm, dense)")
            tgt = target_r if variant == "dense" else target
            ps = [xr, w1, w2] if variant == "dense" else params

            def fwd():
                with torch.no_grad():
                    fn()

            def fwd_bwd():
                loss = (fn().float() * tgt.float()).mean()
                torch.autograd.grad(loss, ps)

            for name, f, flops in (("fwd", fwd, flops_fwd), ("fwd+bwd", fwd_bwd, 3 * flops_fwd)):
                ms = timed(f, args.iters)
                tflops = flops / ms / 1e9
                print(f"torch {label:28s} {variant:11s} {name:8s} {ms:9.3f} ms  {tflops:6.1f} TFLOP/s")
                results.append({"shape": label, "variant": variant, "pass": name, "median_ms": ms, "tflops": tflops})
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
