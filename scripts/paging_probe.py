"""What page-out does to the device's free memory (issue: paged optimizers), on a GPU:

    python scripts/paging_probe.py [GiB]

Allocates managed memory, touches it on the GPU, pages it out and in, and reports
torch.cuda.mem_get_info at each point; then checks whether ordinary allocations
(cudaMalloc through torch's allocator) can use the memory that page-out gave up, and the
memory of a freed managed tensor (reported free memory did not come back after the free on an
H200, driver 580: benchmarks/RESULTS.md)."""

from __future__ import annotations

import sys

import torch

import adamw8  # noqa: F401


def beyond_free(extra: int) -> str:
    """Allocate (through torch's allocator, i.e. cudaMalloc) `extra` bytes more than reported free."""
    torch.cuda.empty_cache()
    f = torch.cuda.mem_get_info()[0]
    try:
        x = torch.empty(f + extra, dtype=torch.uint8, device="cuda")
        x.fill_(0)
        torch.cuda.synchronize()
        del x
        out = f"ok: {(f + extra) / 2**30:.1f} GiB allocated with {f / 2**30:.1f} GiB reported free"
    except Exception as ex:  # noqa: BLE001
        out = "refused: " + str(ex).splitlines()[0][:160]
    torch.cuda.empty_cache()
    return out


def main(gib: int = 4) -> None:
    def free() -> int:
        return torch.cuda.mem_get_info()[0]

    sync = torch.cuda.synchronize
    n = gib << 30
    rows = [("start", free())]
    t = torch.ops.adamw8._managed_empty([n], torch.uint8, torch.device("cuda"))
    rows.append(("managed allocated", free()))
    t.fill_(1)
    sync()
    rows.append(("touched on the GPU", free()))
    resident = beyond_free(n // 2)
    torch.ops.adamw8._prefetch([t], False)
    sync()
    rows.append(("prefetched to host", free()))
    outcome = beyond_free(n // 2)
    rows.append(("after the ordinary allocation", free()))
    torch.ops.adamw8._prefetch([t], True)
    sync()
    rows.append(("prefetched back to the GPU", free()))
    ok = bool((t == 1).all())
    del t
    sync()
    rows.append(("managed freed", free()))
    after_free = beyond_free(n // 2)
    base = rows[0][1]
    for label, fr in rows:
        print(f"{label:32s} free {fr / 2**30:8.2f} GiB  ({(fr - base) / 2**30:+.2f})")
    print("ordinary allocation beyond reported free, state resident:", resident)
    print("ordinary allocation beyond reported free, after page-out:", outcome)
    print("ordinary allocation beyond reported free, managed memory freed:", after_free)
    print("values intact after the round trip:", ok)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
