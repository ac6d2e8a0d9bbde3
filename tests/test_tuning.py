"""Launch configs (adamw8/tuning.py) and the tuning command (python -m adamw8.tune): profile
lookup, fallback, malformed files, the launch a config changes (seen in the profiler trace),
the committed profiles, and the command end to end with its TensorBoard traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import adamw8
from adamw8 import tuning

pytestmark = pytest.mark.skipif(not tuning.available(), reason="the compiled CPU kernels are not built")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def table():
    before = tuning.get_table()
    profile = tuning.active_profile()
    yield
    tuning.set_table(before)
    tuning._state["profile"] = profile


def _profile(device: str, configs: dict) -> dict:
    return {"schema": tuning.SCHEMA, "device": device, "configs": configs}


def _other_cap() -> str:
    caps = tuning.capabilities()
    return next(c for c in reversed(caps) if c != tuning.auto_capability()) if len(caps) > 1 else caps[0]


def test_lookup_finds_this_device_and_installs_its_configs(table, tmp_path):
    cap = _other_cap()
    (tmp_path / "a.json").write_text(json.dumps(_profile("cpu:some other cpu", {"8bit/fp32/lt4m": {"grain": 7}})))
    (tmp_path / "b.json").write_text(json.dumps(_profile(tuning.cpu_device_name(), {
        "8bit/fp32/lt4m": {"capability": cap, "grain": 12345},
        "32bit/bf16/ge4m": {"capability": "auto", "grain": 99},
    })))
    found, problems = tuning.find_profile(tuning.cpu_device_name(), tmp_path)
    assert problems == [] and found["_path"].endswith("b.json")
    tuning.apply_profile(found)
    t = tuning.get_table()
    assert t["8bit/fp32/lt4m"] == {"capability": cap, "grain": 12345}
    assert t["32bit/bf16/ge4m"] == {"capability": "auto", "grain": 99}
    assert t["8bit/fp32/ge4m"] == {"capability": "auto", "grain": tuning.DEFAULT_GRAIN}  # not in the file
    assert tuning.active_profile()["device"] == tuning.cpu_device_name()


def test_unknown_device_gets_the_defaults(table, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps(_profile("cpu:some other cpu", {"8bit/fp32/lt4m": {"grain": 7}})))
    found, problems = tuning.find_profile(tuning.cpu_device_name(), tmp_path)
    assert found is None and problems == []
    tuning.apply_profile(found)
    assert tuning.get_table() == tuning.default_table()


BAD = {
    "not json": "{",
    "wrong schema": json.dumps({"schema": "other/9", "device": "cpu:x", "configs": {}}),
    "unknown key": json.dumps(_profile("D", {"16bit/fp32/lt4m": {"grain": 8}})),
    "bad capability": json.dumps(_profile("D", {"8bit/fp32/lt4m": {"capability": "sse9"}})),
    "bad grain": json.dumps(_profile("D", {"8bit/fp32/lt4m": {"grain": 0}})),
    "grain not int": json.dumps(_profile("D", {"8bit/fp32/lt4m": {"grain": "big"}})),
    "unknown field": json.dumps(_profile("D", {"8bit/fp32/lt4m": {"grian": 64}})),
    "configs not a dict": json.dumps({"schema": tuning.SCHEMA, "device": "D", "configs": []}),
}


@pytest.mark.parametrize("what", list(BAD))
def test_malformed_profile_warns_and_keeps_the_defaults(table, tmp_path, monkeypatch, what):
    text = BAD[what].replace('"D"', json.dumps(tuning.cpu_device_name()))
    path = tmp_path / "bad.json"
    path.write_text(text)
    tuning.set_table({"8bit/fp32/lt16k": {"grain": 77}})  # something to be reset
    tuning.reset()
    monkeypatch.setenv("ADAMW8_PROFILE", str(path))
    with pytest.warns(RuntimeWarning, match="default launch configs"):
        tuning.load_at_import()
    assert tuning.get_table() == tuning.default_table()
    # the same file among the shipped ones is skipped with a warning too
    found, problems = tuning.find_profile(tuning.cpu_device_name(), tmp_path)
    assert found is None and len(problems) == 1 and "bad.json" in problems[0]


def test_apply_profile_refuses_a_malformed_profile(table):
    with pytest.raises(ValueError, match="a profile is a JSON object"):
        tuning.apply_profile(["not", "a", "profile"])
    with pytest.raises(ValueError, match="schema"):
        tuning.apply_profile({"device": "x", "configs": {}})


def test_set_table_checks_everything_before_changing_anything(table):
    before = tuning.get_table()
    with pytest.raises(ValueError, match="grain must be"):
        tuning.set_table({"8bit/fp32/lt16k": {"grain": 5}, "8bit/fp32/lt4m": {"grain": -1}})
    with pytest.raises(ValueError, match="unknown tuning key"):
        tuning.set_table({"8bit/int8/lt16k": {"grain": 5}})
    with pytest.raises(RuntimeError, match="CPU tuning table has 64 ints"):  # the op's own check
        torch.ops.adamw8._cpu_tuning([1, 2, 3])
    with pytest.raises(ValueError, match="unknown capability id"):
        torch.ops.adamw8._cpu_tuning([7, 4096] * 32)
    assert tuning.get_table() == before


def _launch_labels(opt) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    return [e.name for e in prof.events() if e.name.startswith("adamw8::cpu_step")]


def test_divide_quotients_switch_reads_sets_and_refuses_bad_modes():
    default = tuning.reset_divide_quotients()
    try:
        assert tuning.divide_quotients() is default
        assert tuning.divide_quotients(not default) is (not default)
        assert tuning.divide_quotients() is (not default)
        with pytest.raises(TypeError, match="True, False or None"):
            tuning.divide_quotients(1)
        with pytest.raises(ValueError, match="division mode must be 1"):
            torch.ops.adamw8._cpu_divide(2)
        assert tuning.divide_quotients() is (not default)  # a refused mode changes nothing
    finally:
        assert tuning.reset_divide_quotients() is default


def test_a_loaded_config_changes_the_launch_and_not_the_bits(table, tmp_path, monkeypatch):
    cap = _other_cap()
    torch.manual_seed(0)
    w0 = torch.randn(300, 1000)  # 300,000 elements: bucket lt4m

    def run():
        w = torch.nn.Parameter(w0.clone())
        opt = adamw8.AdamW8bit([w], lr=1e-2)
        for i in range(3):
            w.grad = torch.sin(w0 * (i + 1))
            opt.step()
        return w.detach(), opt.state_dict()["state"][0], opt

    tuning.reset()
    w_default, s_default, opt = run()
    assert _launch_labels(opt) == [f"adamw8::cpu_step8[{tuning.auto_capability()} grain=4096 tasks<="
                                   f"{min(torch.get_num_threads(), -(-300000 // 4096))}]"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile(tuning.cpu_device_name(), {"8bit/fp32/lt4m": {"capability": cap,
                                                                                       "grain": 65536}})))
    monkeypatch.setenv("ADAMW8_PROFILE", str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuning.load_at_import()
    w_tuned, s_tuned, opt = run()
    labels = _launch_labels(opt)
    assert len(labels) == 1 and labels[0].startswith(f"adamw8::cpu_step8[{cap} grain=65536 ")
    assert torch.equal(w_default, w_tuned)
    for k, v in s_default.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, s_tuned[k]), k


def test_profile_is_read_at_import_in_a_fresh_process(tmp_path):
    cap = _other_cap()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_profile(tuning.cpu_device_name(), {"32bit/fp32/ge4m": {"capability": cap,
                                                                                       "grain": 8192}})))
    code = "import adamw8, json; print(json.dumps(adamw8.tuning.get_table()['32bit/fp32/ge4m']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ADAMW8_PROFILE": str(path)}).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"capability": cap, "grain": 8192}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ADAMW8_PROFILE": "none"}).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"capability": "auto", "grain": tuning.DEFAULT_GRAIN}


def test_shipped_profiles_are_valid_and_ship_with_the_package():
    files = sorted(tuning.PROFILE_DIR.glob("*.json"))
    assert files, "adamw8/profiles/ holds the committed CPU profile of the CI machine kind"
    for f in files:
        data = tuning.read_profile(f)
        assert data["configs"], f
    # package data: what a wheel (or any install) copies holds them
    with tempfile.TemporaryDirectory() as build:
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", build], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert sorted(p.name for p in (Path(build) / "adamw8" / "profiles").glob("*.json")) == \
            sorted(f.name for f in files)


def test_bad_capability_env_warns_at_import():
    r = subprocess.run([sys.executable, "-c", "import adamw8"], capture_output=True, text=True,
                       env={**os.environ, "ADAMW8_CPU_CAPABILITY": "sse9"})
    assert r.returncode == 0 and "ADAMW8_CPU_CAPABILITY='sse9'" in r.stderr


def test_tune_quick_end_to_end_with_tensorboard_traces(tmp_path):
    """The command as the README gives it, on the CPU, under a minute; then its outputs: the
    profile validates and loads, the summary and plot exist, and torch-tb-profiler's loader
    reads a trace and finds the adamw8 op in it."""
    out = tmp_path / "tune"
    r = subprocess.run([sys.executable, "-m", "adamw8.tune", "--quick", "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "] 8" in r.stderr or "/" in r.stderr  # the progress bar
    profiles = list(out.glob("*.json"))
    assert len(profiles) == 1
    prof = tuning.read_profile(profiles[0])
    assert prof["device"] == tuning.cpu_device_name() and prof["quick"] is True
    assert set(prof["configs"]) == {f"{f}/fp32/{b}" for f in tuning.FORMATS for b in tuning.BUCKETS}
    for entry in prof["configs"].values():
        assert entry["us"] > 0 and entry["us"] <= entry["default_us"] * 1.0001
    summary = (out / "summary.md").read_text()
    assert summary.count("| 8bit/fp32/") == 4 and summary.count("| 32bit/fp32/") == 4
    try:
        import matplotlib  # noqa: F401

        assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        pass
    traces = sorted((out / "traces").glob("*.pt.trace.json"))
    assert len(traces) == 8
    tbp = pytest.importorskip("torch_tb_profiler.profiler.data", reason="pip install 'adamw8[profile]'")
    data = tbp.RunProfileData.parse("w", None, str(traces[0]), tempfile.mkdtemp(dir=tmp_path))
    names = {op.name for op in data.op_list_groupby_name}
    assert "adamw8::fused_step_multi" in names
    assert any(n.startswith("adamw8::cpu_step") for n in names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where there is no GPU")
def test_tune_on_cuda_without_a_gpu_says_so():
    r = subprocess.run([sys.executable, "-m", "adamw8.tune", "--device", "cuda"], capture_output=True, text=True)
    assert r.returncode == 2 and "needs a CUDA device" in r.stderr


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "--device must be cpu or cuda, got tpu"),
    (["--quick", "--out", "/proc/adamw8-tune"], "--out /proc/adamw8-tune: cannot write there"),
    (["--reps", "0"], "--reps must be >= 1"),
], ids=["device", "out", "reps"])
def test_tune_refuses_bad_arguments_with_a_usage_error(argv, message):
    """A usage error (exit 2, the argument named), not a traceback."""
    r = subprocess.run([sys.executable, "-m", "adamw8.tune", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


CUDA_BAD = {
    "blocks_per_sm too big": {"8bit/fp32/lt4m": {"blocks_per_sm": 65}},
    "tensors_per_launch 0": {"8bit/fp32/lt4m": {"tensors_per_launch": 0}},
    "tensors_per_launch over 64": {"8bit/fp32/lt4m": {"tensors_per_launch": 65}},
    "a CPU field": {"8bit/fp32/lt4m": {"grain": 4096}},
}


@pytest.mark.parametrize("what", list(CUDA_BAD))
def test_cuda_profiles_are_checked_like_cpu_ones(what):
    data = {"schema": tuning.SCHEMA, "device": "cuda:Some GPU", "device_type": "cuda", "configs": CUDA_BAD[what]}
    with pytest.raises(ValueError, match="tuning entry '8bit/fp32/lt4m'"):
        tuning.validate_profile(data)
    ok = {"schema": tuning.SCHEMA, "device": "cuda:Some GPU", "device_type": "cuda",
          "configs": {"8bit/bf16/ge4m": {"blocks_per_sm": 2, "tensors_per_launch": 32, "us": 1.0}}}
    assert tuning.validate_profile(ok) is ok
    with pytest.raises(ValueError, match="device_type"):
        tuning.validate_profile({**ok, "device_type": "tpu"})


# ---------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
def test_cuda_launch_config_changes_the_launch_and_not_the_bits():
    before = tuning.get_table("cuda")
    try:
        results, labels = [], []
        for bps, tpl in ((0, 64), (1, 64), (2, 3), (1, 1)):
            tuning.set_table({k: {"blocks_per_sm": bps, "tensors_per_launch": tpl} for k in tuning.keys()},
                             device_type="cuda")
            torch.manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in ((512, 300), (4099,), (70, 70), (1,))]
            opt = adamw8.AdamW8bit(ps, lr=1e-2, min_8bit_size=1)
            for i in range(3):
                for p in ps:
                    p.grad = torch.sin(p.detach() * (i + 1))
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    opt.step()
            labels.append([e.name for e in prof.events() if e.name.startswith("adamw8::cuda_step")])
            results.append([p.detach().clone() for p in ps])
        assert labels[1] == ["adamw8::cuda_step8[blocks_per_sm=1 tensors_per_launch=64]"]
        assert labels[2] == ["adamw8::cuda_step8[blocks_per_sm=2 tensors_per_launch=3]"]
        for r in results[1:]:
            for a, b in zip(results[0], r):
                assert torch.equal(a, b)
    finally:
        tuning.set_table(before, device_type="cuda")


@pytest.mark.gpu
def test_tune_quick_on_cuda_end_to_end(tmp_path):
    out = tmp_path / "tune"
    r = subprocess.run([sys.executable, "-m", "adamw8.tune", "--device", "cuda", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    prof = tuning.read_profile(next(out.glob("*.json")))
    assert prof["device_type"] == "cuda" and prof["device"] == tuning.device_name("cuda")
    assert all(e["us"] > 0 for e in prof["configs"].values())
