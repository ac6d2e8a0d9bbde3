"""FSDP2 (``fully_shard``, DTensor parameters), torch.distributed.checkpoint and DDP, with 2
gloo processes on the CPU, against single-process runs of the same model and data.

One spawn runs every scenario (starting processes is the slow part on a 2-core machine);
each test asserts on one scenario's results."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch without distributed support", allow_module_level=True)

WORLD = 2
STEPS = 4


def model(aligned: bool, seed: int = 0):
    """aligned: every shard of every weight is a whole number of 256-element blocks."""
    torch.manual_seed(seed)
    if aligned:  # [512, 32] -> 2 x 256 rows x 32; [4, 512] -> 2 x 2 rows x 512; biases stay 32-bit
        return torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.Tanh(), torch.nn.Linear(512, 4))
    return torch.nn.Sequential(torch.nn.Linear(32, 300), torch.nn.Tanh(), torch.nn.Linear(300, 4))


def batch(i):
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(8, 32, generator=g)
    return x, x[:, :4].cos()


def train(m, opt, steps, start=0, step_fn=None):
    for i in range(start, start + steps):
        x, y = batch(i)  # the same batch on every rank: FSDP's averaged gradient is the single-process one
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        (step_fn or opt.step)()


def make_opt(cls_name, params):
    import adamw8

    return getattr(adamw8, cls_name)(params, lr=1e-2, weight_decay=0.05, min_8bit_size=1000)


def full_params(m):
    from torch.distributed.tensor import DTensor

    return [p.full_tensor() if isinstance(p, DTensor) else p.detach() for p in m.parameters()]


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    import adamw8  # noqa: F401

    results = {}

    def sharded(aligned, seed=0):
        m = model(aligned, seed)
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(m)
        return m

    def record(name, fn):
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        try:
            results[name] = fn()
        except (Exception, CheckpointException):  # noqa: BLE001  (reported to the test)
            results[name] = "error: " + traceback.format_exc()

    for cls in ("AdamW32bit", "AdamW8bit"):
        for aligned in (True, False):
            def run(cls=cls, aligned=aligned):
                m = sharded(aligned)
                opt = make_opt(cls, m.parameters())
                train(m, opt, STEPS)
                st = opt.state[next(m.parameters())]
                kinds = {k: type(v).__name__ for k, v in st.items() if torch.is_tensor(v)}
                return {"params": [p.clone() for p in full_params(m)], "state_types": kinds,
                        "local_shape": tuple(st["state1"].to_local().shape)}
            record(f"train-{cls}-{'aligned' if aligned else 'unaligned'}", run)

    def checkpoint(cls):
        m = sharded(True)
        opt = make_opt(cls, m.parameters())
        train(m, opt, 2)
        path = os.path.join(out_dir, f"ckpt-{cls}")
        dcp.save({"optim": get_optimizer_state_dict(m, opt)}, checkpoint_id=path)
        m2 = sharded(True, seed=7)
        m2.load_state_dict(m.state_dict())
        opt2 = make_opt(cls, m2.parameters())
        sd = {"optim": get_optimizer_state_dict(m2, opt2)}
        dcp.load(sd, checkpoint_id=path)
        set_optimizer_state_dict(m2, opt2, sd["optim"])
        train(m, opt, 2, start=2)
        train(m2, opt2, 2, start=2)
        return [torch.equal(a, b) for a, b in zip(full_params(m), full_params(m2))]

    for cls in ("AdamW32bit", "AdamW8bit"):
        record(f"dcp-{cls}", lambda cls=cls: checkpoint(cls))

    def compiled():
        m = sharded(True)
        opt = make_opt("AdamW8bit", m.parameters())
        step = torch.compile(opt.step, fullgraph=True)
        train(m, opt, 2, step_fn=step)
        return [p.clone() for p in full_params(m)]

    record("compiled-AdamW8bit", compiled)

    def gathered(aligned):  # the whole state, gathered, on rank 0: for single-process training
        m = sharded(aligned)
        opt = make_opt("AdamW8bit", m.parameters())
        train(m, opt, 2)
        sd = opt.state_dict()
        full = {"param_groups": sd["param_groups"], "state": {
            k: {n: (v.full_tensor() if hasattr(v, "full_tensor") else v) for n, v in st.items()}
            for k, st in sd["state"].items()}}
        if rank == 0:
            torch.save(full, os.path.join(out_dir, f"gathered-{'aligned' if aligned else 'unaligned'}.pt"))
        return True

    def from_one_process(cls):  # a checkpoint saved by one process, loaded by two
        import torch.distributed.checkpoint as dcp

        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        m = sharded(True, seed=7)
        opt = make_opt(cls, m.parameters())
        sd = {"model": get_model_state_dict(m), "optim": get_optimizer_state_dict(m, opt)}
        dcp.load(sd, checkpoint_id=os.path.join(out_dir, f"single-{cls}"))
        set_model_state_dict(m, sd["model"])
        set_optimizer_state_dict(m, opt, sd["optim"])
        train(m, opt, 2, start=2)
        return [p.clone() for p in full_params(m)]

    for cls in ("AdamW32bit", "AdamW8bit"):
        record(f"one-to-two-{cls}", lambda cls=cls: from_one_process(cls))

    record("gathered-aligned", lambda: gathered(True))
    record("gathered-unaligned", lambda: gathered(False))

    def ddp():
        m = torch.nn.parallel.DistributedDataParallel(model(False))
        opt = make_opt("AdamW8bit", m.parameters())
        train(m, opt, STEPS)
        return [p.detach().clone() for p in m.module.parameters()]

    record("ddp-AdamW8bit", ddp)
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def run_dir():
    """The spawned run's directory: results.pt and the 2-rank checkpoints."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        _single_process_checkpoints(tmp)
        mp.spawn(_worker, args=(port, tmp), nprocs=WORLD, join=True)
        yield tmp


def _single_process_checkpoints(out_dir):
    """DCP checkpoints written by one process (no process group), for the 1 -> 2 loads."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    for cls in ("AdamW32bit", "AdamW8bit"):
        m = model(True)
        opt = make_opt(cls, m.parameters())
        train(m, opt, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({"model": m.state_dict(), "optim": get_optimizer_state_dict(m, opt)},
                     checkpoint_id=os.path.join(out_dir, f"single-{cls}"))


@pytest.fixture(scope="module")
def results(run_dir):
    return torch.load(os.path.join(run_dir, "results.pt"), weights_only=False)


def single_process(cls, aligned):
    m = model(aligned)
    opt = make_opt(cls, m.parameters())
    train(m, opt, STEPS)
    return [p.detach().clone() for p in m.parameters()]


def ok(res):
    assert not isinstance(res, str), res
    return res


@pytest.mark.parametrize("cls", ["AdamW32bit", "AdamW8bit"])
def test_fsdp2_equals_single_process_when_shards_are_whole_blocks(results, cls):
    """Each rank steps its local shard; with shard boundaries on 256-element blocks the
    8-bit blocks are the single-process ones, and the results are bit-identical."""
    got = ok(results[f"train-{cls}-aligned"])
    want = single_process(cls, True)
    for a, b in zip(got["params"], want):
        assert torch.equal(a, b)
    assert got["state_types"]["state1"] == "DTensor" and got["state_types"]["absmax1" if cls == "AdamW8bit"
                                                                          else "state2"] == "DTensor"
    assert got["state_types"]["step"] == "Tensor"
    assert got["local_shape"] == (256, 32)  # state at the local shape


def test_fsdp2_8bit_within_the_8bit_error_when_shards_split_blocks(results):
    """Shards of 150 x 32 rows: 8-bit blocks are per local shard, so some differ from the
    single-process blocks; the parameters stay within 8-bit quantization error of it."""
    got = ok(results["train-AdamW8bit-unaligned"])["params"]
    want = single_process("AdamW8bit", False)
    ref32 = single_process("AdamW32bit", False)
    for a, b, c in zip(got, want, ref32):
        assert (a - b).abs().max() <= 2 * (b - c).abs().max() + 1e-6  # no further from single than 8-bit is from 32


def test_fsdp2_32bit_unaligned_is_still_exact(results):
    got = ok(results["train-AdamW32bit-unaligned"])["params"]
    for a, b in zip(got, single_process("AdamW32bit", False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ["AdamW32bit", "AdamW8bit"])
def test_dcp_save_load_continues_bit_identically(results, cls):
    assert all(ok(results[f"dcp-{cls}"]))


def test_compiled_step_under_fsdp2(results):
    """torch.compile(opt.step, fullgraph=True) on DTensor parameters: the same result as
    eager, or a clear error."""
    res = results["compiled-AdamW8bit"]
    if isinstance(res, str):
        pytest.fail(res)
    m = model(True)
    opt = make_opt("AdamW8bit", m.parameters())
    train(m, opt, 2)
    for a, b in zip(res, m.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ["AdamW32bit", "AdamW8bit"])
def test_dcp_checkpoint_at_another_world_size(run_dir, results, cls):
    """A 2-rank checkpoint loaded into one process: 32-bit state is re-sharded by DCP and
    continues exactly; 8-bit blocks belong to the old shards, so the load fails clearly."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    ok(results[f"dcp-{cls}"])
    m = model(True)
    opt = make_opt(cls, m.parameters())
    sd = {"optim": get_optimizer_state_dict(m, opt)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP notes that no process group is running
        if cls == "AdamW8bit":  # absmax is a [shards, blocks] table there, [blocks] here
            from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

            with pytest.raises(CheckpointException) as err:
                dcp.load(sd, checkpoint_id=os.path.join(run_dir, f"ckpt-{cls}"))
                set_optimizer_state_dict(m, opt, sd["optim"])
            causes = " ".join(str(e) for e in getattr(err.value, "failures", {}).values()) or str(err.value)
            assert "Size mismatch" in causes and "absmax1" in causes, causes
            return
        dcp.load(sd, checkpoint_id=os.path.join(run_dir, f"ckpt-{cls}"))
    set_optimizer_state_dict(m, opt, sd["optim"])
    assert all(int(st["step"]) == 2 for st in opt.state.values())
    ref = model(True)
    ref_opt = make_opt(cls, ref.parameters())
    train(ref, ref_opt, 2)  # what the 2-rank run had done before saving
    for name in ("state1", "state2"):
        for p, q in zip(m.parameters(), ref.parameters()):
            assert torch.equal(opt.state[p][name], ref_opt.state[q][name]), name


def test_ddp_equals_single_process(results):
    """DDP (replicated parameters, averaged gradients): the optimizer is used as is."""
    for a, b in zip(ok(results["ddp-AdamW8bit"]), single_process("AdamW8bit", False)):
        assert torch.equal(a, b)


def test_gathered_state_dict_loads_into_single_process_training(run_dir, results):
    """An FSDP2 optimizer's state_dict(), gathered (full_tensor) on one rank, loads into a
    single-process optimizer: bit-identical continuation when the shards were whole blocks,
    a clear error otherwise (8-bit blocks of other shards cannot be re-blocked)."""
    ok(results["gathered-aligned"])
    sd = torch.load(os.path.join(run_dir, "gathered-aligned.pt"), weights_only=True)
    m, ref = model(True), model(True)
    opt, ref_opt = make_opt("AdamW8bit", m.parameters()), make_opt("AdamW8bit", ref.parameters())
    train(ref, ref_opt, 2)
    m.load_state_dict(ref.state_dict())
    opt.load_state_dict(sd)
    train(m, opt, 2, start=2)
    train(ref, ref_opt, 2, start=2)
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    bad = torch.load(os.path.join(run_dir, "gathered-unaligned.pt"), weights_only=True)
    m2 = model(False)
    with pytest.raises(ValueError, match=r"cannot be\s+re-blocked"):
        make_opt("AdamW8bit", m2.parameters()).load_state_dict(bad)


def test_dcp_checkpoint_of_one_process_loads_into_two(results):
    """1 -> 2 processes: 32-bit state is re-sharded by DCP; 8-bit state fails clearly (the
    absmax is [blocks] in the checkpoint, a [shards, blocks] table here)."""
    ref = model(True)
    ref_opt = make_opt("AdamW32bit", ref.parameters())
    train(ref, ref_opt, 4)  # 2 steps before the checkpoint, 2 after
    for a, b in zip(ok(results["one-to-two-AdamW32bit"]), ref.parameters()):
        assert torch.equal(a, b)
    err = results["one-to-two-AdamW8bit"]
    assert isinstance(err, str) and "Size mismatch" in err and "absmax1" in err, err
