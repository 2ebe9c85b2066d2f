#!/usr/bin/env python3
"""The PyTorch peer of bench/train_step: the GPT-MoE example's model and
training step (frontends/gpt_moe.cpp, frontends/nn.cpp, frontends/trainer.cpp)
written in PyTorch, timed the same way (CUDA events around each step after
warm-up, the median), in three variants:

  loop        eager, the experts as a per-expert Python loop (torch.where,
              index_add_: the Hugging Face / makeMoE way)
  grouped_mm  eager, tokens sorted by expert and torch._grouped_mm for both
              expert matmuls
  compile     torch.compile of the loop model (forward and, through
              AOTAutograd, backward; the optimizer stays eager)

each with bf16 autocast and fused AdamW. The model, as moejit builds it:
  wte [V, D] and wpe [block, D] (normal, init_std), x = wte[idx] + wpe[:T];
  per block (pre-LN): x += c_proj(attn(ln_1(x))), causal softmax attention
  with scale 1/sqrt(Dh) over q|k|v = c_attn(x) (columns [q | k | v], heads
  h*Dh + d); x += moe(ln_2(x)): router logits = ln_2(x) @ router.weight^T in
  f32 (moejit's mixed precision keeps the router in f32), softmax over the
  E experts, top-k, the k weights renormalized to sum 1, expert
  gelu_tanh(x @ w_up[e]) @ w_down[e], the weighted sum; block i is MoE when
  (i + 1) % moe_every == 0, else a GELU MLP of ffn_hidden_size (4 D);
  ln_f, the tied lm head logits = x @ wte^T, cross entropy (mean), plus per
  MoE layer aux_loss_coeff * E * sum_e f_e * mean_t probs[t, e] (f_e the
  share of the T*K routed slots) and z_loss_coeff * mean_t logsumexp^2.
  Init: normal(0, init_std), the residual projections (c_proj, w_down)
  normal(0, init_std / sqrt(2 n_layer)), layer norms ones/zeros (eps 1e-5),
  no biases. AdamW(betas (beta1, beta2), eps 1e-8, fused) in two groups:
  weight decay on matrices and embeddings, none on layer norms and routers;
  global-norm clipping at grad_clip. One fixed random batch (tokens uniform
  in [0, V)), lr fixed at learning_rate.

  python3 bench/torch_train_step.py [--config FILE|default] [--set key=value ...]
      [--variants loop,grouped_mm,compile] [--warmup 10] [--runs 50] [--json FILE]

The config is the JSON file `gpt_moe train --config` takes (default
examples/gpt_moe/configs/config_b.json; 'default': the example's defaults);
keys this script does not implement must keep their default value (an error
names them). Each variant's first and last step losses are printed; the loop and
grouped_mm variants start from the same parameters and batch and run the
same number of steps, so both losses must agree (bf16 noise: 2e-2
relative; exit 1 otherwise).
Output: one line per variant, "torch-train-step: variant=... tok_s=...", and
with --json the numbers bench/compare_train_step.py puts beside train_step's.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_B = "examples/gpt_moe/configs/config_b.json"

# GptMoeConfig's defaults (frontends/config.h) for every key this script reads
# or checks; vocab_size 65 as tinyshakespeare.
DEFAULTS = {
    "vocab_size": 65, "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "ffn_hidden_size": 0,
    "dropout": 0.0, "bias": False, "num_experts": 4, "top_k": 2, "moe_every": 1, "d_expert": 128,
    "activation": "gelu", "router_score": "softmax", "router_order": "softmax_then_topk", "normalize_topk": True,
    "noisy_gating": False, "selection_bias": False, "capacity_factor": 0.0, "shared_expert": False,
    "aux_loss_coeff": 0.01, "z_loss_coeff": 0.001, "entropy_coeff": 0.0, "router_type": "token_choice",
    "expert_dropout": 0.0, "group_size": 0, "attention": "dense", "layer_norm": "pre",
    "position_embedding": "learned", "batch_size": 8, "learning_rate": 2e-3, "weight_decay": 0.1, "beta1": 0.9,
    "beta2": 0.99, "grad_clip": 1.0, "init_std": 0.02, "dtype": "auto", "head_dim": 0,
}
# Keys that must keep their default here (the architecture this script implements).
FIXED = ("dropout", "bias", "activation", "router_score", "router_order", "noisy_gating", "selection_bias",
         "capacity_factor", "shared_expert", "entropy_coeff", "router_type", "expert_dropout", "group_size",
         "attention", "layer_norm", "position_embedding", "head_dim")
# Keys of the training loop that do not change one step.
LOOP_KEYS = ("min_lr", "warmup_iters", "max_iters", "lr_decay_iters", "decay_lr", "eval_interval", "eval_iters",
             "log_interval", "checkpoint_interval", "seed", "bias_update_rate", "att_n_experts", "att_k",
             "rope_theta")


def parse_value(key, text, default):
    if isinstance(default, bool):
        if text not in ("true", "false"):
            raise SystemExit(f"--set {key}={text}: expected true or false")
        return text == "true"
    try:
        return type(default)(text)
    except ValueError:
        raise SystemExit(f"--set {key}={text}: expected a {type(default).__name__}")


def load_config(path, overrides):
    cfg = dict(DEFAULTS)
    label = "default"
    if path != "default":
        if not os.path.exists(path):
            raise SystemExit(f"--config: expected a config file (JSON) or 'default', found '{path}'")
        with open(path) as f:
            for key, value in json.load(f).items():
                if key not in cfg and key not in LOOP_KEYS:
                    raise SystemExit(f"{path}: key '{key}' is not implemented by torch_train_step.py")
                cfg[key] = value
        label = os.path.splitext(os.path.basename(path))[0]
    for text in overrides:
        key, eq, value = text.partition("=")
        if not eq or key not in DEFAULTS:
            raise SystemExit(f"--set '{text}': expected key=value with a key of {sorted(DEFAULTS)}")
        cfg[key] = parse_value(key, value, DEFAULTS[key])
    if cfg["vocab_size"] == 0:
        cfg["vocab_size"] = 65
    for key in FIXED:
        if cfg[key] != DEFAULTS[key]:
            raise SystemExit(f"config: {key}={cfg[key]} is not implemented here (expected {DEFAULTS[key]})")
    if cfg["dtype"] == "f32":
        raise SystemExit("config: dtype f32: this script times bf16 autocast only (expected auto or bf16)")
    if cfg["n_embd"] % cfg["n_head"]:
        raise SystemExit(f"config: n_embd {cfg['n_embd']} is not a multiple of n_head {cfg['n_head']}")
    return cfg, label


def is_moe_layer(cfg, layer):
    return cfg["moe_every"] > 0 and (layer + 1) % cfg["moe_every"] == 0


def flops_per_token(cfg):
    """bench/train_step.cpp's count: 6 x active matmul parameters + 12 L T D."""
    D = cfg["n_embd"]
    hidden = cfg["ffn_hidden_size"] or 4 * D
    active = 0
    for layer in range(cfg["n_layer"]):
        active += 4 * D * D
        if is_moe_layer(cfg, layer):
            active += D * cfg["num_experts"] + cfg["top_k"] * 2 * D * cfg["d_expert"]
        else:
            active += 2 * D * hidden
    active += cfg["vocab_size"] * D
    return 6.0 * active + 12.0 * cfg["n_layer"] * cfg["block_size"] * D


def normal_(tensor, std):
    with torch.no_grad():
        tensor.normal_(0.0, std)
    return tensor


class Experts(nn.Module):
    """The MoE feed-forward of one block: f32 router, softmax top-k, GELU experts."""

    def __init__(self, cfg, proj_std, grouped):
        super().__init__()
        D, E, Fd = cfg["n_embd"], cfg["num_experts"], cfg["d_expert"]
        self.E, self.K, self.grouped = E, cfg["top_k"], grouped
        self.aux_coeff, self.z_coeff, self.normalize = cfg["aux_loss_coeff"], cfg["z_loss_coeff"], cfg["normalize_topk"]
        self.router = nn.Linear(D, E, bias=False)
        normal_(self.router.weight, cfg["init_std"])
        self.w_up = nn.Parameter(normal_(torch.empty(E, D, Fd), cfg["init_std"]))
        self.w_down = nn.Parameter(normal_(torch.empty(E, Fd, D), proj_std))

    def forward(self, x):  # x [N, D] f32 (a layer norm's output)
        with torch.autocast("cuda", enabled=False):
            logits = x.float() @ self.router.weight.t()  # [N, E] f32, as moejit's router
        probs = torch.softmax(logits, dim=-1)
        top, experts = torch.topk(probs, self.K, dim=-1)  # [N, K]
        weights = top / top.sum(-1, keepdim=True) if self.normalize else top
        aux = logits.new_zeros(())
        if self.aux_coeff > 0:
            share = torch.zeros(self.E, device=x.device).scatter_add_(
                0, experts.reshape(-1), torch.ones(experts.numel(), device=x.device)) / experts.numel()
            aux = aux + self.aux_coeff * self.E * (share * probs.mean(0)).sum()
        if self.z_coeff > 0:
            aux = aux + self.z_coeff * torch.logsumexp(logits, dim=-1).square().mean()
        y = self.grouped_experts(x, weights, experts) if self.grouped else self.loop_experts(x, weights, experts)
        return y, aux

    def loop_experts(self, x, weights, experts):
        y = torch.zeros_like(x)
        for e in range(self.E):
            token, slot = torch.where(experts == e)
            h = F.gelu(x[token] @ self.w_up[e], approximate="tanh")  # bf16 under autocast
            y.index_add_(0, token, (h @ self.w_down[e]) * weights[token, slot, None])
        return y

    def grouped_experts(self, x, weights, experts):
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // self.K
        counts = torch.zeros(self.E, dtype=torch.int64, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        xs = x[token].to(torch.bfloat16)
        h = F.gelu(torch._grouped_mm(xs, self.w_up.to(torch.bfloat16), offs=offsets), approximate="tanh")
        ys = torch._grouped_mm(h, self.w_down.to(torch.bfloat16), offs=offsets)
        ys = ys * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, ys)


class Mlp(nn.Module):
    def __init__(self, cfg, proj_std):
        super().__init__()
        D = cfg["n_embd"]
        hidden = cfg["ffn_hidden_size"] or 4 * D
        self.c_fc = nn.Linear(D, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, D, bias=False)
        normal_(self.c_fc.weight, cfg["init_std"])
        normal_(self.c_proj.weight, proj_std)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), None


class Block(nn.Module):
    def __init__(self, cfg, layer, proj_std, grouped):
        super().__init__()
        D = cfg["n_embd"]
        self.H = cfg["n_head"]
        self.ln_1 = nn.LayerNorm(D, eps=1e-5)
        self.c_attn = nn.Linear(D, 3 * D, bias=False)
        self.c_proj = nn.Linear(D, D, bias=False)
        normal_(self.c_attn.weight, cfg["init_std"])
        normal_(self.c_proj.weight, proj_std)
        self.ln_2 = nn.LayerNorm(D, eps=1e-5)
        self.ffn = Experts(cfg, proj_std, grouped) if is_moe_layer(cfg, layer) else Mlp(cfg, proj_std)

    def forward(self, x, B, T):  # x [B*T, D]
        D = x.shape[1]
        qkv = self.c_attn(self.ln_1(x)).view(B, T, 3, self.H, D // self.H)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, Dh]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(B * T, D))
        f, aux = self.ffn(self.ln_2(x))
        return x + f, aux


class GptMoe(nn.Module):
    def __init__(self, cfg, grouped):
        super().__init__()
        V, D = cfg["vocab_size"], cfg["n_embd"]
        proj_std = cfg["init_std"] / math.sqrt(2.0 * cfg["n_layer"])
        self.wte = nn.Embedding(V, D)
        self.wpe = nn.Parameter(normal_(torch.empty(cfg["block_size"], D), cfg["init_std"]))
        normal_(self.wte.weight, cfg["init_std"])
        self.blocks = nn.ModuleList(Block(cfg, i, proj_std, grouped) for i in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(D, eps=1e-5)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = (self.wte(idx) + self.wpe[:T]).reshape(B * T, -1)
        aux_total = None
        for block in self.blocks:
            x, aux = block(x, B, T)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied lm head, bf16 under autocast
        loss = F.cross_entropy(logits.float(), targets.reshape(-1))
        return loss if aux_total is None else loss + aux_total


def adamw(model, cfg):
    """Two groups as frontends/trainer.cpp: decay on matrices and embeddings, none on norms and routers."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (plain if p.dim() < 2 or name.endswith("router.weight") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), eps=1e-8, fused=True)


def time_variant(variant, cfg, idx, targets, seed, warmup, runs):
    torch.manual_seed(seed)  # every variant starts from the same parameters
    model = GptMoe(cfg, grouped=variant == "grouped_mm").cuda()
    opt = adamw(model, cfg)
    params = [p for p in model.parameters()]
    forward = torch.compile(model) if variant == "compile" else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(idx, targets)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        return loss

    first_loss = step().item()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        last = step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    last_loss = last.item()
    del model, opt, forward, params
    torch.cuda.empty_cache()
    return first_loss, last_loss, times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG_B)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--variants", default="loop,grouped_mm,compile")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps after the first (compile: at least 20)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="lead: datasheet dense bf16 (as train_step)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_train_step: no CUDA device", file=sys.stderr)
        return 1
    cfg, label = load_config(args.config, args.overrides)
    B, T, V = cfg["batch_size"], cfg["block_size"], cfg["vocab_size"]
    tokens = B * T
    flops = flops_per_token(cfg)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    idx = torch.randint(0, V, (B, T), device=dev, generator=gen)
    targets = torch.randint(0, V, (B, T), device=dev, generator=gen)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"config: {label}: n_layer {cfg['n_layer']} n_head {cfg['n_head']} n_embd {cfg['n_embd']} block {T} "
          f"batch {B} experts {cfg['num_experts']} top_k {cfg['top_k']} d_expert {cfg['d_expert']} vocab {V}; "
          f"{tokens} tokens per step; {flops / 1e6:.1f} MFLOP per token")
    results = []
    for variant in args.variants.split(","):
        if variant not in ("loop", "grouped_mm", "compile"):
            raise SystemExit(f"--variants: unknown '{variant}' (expected loop, grouped_mm, compile)")
        warmup = max(args.warmup, 20) if variant == "compile" else args.warmup
        first_loss, last_loss, times = time_variant(variant, cfg, idx, targets, args.seed, warmup, args.runs)
        median = times[len(times) // 2]
        tok_s = tokens / (median * 1e-3)
        mfu = 100.0 * tok_s * flops / (args.peak_tflops * 1e12)
        p10, p90 = times[int(0.1 * (len(times) - 1))], times[int(0.9 * (len(times) - 1))]
        print(f"torch-train-step: config={label} variant={variant} first_loss={first_loss:.4f} "
              f"last_loss={last_loss:.4f} median_ms={median:.3f} "
              f"p10_ms={p10:.3f} p90_ms={p90:.3f} tok_s={tok_s:.0f} mfu_pct={mfu:.2f}", flush=True)
        results.append({"variant": variant, "median_ms": median, "p10_ms": p10, "p90_ms": p90, "tokens_per_s": tok_s,
                        "mfu_pct": mfu, "first_loss": first_loss,
                        "last_loss": last_loss, "steps": 1 + warmup + args.runs})
    rc = 0
    by_variant = {r["variant"]: r for r in results}
    if "loop" in by_variant and "grouped_mm" in by_variant:
        # The same parameters, batch and number of steps: the first loss and
        # the last step's loss must agree within bf16 noise.
        loop, grouped = by_variant["loop"], by_variant["grouped_mm"]
        for key in ("first_loss", "last_loss"):
            diff = abs(loop[key] - grouped[key]) / abs(loop[key])
            ok = diff <= 2e-2
            rc = rc if ok else 1
            print(f"check: {key} loop {loop[key]:.5f} vs grouped_mm {grouped[key]:.5f} (after {loop['steps']} steps "
                  f"for last_loss): relative difference {diff:.2e}, tolerance 2e-2: {'ok' if ok else 'FAILED'}")
    if args.json:
        report = {"program": "torch_train_step",
                  "meta": {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": label,
                           "config_values": cfg, "tokens_per_step": tokens, "flops_per_token": flops,
                           "peak_tflops": args.peak_tflops, "warmup": args.warmup, "runs": args.runs},
                  "results": results}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as out:
            json.dump(report, out, indent=1)
        os.replace(tmp, args.json)
    return rc


if __name__ == "__main__":
    sys.exit(main())
