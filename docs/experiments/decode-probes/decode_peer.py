"""Probe (forty-eighth session): the torch peers at decode sizes (few tokens), which
torch_mhc.py does not time. Its math and timer (copy ../shared/peers/torch_mhc.py beside this
file), at T = 1, 16 and 256 (n = 4, D = 2560): eager, torch.compile and torch.compile with CUDA
graphs (mode="reduce-overhead"), mhc_pre forward and mhc_post forward. Pair it with
decode_wall.rs (mhc's time a call, host included) and `mhc bench --shape 1,4,2560 ...` (GPU).
Usage: python3 decode_peer.py [--json FILE]"""
import json, math, sys, os
import torch
sys.path.insert(0, os.path.dirname(__file__))
from torch_mhc import pre_fwd, post_fwd, bench

dev = "cuda"
torch.manual_seed(0)
print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
rows = []
for T, n, D in [(1, 4, 2560), (16, 4, 2560), (256, 4, 2560)]:
    M, K = n * n + 2 * n, n * D
    x = torch.randn(T, n, D, device=dev).to(torch.bfloat16)
    phi = torch.randn(M, K, device=dev) / math.sqrt(K)
    alpha = torch.tensor([1.1, 0.9, 1.05], device=dev)
    bias = torch.randn(M, device=dev) * 0.1
    gamma = 1 + 0.1 * torch.randn(n, D, device=dev)
    y = torch.randn(T, D, device=dev).to(torch.bfloat16)
    comb = torch.rand(T, n, n, device=dev)
    hpost = torch.rand(T, n, device=dev)
    for name, wrap in [("eager", lambda f: f),
                       ("compile", lambda f: torch.compile(f, dynamic=False)),
                       ("compile-graphs", lambda f: torch.compile(f, dynamic=False, mode="reduce-overhead"))]:
        f_pre, f_post = wrap(pre_fwd), wrap(post_fwd)
        r = dict(T=T, n=n, D=D, impl=name,
                 pre_fwd=bench(lambda: f_pre(x, phi, alpha, bias, gamma), 200),
                 post_fwd=bench(lambda: f_post(y, x, hpost, comb), 200))
        rows.append(r)
        print(f"T={T} n={n} D={D} {name:14s} pre_fwd {r['pre_fwd']:8.1f} us  post_fwd {r['post_fwd']:8.1f} us", flush=True)
if len(sys.argv) > 2 and sys.argv[1] == "--json":
    json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), open(sys.argv[2], "w"), indent=1)
