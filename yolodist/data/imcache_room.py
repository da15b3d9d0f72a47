"""Whether an image cache fits: memory this process can still take (cgroup-aware) and free disk space."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _meminfo_available(meminfo: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_headroom(proc_cgroup: Path, cgroup_root: Path) -> int | None:
    """The tightest (limit - usage) over this process's memory cgroup and its parents (v2 or v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1], parts[2].strip("/")
        if controllers == "":
            base, limit_name, usage_name = cgroup_root, "memory.max", "memory.current"
            if (cgroup_root / "unified").is_dir() and not (cgroup_root / "cgroup.controllers").exists():
                base = cgroup_root / "unified"
        elif "memory" in controllers.split(","):
            base, limit_name, usage_name = cgroup_root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        node = base / rel if rel else base
        while True:
            with contextlib.suppress(OSError, ValueError):
                raw = (node / limit_name).read_text().strip()
                if raw != "max" and int(raw) < 2**60:
                    room = int(raw) - int((node / usage_name).read_text().strip())
                    best = room if best is None else min(best, room)
            if node == base:
                break
            node = node.parent
    return best


def available_memory(
    meminfo: Path = Path("/proc/meminfo"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> int | None:
    """Bytes this process can still take: MemAvailable, capped by its cgroup's limit (containers)."""
    found = [v for v in (_meminfo_available(meminfo), _cgroup_headroom(proc_cgroup, cgroup_root)) if v is not None]
    return max(0, min(found)) if found else None


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
