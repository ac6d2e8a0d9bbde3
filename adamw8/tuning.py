"""The kernels' launch configs: the tables the kernels read, and the tuned profiles that fill them.

Both tables are keyed by state format (``32bit``, ``8bit``), parameter dtype (``fp32``, ``fp64``,
``bf16``, ``fp16``) and size bucket (fewer than 2^14, 2^18, 2^22 elements, or more).

* CPU (``csrc/cpu``): the kernels are built once per instruction set (``base``, ``avx2``,
  ``avx512``, ``avx512vbmi``) and split a tensor's elements over threads in tasks of ``grain`` elements; an entry
  is ``{"capability", "grain"}`` (defaults: the best build this CPU has, 4096).  The size is the
  tensor's.
* CUDA (``csrc/cuda/fused_step_cuda.cpp``): the unit kernels run on a persistent grid of at most
  ``blocks_per_sm`` blocks per SM (0: as many as fit, the default) and one launch takes at most
  ``tensors_per_launch`` tensors (default 64); the size is the call's elements.  Threads per
  block (256) and elements per lane (8) are compile-time constants of the kernels.

``python -m adamw8.tune`` measures the choices with ``torch.profiler`` and writes a profile: a
JSON file keyed by device name (and ``device_type``) whose ``configs`` map
``"<format>/<dtype>/<bucket>"`` to an entry.  Profiles shipped in ``adamw8/profiles/`` are read at
import for the running CPU, and for a GPU when the first optimizer with parameters on it is
made (importing adamw8 does not initialise CUDA); ``ADAMW8_PROFILE=<file>`` reads that file
(for the CPU) instead and ``ADAMW8_PROFILE=none`` reads none.  An unknown device gets the defaults; a malformed profile is
reported with a warning and the defaults are used.  ``ADAMW8_CPU_CAPABILITY=base|avx2|avx512|avx512vbmi``
picks the build "auto" means, as ATen's ``ATEN_CPU_CAPABILITY`` does.

Every config gives the same bits (the builds run the same element update in the same order;
their only fused multiply-adds are div_rn's, which give the division's bits); only the time
changes.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch

FORMATS = ("32bit", "8bit")
DTYPES = ("fp32", "fp64", "bf16", "fp16")  # the C++ order (csrc/cpu/kernel_args.h)
TORCH_DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
BUCKETS = ("lt16k", "lt256k", "lt4m", "ge4m")
CAPABILITIES = ("base", "avx2", "avx512", "avx512vbmi")
AUTO = "auto"
DEFAULT_GRAIN = 4096
SCHEMA = "adamw8.profile/1"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

FIELDS = {
    "cpu": {"capability": AUTO, "grain": DEFAULT_GRAIN},
    "cuda": {"blocks_per_sm": 0, "tensors_per_launch": 64},
}
MEASURED = ("us", "default_us")  # informational fields a profile's entries may carry

_state: dict[str, Any] = {"profile": None, "cuda_profiles": {}}


def keys() -> list[str]:
    """Every table key, in the C++ table's order."""
    return [f"{f}/{d}/{b}" for f in FORMATS for d in DTYPES for b in BUCKETS]


def available(device_type: str = "cpu") -> bool:
    """Whether the compiled kernels of ``device_type`` (and so its table) are loaded."""
    if device_type not in FIELDS:
        raise ValueError(f"adamw8: device_type must be one of {sorted(FIELDS)}, got {device_type!r}")
    return hasattr(torch.ops.adamw8, f"_{device_type}_tuning")


def _need_kernels(device_type: str = "cpu") -> None:
    if not available(device_type):
        raise RuntimeError(
            f"adamw8: the compiled {device_type.upper()} kernels are not loaded (adamw8.ops.using_reference), so "
            "there is no launch table to read or set; build them with: pip install --no-build-isolation -e . "
            "(README: Install)"
        )


def capabilities() -> list[str]:
    """The CPU builds this machine can run, e.g. ``["base", "avx2", "avx512"]``."""
    _need_kernels()
    return list(torch.ops.adamw8._cpu_capabilities())[1:]


def divide_quotients(mode: bool | None = None) -> bool:
    """Whether the avx512vbmi build's 8-bit quantizer takes ``value / absmax`` by the vector
    divider (True) or by three multiply-adds (``div_rn``, False); the bits are the same.  The
    default is the divider on AMD Zen 5 and later, where it measured faster (docs/design.md, "CPU
    kernels").  ``mode`` True or False sets it for this process, ``None`` only reads it; call
    ``reset_divide_quotients()`` to go back to the default."""
    _need_kernels()
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"adamw8: divide_quotients: mode must be True, False or None, got {mode!r}")
    return bool(torch.ops.adamw8._cpu_divide(None if mode is None else int(mode)))


def reset_divide_quotients() -> bool:
    """Back to this CPU's default for ``divide_quotients``; returns it."""
    _need_kernels()
    return bool(torch.ops.adamw8._cpu_divide(-1))


def auto_capability() -> str:
    """The build "auto" runs: the best one, or ``ADAMW8_CPU_CAPABILITY``'s."""
    _need_kernels()
    return torch.ops.adamw8._cpu_capabilities()[0]


def get_table(device_type: str = "cpu") -> dict[str, dict[str, Any]]:
    """The table in effect: key -> entry (CPU: ``{"capability": name or "auto", "grain": int}``;
    CUDA: ``{"blocks_per_sm": int, "tensors_per_launch": int}``)."""
    _need_kernels(device_type)
    flat = getattr(torch.ops.adamw8, f"_{device_type}_tuning")([])
    out = {}
    for i, key in enumerate(keys()):
        a, b = flat[2 * i], flat[2 * i + 1]
        if device_type == "cpu":
            out[key] = {"capability": AUTO if a < 0 else CAPABILITIES[a], "grain": int(b)}
        else:
            out[key] = {"blocks_per_sm": int(a), "tensors_per_launch": int(b)}
    return out


def _int_field(key: str, name: str, value: Any, lo: int, hi: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"adamw8: tuning entry {key!r}: {name} must be an int {rng}, got {value!r}")
    return value


def _check_entry(key: str, entry: Any, device_type: str = "cpu") -> tuple[int, int]:
    """The entry's two table ints; raises ValueError naming what is wrong."""
    if key not in _KEYSET:
        raise ValueError(f"adamw8: unknown tuning key {key!r}; keys are <format>/<dtype>/<bucket> with format in "
                         f"{FORMATS}, dtype in {DTYPES}, bucket in {BUCKETS}")
    if not isinstance(entry, dict):
        raise ValueError(f"adamw8: tuning entry {key!r} must be a dict with {sorted(FIELDS[device_type])}, "
                         f"got {entry!r}")
    unknown = set(entry) - set(FIELDS[device_type]) - set(MEASURED)
    if unknown:
        raise ValueError(f"adamw8: tuning entry {key!r} has unknown fields {sorted(unknown)} (a {device_type} entry "
                         f"has {sorted(FIELDS[device_type])})")
    full = {**FIELDS[device_type], **entry}
    if device_type == "cuda":
        return (_int_field(key, "blocks_per_sm", full["blocks_per_sm"], 0, 64),
                _int_field(key, "tensors_per_launch", full["tensors_per_launch"], 1, 64))
    cap = full["capability"]
    if cap != AUTO and cap not in CAPABILITIES:
        raise ValueError(f"adamw8: tuning entry {key!r}: capability must be 'auto' or one of {CAPABILITIES}, got {cap!r}")
    return (-1 if cap == AUTO else CAPABILITIES.index(cap)), _int_field(key, "grain", full["grain"], 1, None)


_KEYSET = frozenset(keys())


def set_table(configs: dict[str, dict[str, Any]], *, base: str = "defaults", device_type: str = "cpu") -> None:
    """Install ``configs`` (key -> entry) over the defaults (``base="defaults"``) or over the
    table in effect (``base="current"``).  Every entry is checked before anything changes; a
    CPU build this machine cannot run is an error."""
    _need_kernels(device_type)
    if base not in ("defaults", "current"):
        raise ValueError(f"adamw8: base must be 'defaults' or 'current', got {base!r}")
    if not isinstance(configs, dict):
        raise ValueError(f"adamw8: configs must be a dict of <format>/<dtype>/<bucket> -> entry, got {configs!r}")
    table = default_table(device_type) if base == "defaults" else get_table(device_type)
    for key, entry in configs.items():
        _check_entry(key, entry, device_type)
    supported = set(capabilities()) if device_type == "cpu" else set()
    flat = []
    for key in keys():
        a, b = _check_entry(key, {**table[key], **configs.get(key, {})}, device_type)
        if device_type == "cpu" and a >= 0 and CAPABILITIES[a] not in supported:
            raise ValueError(f"adamw8: tuning entry {key!r}: this CPU cannot run the {CAPABILITIES[a]!r} kernels "
                             f"(it runs {sorted(supported)})")
        flat += [a, b]
    getattr(torch.ops.adamw8, f"_{device_type}_tuning")(flat)


def default_table(device_type: str = "cpu") -> dict[str, dict[str, Any]]:
    return {k: dict(FIELDS[device_type]) for k in keys()}


def reset(device_type: str = "cpu") -> None:
    """Back to the defaults (no profile)."""
    set_table({}, device_type=device_type)
    if device_type == "cpu":
        _state["profile"] = None
    else:
        _state["cuda_profiles"].clear()


def cpu_device_name() -> str:
    """The CPU's name as profiles key it: ``cpu:<model name> [<best build>]`` (a virtual machine
    often reports only a family name, e.g. "AMD EPYC"; the best build it can run tells apart the
    machine kinds a profile's choices would not fit)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = model or platform.processor() or platform.machine() or "unknown"
    best = capabilities()[-1] if available() else "reference"
    return f"cpu:{name} [{best}]"


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device)
    return cpu_device_name()


def validate_profile(data: Any, source: str = "profile") -> dict:
    """Check a profile's structure and entries; returns it, or raises ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a profile is a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{source}: 'schema' must be {SCHEMA!r}, got {data.get('schema')!r}")
    dt = data.get("device_type", "cpu")
    if dt not in FIELDS:
        raise ValueError(f"{source}: 'device_type' must be one of {sorted(FIELDS)}, got {dt!r}")
    if not isinstance(data.get("device"), str) or not data["device"]:
        raise ValueError(f"{source}: 'device' must be a non-empty string (e.g. {cpu_device_name()!r})")
    configs = data.get("configs")
    if not isinstance(configs, dict):
        raise ValueError(f"{source}: 'configs' must be an object of <format>/<dtype>/<bucket> -> entry")
    for key, entry in configs.items():
        try:
            _check_entry(key, entry, dt)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return data


def read_profile(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a JSON profile ({e})") from None
    return validate_profile(data, str(path))


def find_profile(device: str, directory: str | os.PathLike = PROFILE_DIR) -> tuple[dict | None, list[str]]:
    """The profile for ``device`` among ``directory``'s ``*.json`` files (the last by name wins),
    and the problems met on the way (malformed files)."""
    problems, found = [], None
    directory = Path(directory)
    if not directory.is_dir():
        return None, problems
    for path in sorted(directory.glob("*.json")):
        try:
            data = read_profile(path)
        except ValueError as e:
            problems.append(str(e))
            continue
        if data["device"] == device:
            found = {**data, "_path": str(path)}
    return found, problems


def apply_profile(profile: dict | None, source: str | None = None, device_type: str = "cpu") -> None:
    """Install a profile's configs (None: the defaults of ``device_type``).  A config this
    machine cannot run is a warning, and the defaults stay."""
    if profile is None:
        reset(device_type)
        return
    validate_profile(profile, source or "profile")  # a malformed one is an error here, not a warning
    device_type = profile.get("device_type", "cpu")
    try:
        set_table(profile["configs"], device_type=device_type)
    except ValueError as e:
        warnings.warn(f"adamw8: profile {source or profile.get('_path', '')} not used: {e}; using the default "
                      "launch configs", RuntimeWarning, stacklevel=2)
        reset(device_type)
        return
    if device_type == "cpu":
        _state["profile"] = profile
    else:
        _state["cuda_profiles"][profile["device"]] = profile


def active_profile(device_type: str = "cpu") -> dict | None:
    """The profile installed for the CPU (at import or by apply_profile), or the CUDA one
    installed last (None: defaults)."""
    if device_type == "cpu":
        return _state["profile"]
    profiles = list(_state["cuda_profiles"].values())
    return profiles[-1] if profiles else None


def load_at_import() -> None:
    """Called once when adamw8 is imported: install the profile for this CPU, if any."""
    if not available():
        return
    env_cap = os.environ.get("ADAMW8_CPU_CAPABILITY", "")
    if env_cap and env_cap != auto_capability():
        warnings.warn(f"adamw8: ADAMW8_CPU_CAPABILITY={env_cap!r} is not a build this CPU can run (it runs "
                      f"{capabilities()}); using {auto_capability()!r}", RuntimeWarning, stacklevel=2)
    choice = os.environ.get("ADAMW8_PROFILE", "")
    if choice.lower() == "none":
        return
    if choice:
        try:
            apply_profile(read_profile(choice), choice)
        except ValueError as e:
            warnings.warn(f"adamw8: ADAMW8_PROFILE: {e}; using the default launch configs", RuntimeWarning,
                          stacklevel=2)
        return
    profile, problems = find_profile(cpu_device_name())
    for p in problems:
        warnings.warn(f"adamw8: skipped a malformed profile: {p}", RuntimeWarning, stacklevel=2)
    if profile is not None:
        apply_profile(profile)


_cuda_checked: set = set()


def load_for_device(device: torch.device) -> None:
    """Install the shipped profile of a GPU, once per process and device, when an optimizer
    with parameters on it is made (CUDA is initialised by then).  One table serves every GPU of
    a process: with GPUs of different kinds, the last one loaded is in effect."""
    if device.type != "cuda" or not available("cuda") or os.environ.get("ADAMW8_PROFILE", "").lower() == "none":
        return
    name = device_name(device)
    if name in _cuda_checked:
        return
    _cuda_checked.add(name)
    profile, problems = find_profile(name)
    for p in problems:
        warnings.warn(f"adamw8: skipped a malformed profile: {p}", RuntimeWarning, stacklevel=3)
    if profile is not None and profile.get("device_type") == "cuda":
        apply_profile(profile)
