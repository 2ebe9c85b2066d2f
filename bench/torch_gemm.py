#!/usr/bin/env python3
"""torch.matmul (bf16, random data) at 4096^3 and 8192^3, A row-major and B
either [N, K] transposed ("tn") or [K, N] ("nn"): the peer of
bench/gemm_sm90_probe.cu, run in the same device call. CUDA events, 5
warm-ups, median of 30."""
import torch, sys
torch.manual_seed(0)
def bench(M, N, K, layout):
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(K, N, device="cuda", dtype=torch.bfloat16) if layout == "nn" else torch.randn(N, K, device="cuda", dtype=torch.bfloat16).t()
    for _ in range(5): c = a @ b
    torch.cuda.synchronize()
    ts = []
    for _ in range(30):
        e0 = torch.cuda.Event(enable_timing=True); e1 = torch.cuda.Event(enable_timing=True)
        e0.record(); c = a @ b; e1.record(); e1.synchronize(); ts.append(e0.elapsed_time(e1))
    ts.sort(); med = ts[len(ts)//2]
    print(f"torch {M}x{N}x{K} {layout}: {med:.3f} ms, {2*M*N*K/med/1e9:.0f} TFLOP/s")
for s in (4096, 8192):
    for l in ("tn", "nn"):
        bench(s, s, s, l)
