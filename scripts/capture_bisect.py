"""Bisects a CUDA-graph replay mismatch of AdamW8bit twins (benchmarks/results/h200-2026-11-26/capture_bisect.log):
all 24 combinations of paged state, side-stream warm-up, page-out/in before the capture, a failed
capture of the prefetch op, and a synchronize before the capture; prints max |a - b| per replay.

    python scripts/capture_bisect.py
"""
import itertools

import torch

import adamw8


def run(paged, side_warm, page_cycle, failed_capture, sync_before):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(1024, 512, device="cuda") * 0.1)]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    cls = adamw8.PagedAdamW8bit if paged else adamw8.AdamW8bit
    oa, ob = cls(a, lr=1e-2), cls(b, lr=1e-2)
    for p in a + b:
        p.grad = torch.randn_like(p)
    b[0].grad.copy_(a[0].grad)
    if side_warm:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            oa.step()
        torch.cuda.current_stream().wait_stream(s)
    else:
        oa.step()
    ob.step()
    if page_cycle:
        oa.page_out()
        oa.page_in()
    if sync_before:
        torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        oa.step()
    if failed_capture:
        try:
            g2 = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g2):
                torch.ops.adamw8._prefetch([oa.state[a[0]]["state1"]], True)
        except RuntimeError:  # cudaMemPrefetchAsync cannot be captured: refused, by design
            pass
    diffs = []
    for lr in (1e-2, 5e-3, 2e-3):
        for o in (oa, ob):
            o.param_groups[0]["lr"] = lr
        g.replay()
        ob.step()
        torch.cuda.synchronize()
        diffs.append((a[0] - b[0]).abs().max().item())
    return diffs

for combo in itertools.product([False, True], repeat=5):
    if combo[0] is False and combo[2]:
        continue
    try:
        d = run(*combo)
    except Exception as ex:  # noqa: BLE001
        d = repr(ex)[:120]
    print("paged=%d side_warm=%d page_cycle=%d failed_capture=%d sync=%d" % combo, d, flush=True)
