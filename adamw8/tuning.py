"""The kernels' launch configs: the table the CPU kernels read, and the tuned profiles that fill it.

The CPU kernels (``csrc/cpu``) are built once per instruction set (``base``, ``avx2``,
``avx512``) and split a tensor's elements over threads in tasks of ``grain`` elements.  For each
state format (``32bit``, ``8bit``), parameter dtype (``fp32``, ``fp64``, ``bf16``, ``fp16``) and
size bucket (fewer than 2^14, 2^18, 2^22 elements, or more) the table says which build runs and
with which grain.  The defaults: the best build this CPU has and 4096 elements.

``python -m adamw8.tune`` measures the choices with ``torch.profiler`` and writes a profile: a
JSON file keyed by device name whose ``configs`` map ``"<format>/<dtype>/<bucket>"`` to
``{"capability": ..., "grain": ...}``.  Profiles shipped in ``adamw8/profiles/`` are read at
import for the running CPU; ``ADAMW8_PROFILE=<file>`` reads that file instead and
``ADAMW8_PROFILE=none`` reads none.  An unknown device gets the defaults; a malformed profile is
reported with a warning and the defaults are used.  ``ADAMW8_CPU_CAPABILITY=base|avx2|avx512``
picks the build "auto" means, as ATen's ``ATEN_CPU_CAPABILITY`` does.

Every config gives the same bits (the builds run the same element update in the same order,
without fused multiply-adds); only the time changes.
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
BUCKET_LIMITS = (1 << 14, 1 << 18, 1 << 22, None)  # exclusive upper bounds
CAPABILITIES = ("base", "avx2", "avx512")
AUTO = "auto"
DEFAULT_GRAIN = 4096
SCHEMA = "adamw8.profile/1"
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

_state: dict[str, Any] = {"profile": None, "source": None}


def keys() -> list[str]:
    """Every table key, in the C++ table's order."""
    return [f"{f}/{d}/{b}" for f in FORMATS for d in DTYPES for b in BUCKETS]


def size_bucket(numel: int) -> str:
    """The size bucket of a tensor of ``numel`` elements (csrc/cpu/kernel_args.h, size_bucket)."""
    for name, limit in zip(BUCKETS, BUCKET_LIMITS):
        if limit is None or numel < limit:
            return name
    raise AssertionError("unreachable")


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in TORCH_DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"adamw8: no tuning key for dtype {dtype}; expected one of {list(TORCH_DTYPES.values())}")


def available() -> bool:
    """Whether the compiled CPU kernels (and so the table) are loaded."""
    return hasattr(torch.ops.adamw8, "_cpu_tuning")


def _need_kernels() -> None:
    if not available():
        raise RuntimeError(
            "adamw8: the compiled CPU kernels are not loaded (adamw8.ops.using_reference), so there is no "
            "launch table to read or set; build them with: pip install --no-build-isolation -e ."
        )


def capabilities() -> list[str]:
    """The CPU builds this machine can run, e.g. ``["base", "avx2", "avx512"]``."""
    _need_kernels()
    return list(torch.ops.adamw8._cpu_capabilities())[1:]


def auto_capability() -> str:
    """The build "auto" runs: the best one, or ``ADAMW8_CPU_CAPABILITY``'s."""
    _need_kernels()
    return torch.ops.adamw8._cpu_capabilities()[0]


def get_table() -> dict[str, dict[str, Any]]:
    """The table in effect: key -> ``{"capability": name or "auto", "grain": int}``."""
    _need_kernels()
    flat = torch.ops.adamw8._cpu_tuning([])
    out = {}
    for i, key in enumerate(keys()):
        cap, grain = flat[2 * i], flat[2 * i + 1]
        out[key] = {"capability": AUTO if cap < 0 else CAPABILITIES[cap], "grain": int(grain)}
    return out


def _check_entry(key: str, entry: Any) -> tuple[int, int]:
    if key not in _KEYSET:
        raise ValueError(f"adamw8: unknown tuning key {key!r}; keys are <format>/<dtype>/<bucket> with format in "
                         f"{FORMATS}, dtype in {DTYPES}, bucket in {BUCKETS}")
    if not isinstance(entry, dict):
        raise ValueError(f"adamw8: tuning entry {key!r} must be a dict with 'capability' and 'grain', got {entry!r}")
    unknown = set(entry) - {"capability", "grain", "us", "default_us"}
    if unknown:
        raise ValueError(f"adamw8: tuning entry {key!r} has unknown fields {sorted(unknown)}")
    cap = entry.get("capability", AUTO)
    if cap != AUTO and cap not in CAPABILITIES:
        raise ValueError(f"adamw8: tuning entry {key!r}: capability must be 'auto' or one of {CAPABILITIES}, got {cap!r}")
    grain = entry.get("grain", DEFAULT_GRAIN)
    if isinstance(grain, bool) or not isinstance(grain, int) or grain < 1:
        raise ValueError(f"adamw8: tuning entry {key!r}: grain must be an int >= 1, got {grain!r}")
    return (-1 if cap == AUTO else CAPABILITIES.index(cap)), grain


_KEYSET = frozenset(keys())


def set_table(configs: dict[str, dict[str, Any]], *, base: str = "defaults") -> None:
    """Install ``configs`` (key -> entry) over the defaults (``base="defaults"``) or over the
    table in effect (``base="current"``).  Every entry is checked before anything changes; a
    build this CPU cannot run is an error."""
    _need_kernels()
    if base not in ("defaults", "current"):
        raise ValueError(f"adamw8: base must be 'defaults' or 'current', got {base!r}")
    table = default_table() if base == "defaults" else get_table()
    flat = []
    for key in keys():
        if key in configs:
            _check_entry(key, configs[key])
    for key, entry in configs.items():
        if key not in _KEYSET:
            _check_entry(key, entry)  # raises with the list of keys
    supported = set(capabilities())
    for key in keys():
        entry = {**table[key], **configs.get(key, {})}
        cap, grain = _check_entry(key, entry)
        if cap >= 0 and CAPABILITIES[cap] not in supported:
            raise ValueError(f"adamw8: tuning entry {key!r}: this CPU cannot run the {CAPABILITIES[cap]!r} kernels "
                             f"(it runs {sorted(supported)})")
        flat += [cap, grain]
    torch.ops.adamw8._cpu_tuning(flat)


def default_table() -> dict[str, dict[str, Any]]:
    return {k: {"capability": AUTO, "grain": DEFAULT_GRAIN} for k in keys()}


def reset() -> None:
    """Back to the defaults (no profile)."""
    set_table({})
    _state.update(profile=None, source=None)


def cpu_device_name() -> str:
    """The CPU's name as profiles key it: ``cpu:<model name>``."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "cpu:" + (model or platform.processor() or platform.machine() or "unknown")


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
    if not isinstance(data.get("device"), str) or not data["device"]:
        raise ValueError(f"{source}: 'device' must be a non-empty string (e.g. {cpu_device_name()!r})")
    configs = data.get("configs")
    if not isinstance(configs, dict):
        raise ValueError(f"{source}: 'configs' must be an object of <format>/<dtype>/<bucket> -> entry")
    for key, entry in configs.items():
        try:
            _check_entry(key, entry)
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


def apply_profile(profile: dict | None, source: str | None = None) -> None:
    """Install a profile's CPU configs (None: the defaults).  A config that names a build this CPU
    cannot run is a warning, and the defaults stay."""
    if profile is None:
        reset()
        return
    try:
        set_table(profile["configs"])
    except ValueError as e:
        warnings.warn(f"adamw8: profile {source or profile.get('_path', '')} not used: {e}; using the default "
                      "launch configs", RuntimeWarning, stacklevel=2)
        reset()
        return
    _state.update(profile=profile, source=source or profile.get("_path"))


def active_profile() -> dict | None:
    """The profile installed at import or by apply_profile (None: defaults)."""
    return _state["profile"]


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
