"""Paged optimizer state (adamw8/paging.py, csrc/cuda/paging_cuda.cpp).

On the CPU the optimizer's paging logic runs against a stand-in allocator (``StandInPager``:
ordinary memory that records what is allocated and moved): which state is paged, when it is
paged in and out, compiled steps, copies, checkpoints to and from unpaged optimizers, and that
nothing is kept alive.  Results are compared with the unpaged optimizer, bit for bit.  The
tests marked ``gpu`` run the real thing (CUDA unified memory) and are skipped without CUDA.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

import adamw8
from adamw8 import paging

CUDA = torch.cuda.is_available()


class StandInPager(paging.Pager):
    """Ordinary CPU memory standing in for managed memory: records allocations and prefetches,
    and where each buffer is (``where[ptr]``: "device" or "host")."""

    device_type = "cpu"

    def __init__(self):
        self.allocs = []  # weakrefs of the allocated buffers
        self.ptrs = set()
        self.log = []  # ("prefetch", to_device, n buffers, note) in call order
        self.where = {}
        self.note = lambda: None

    def empty(self, numel, dtype, device):
        t = torch.empty(numel, dtype=dtype, device=device)
        self.allocs.append(weakref.ref(t))
        self.ptrs.add(t.untyped_storage().data_ptr())
        self.where[t.untyped_storage().data_ptr()] = "device"
        return t

    def prefetch(self, tensors, to_device):
        for t in tensors:
            assert t.untyped_storage().data_ptr() in self.ptrs, "prefetch of a buffer this pager did not allocate"
            self.where[t.untyped_storage().data_ptr()] = "device" if to_device else "host"
        self.log.append(("prefetch", to_device, len(tensors), self.note()))

    def is_paged(self, t):
        return t.untyped_storage().data_ptr() in self.ptrs

    def live(self) -> int:
        return sum(r() is not None for r in self.allocs)


@pytest.fixture
def pager():
    p = StandInPager()
    paging.set_pager(p)
    yield p
    paging.set_pager(None, "cpu")


BIG, SMALL = (400, 300), (100, 50)  # 120,000 elements (paged) and 5,000 (not)


def params(seed=0, shapes=(BIG, SMALL, (1000, 120))):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]


def set_grads(ps, step):
    for i, p in enumerate(ps):
        p.grad = torch.sin(p.detach() * (step + 1) + i)


CLASSES = [adamw8.PagedAdamW8bit, adamw8.PagedAdamW32bit, adamw8.PagedAdamW]
UNPAGED = {adamw8.PagedAdamW8bit: adamw8.AdamW8bit, adamw8.PagedAdamW32bit: adamw8.AdamW32bit,
           adamw8.PagedAdamW: adamw8.AdamW}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_state_of_large_parameters_is_paged_and_small_ones_are_not(pager, cls, amsgrad):
    ps = params()
    opt = cls(ps, lr=1e-3, amsgrad=amsgrad)
    keys = ("state1", "state2") + (("state3",) if amsgrad else ())
    for p in ps:
        st = opt.state[p]
        for k in keys:
            assert pager.is_paged(st[k]) == (p.numel() >= paging.PAGE_MIN_NUMEL), (p.shape, k)
        for k in ("absmax1", "absmax2", "step"):
            if k in st:
                assert not pager.is_paged(st[k])
    paged = [p for p in ps if p.numel() >= paging.PAGE_MIN_NUMEL]
    per_elem = sum(opt.state[paged[0]][k].element_size() for k in keys)
    assert opt.paged_bytes() >= sum(p.numel() for p in paged) * per_elem
    assert not any(pager.is_paged(t) for t in UNPAGED[cls](params(), lr=1e-3).state[ps[0]].values()
                   if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_paged_equals_unpaged_bit_for_bit_through_page_out_and_in(pager, cls):
    a, b = params(), params()
    opt_a, opt_b = cls(a, lr=1e-2, weight_decay=0.1), UNPAGED[cls](b, lr=1e-2, weight_decay=0.1)
    for step in range(6):
        set_grads(a, step)
        set_grads(b, step)
        if step in (2, 4):
            opt_a.page_out()
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for x, y in zip(a, b):
        for k, v in opt_a.state[x].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, opt_b.state[y][k]), k


def test_page_out_moves_every_paged_buffer_and_the_next_step_pages_in_first(pager):
    ps = params()
    opt = adamw8.PagedAdamW8bit(ps, lr=1e-2)
    set_grads(ps, 0)
    opt.step()
    assert pager.log == []  # resident: no prefetch at all
    opt.page_out()
    nbuf = sum(len(b.paged_buffers()) for b in opt._paged())
    assert nbuf >= 2 and pager.log == [("prefetch", False, nbuf, None)]
    assert set(pager.where.values()) == {"host"}
    before = ps[0].detach().clone()
    pager.note = lambda: torch.equal(ps[0].detach(), before)  # has the step touched the parameter yet?
    set_grads(ps, 1)
    opt.step()
    assert pager.log[1] == ("prefetch", True, nbuf, True)  # paged in before the kernels ran
    assert set(pager.where.values()) == {"device"}
    opt.step()
    assert len(pager.log) == 2  # resident again: no further prefetch
    opt.page_in()  # explicit page-in is always allowed
    assert pager.log[-1][:3] == ("prefetch", True, nbuf)


def test_an_unpaged_optimizer_has_nothing_to_page(pager):
    opt = adamw8.AdamW8bit(params(), lr=1e-3)
    opt.page_out()
    opt.page_in()
    assert pager.log == [] and opt.paged_bytes() == 0


def test_compiled_step_with_paged_state(pager):
    """fullgraph compile: the same bits as eager; the compiled step never prefetches (page_in()
    before it after a page_out(), or the pages fault in)."""
    a, b = params(), params()
    opt_a, opt_b = adamw8.PagedAdamW8bit(a, lr=1e-2), adamw8.PagedAdamW8bit(b, lr=1e-2)
    torch._dynamo.reset()
    step = torch.compile(opt_a.step, fullgraph=True)
    for i in range(3):
        set_grads(a, i)
        set_grads(b, i)
        step()
        opt_b.step()
    n = len(pager.log)
    opt_a.page_out()
    opt_a.page_in()
    set_grads(a, 3)
    step()
    assert pager.log[n:] == [("prefetch", False, 2, None), ("prefetch", True, 2, None)]
    set_grads(b, 3)
    opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    torch._dynamo.reset()


@pytest.mark.parametrize("direction", ["paged->unpaged", "unpaged->paged", "paged->paged"])
def test_checkpoints_between_paged_and_unpaged(pager, direction):
    src_paged, dst_paged = direction.split("->")
    cls = {"paged": adamw8.PagedAdamW8bit, "unpaged": adamw8.AdamW8bit}
    a = params()
    opt_a = cls[src_paged](a, lr=1e-2)
    for i in range(3):
        set_grads(a, i)
        opt_a.step()
    sd = copy.deepcopy(opt_a.state_dict())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = cls[dst_paged](b, lr=1e-2)
    opt_b.load_state_dict(sd)
    assert pager.is_paged(opt_b.state[b[0]]["state1"]) == (dst_paged == "paged")
    for i in range(3, 6):
        set_grads(a, i)
        set_grads(b, i)
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_copies_get_their_own_paged_memory_and_nothing_is_kept_alive(pager):
    """deepcopy and pickle allocate new paged buffers; 30 optimizers made and dropped leave no
    paged buffer alive."""
    ps = params()
    opt = adamw8.PagedAdamW32bit(ps, lr=1e-3)
    set_grads(ps, 0)
    opt.step()
    n = pager.live()
    twin = copy.deepcopy(opt)
    assert pager.live() == 2 * n
    assert not set(map(lambda t: t.untyped_storage().data_ptr(), twin._paged()[0].paged_buffers())) & \
        set(map(lambda t: t.untyped_storage().data_ptr(), opt._paged()[0].paged_buffers()))
    del twin, opt
    gc.collect()
    assert pager.live() == 0
    for i in range(30):
        o = adamw8.PagedAdamW8bit(ps, lr=1e-3)
        set_grads(ps, i)
        o.step()
        del o
    gc.collect()
    assert pager.live() == 0


def test_on_the_cpu_paging_is_a_no_op_that_warns_once():
    paging._warned.discard("cpu")
    ps = params()
    with pytest.warns(RuntimeWarning, match="no-op on cpu"):
        opt = adamw8.PagedAdamW8bit(ps, lr=1e-3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt2 = adamw8.PagedAdamW32bit(ps, lr=1e-3)  # once per process
    for o in (opt, opt2):
        assert o.paged_bytes() == 0
        o.page_out()
        set_grads(ps, 0)
        o.step()
        o.page_in()


def test_set_pager_checks_its_argument():
    with pytest.raises(TypeError, match="Pager"):
        paging.set_pager(object(), "cpu")
    with pytest.raises(TypeError, match="Pager"):  # not an AttributeError on its device_type
        paging.set_pager(3)
    with pytest.raises(TypeError, match="device_type"):
        paging.set_pager(None, torch.device("cpu"))
    with pytest.raises(ValueError, match="device_type"):
        paging.set_pager(None)


def test_pager_for_takes_a_device_name():
    pager = StandInPager()
    paging.set_pager(pager, "cpu")
    try:
        assert paging.pager_for("cpu") is pager
        assert paging.pager_for(torch.device("cpu")) is pager
    finally:
        paging.set_pager(None, "cpu")
    with pytest.raises(RuntimeError):
        paging.pager_for("no-such-device")


# ---------------------------------------------------------------------------------- on a GPU
gpu = pytest.mark.gpu


def _free() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


@gpu
def test_managed_memory_is_real_cuda_memory_freed_with_its_tensor():
    assert paging.ManagedPager.available(), "the CUDA build has the paging ops"
    t = torch.ops.adamw8._managed_empty([1 << 20], torch.float32, torch.device("cuda"))
    assert t.is_cuda and torch.ops.adamw8._is_managed(t)
    assert not torch.ops.adamw8._is_managed(torch.empty(10, device="cuda"))
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * (1 << 20)
    del t
    start = _free()
    for _ in range(20):
        t = torch.ops.adamw8._managed_empty([64 << 20], torch.uint8, torch.device("cuda"))
        t.zero_()
        del t
    assert abs(_free() - start) < (8 << 20)  # flat, within the driver's page granularity


@gpu
def test_managed_allocation_never_oversubscribes():
    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.adamw8._managed_empty([free + (1 << 30)], torch.uint8, torch.device("cuda"))


@gpu
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_gpu_paged_state_is_managed_and_exact_through_page_out(cls):
    """page_out() prefetches every paged state tensor to host memory, ordinary allocations can
    then use the device memory it held, and the next step pages back in, exactly.
    torch.cuda.mem_get_info is no measure of it: on an H200 (driver 580) it did not grow after
    a page-out, yet an allocation beyond it succeeded; and an ordinary allocation evicts
    resident managed pages as well (scripts/paging_probe.py, benchmarks/RESULTS.md).  So the
    test checks where the state was prefetched, and allocates beyond the reported free memory."""
    torch.manual_seed(0)
    shapes = [(2048, 2048), (999, 100), (4096, 1024)]  # 99,900 elements: below PAGE_MIN_NUMEL
    a = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.1) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a, opt_b = cls(a, lr=1e-2), UNPAGED[cls](b, lr=1e-2)
    assert torch.ops.adamw8._is_managed(opt_a.state[a[0]]["state1"])
    assert not torch.ops.adamw8._is_managed(opt_a.state[a[1]]["state1"])
    paged = [t for st in opt_a.state.values() for t in st.values()
             if isinstance(t, torch.Tensor) and t.is_cuda and torch.ops.adamw8._is_managed(t)]
    assert paged and sum(t.numel() * t.element_size() for t in paged) == opt_a.paged_bytes()
    for step in range(4):
        set_grads(a, step)
        set_grads(b, step)
        if step == 2:
            opt_a.page_out()
            torch.cuda.synchronize()
            assert all(torch.ops.adamw8._prefetch_location(t) == -1 for t in paged)
            torch.cuda.empty_cache()  # so the allocation below cannot be served by torch's cached blocks
            extra = torch.empty(_free() + int(0.8 * opt_a.paged_bytes()), dtype=torch.uint8, device="cuda")
            extra.fill_(1)  # the pages page_out() gave up serve an ordinary allocation
            del extra
            torch.cuda.empty_cache()
        opt_a.step()
        opt_b.step()
        if step == 2:  # the step paged the state back in
            assert all(torch.ops.adamw8._prefetch_location(t) == torch.cuda.current_device() for t in paged)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def _gpu_twins():
    """Two paged 8-bit optimizers over equal copies of one 524,288-element CUDA parameter."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(1024, 512, device="cuda") * 0.1)]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    return a, b, adamw8.PagedAdamW8bit(a, lr=1e-2), adamw8.PagedAdamW8bit(b, lr=1e-2)


@gpu
def test_gpu_paged_step_captures_in_a_cuda_graph_and_replays_exactly():
    a, b, opt_a, opt_b = _gpu_twins()
    a[0].grad = torch.randn_like(a[0])
    b[0].grad = a[0].grad.clone()  # the twins see the same gradients
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt_a.step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    opt_b.step()
    opt_a.page_out()  # the capture must not prefetch: page in first
    opt_a.page_in()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_a.step()
    with pytest.raises(RuntimeError, match="cannot be captured"):
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2):
            torch.ops.adamw8._prefetch([opt_a.state[a[0]]["state1"]], True)
    for lr in (1e-2, 5e-3, 2e-3):
        for o in (opt_a, opt_b):
            o.param_groups[0]["lr"] = lr
        graph.replay()
        opt_b.step()
    torch.cuda.synchronize()
    assert torch.equal(a[0], b[0])


@gpu
def test_gpu_compiled_step_with_paged_state_equals_eager():
    a, b, opt_a, opt_b = _gpu_twins()
    torch._dynamo.reset()
    step = torch.compile(opt_a.step, fullgraph=True)
    for i in range(3):
        for p in a + b:
            p.grad = torch.full_like(p, 0.01 * (i + 1))
        step()
        opt_b.step()
    assert torch.equal(a[0], b[0])
    torch._dynamo.reset()


@gpu
def test_gpu_thirty_paged_optimizers_leak_nothing():
    p = torch.nn.Parameter(torch.randn(2048, 1024, device="cuda"))
    p.grad = torch.randn_like(p)
    gc.collect()
    start = _free()
    for _ in range(30):
        o = adamw8.PagedAdamW8bit([p], lr=1e-3)
        o.step()
        del o
        gc.collect()
    assert abs(_free() - start) < (16 << 20)


@gpu
def test_gpu_bnb_paged_checkpoint_loads_into_a_paged_optimizer():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(512, 512, device="cuda") * 0.1)
    ob = bnb.optim.PagedAdamW8bit([w], lr=1e-3)
    for i in range(3):
        w.grad = torch.randn_like(w)
        ob.step()
    sd = ob.state_dict()
    v = torch.nn.Parameter(w.detach().clone())
    oa = adamw8.PagedAdamW8bit([v], lr=1e-3)
    oa.load_state_dict(sd)
    assert torch.ops.adamw8._is_managed(oa.state[v]["state1"])
    st_b = ob.state[w]
    assert torch.equal(oa.state[v]["state1"].cpu(), st_b["state1"].cpu())
    back = bnb.optim.PagedAdamW8bit([torch.nn.Parameter(v.detach().clone())], lr=1e-3)
    back.load_state_dict(oa.state_dict())  # and back into bitsandbytes' own paged optimizer
