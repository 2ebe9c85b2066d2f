"""PyTorch's scaled_dot_product_attention (flash backend, causal, bf16) at
the shapes of bench/attention_probe.cu, with the same printout, so that one
device call measures both:

    ./attention_probe && python3 bench/torch_attention.py

CUDA events, 5 warm-ups, median of 20. FLOPs (causal): forward
2 * 2 * B * H * T^2 * D / 2, backward 2.5 x the forward. Then the GPU time
of each kernel of forward + backward (torch.profiler, mean of 10 calls),
beside the probe's per-kernel line.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(64, 6, 256, 64), (16, 6, 1024, 64), (16, 6, 1024, 128), (2, 6, 4096, 64)]


def median_us(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(25):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end) * 1e3)
    times.sort()
    return times[len(times) // 2]


def kernel_times_us(fn, calls=10):
    """GPU time per call of each kernel fn launches, longest first (kernels under 1 us left out)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = e.device_time_total / calls if hasattr(e, "device_time_total") else e.cuda_time_total / calls
        if us >= 1.0 and e.key and not e.key.startswith("aten::"):
            rows.append((e.key, us))
    rows.sort(key=lambda r: -r[1])
    return rows


def main():
    torch.manual_seed(0)
    for B, H, T, D in SHAPES:
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dout = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            def fwd():
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def fwd_bwd():
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.autograd.grad(out, (q, k, v), dout)

            t_fwd, t_both = median_us(fwd), median_us(fwd_bwd)
            kernels = kernel_times_us(fwd_bwd)
        flops = 2.0 * 2.0 * B * H * T * T * D / 2.0
        print(f"torch sdpa flash B{B} H{H} T{T} D{D}: fwd {t_fwd:8.1f} us {flops / t_fwd * 1e-6:6.1f} TFLOP/s | "
              f"fwd+bwd {t_both:8.1f} us {3.5 * flops / t_both * 1e-6:6.1f} TFLOP/s")
        print("    kernels: " + " | ".join(f"{name[:60]} {us:.1f} us" for name, us in kernels))


if __name__ == "__main__":
    main()
