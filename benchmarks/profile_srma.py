"""Profile one SRMA-Mamba training step (batch 2, 224x224x64, bf16) and print the top GPU kernels."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from SRMASegmenterLib.model import SRMAMamba

dev = torch.device("cuda")
model = SRMAMamba().to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(2, 1, 224, 224, 64, device=dev)
y = (torch.rand(2, 1, 224, 224, 64, device=dev) > 0.5).float()
torch.backends.cudnn.benchmark = True


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = model(x)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o.float(), y) for o in outs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(3):
    step()
torch.cuda.synchronize()
print(f"train step (batch 2, bf16): {(time.perf_counter() - t0) / 3 * 1e3:.0f} ms", flush=True)
with torch.inference_mode():
    model.eval()
    xi = x[:1]
    for _ in range(3):
        model(xi)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        model(xi)
    torch.cuda.synchronize()
    print(f"forward per patch (fp32): {(time.perf_counter() - t0) / 5 * 1e3:.1f} ms", flush=True)
    model.train()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
