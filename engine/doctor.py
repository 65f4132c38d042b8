"""``engram doctor``: what Engram runs on here (llama.cpp build and offload, torch device,
memory, caches, the model, the store, what killed writes left behind, what was set aside as
damaged and what was done instead), so a slow or failing set-up can be told apart from a bug
without reading code. Nothing is loaded into llama.cpp or torch, and nothing is changed."""

from __future__ import annotations

import os
from pathlib import Path

from engine import leftovers, set_aside
from engine.model_file import open_model
from engine.runtime import gpu_layers
from store import paths
from store.store import Store


def run(home: str | os.PathLike | None, model: str | os.PathLike | None) -> dict:
    import llama_cpp
    import torch

    from engine import twin

    cuda = torch.cuda.is_available()
    model_file = open_model(model)
    home_dir = paths.home(home)
    store = Store(paths.database(home_dir))
    try:
        integrity = store.integrity()
        profiles = store.profiles()
        temporaries = sorted({str(p) for profile in profiles
                              for p in leftovers.temporaries(home_dir, profile.name)})
        unrecorded = [str(p) for profile in profiles
                      for p in leftovers.unrecorded(store, home_dir, profile)]
        aside = set_aside.found(home_dir, store, profiles)
    finally:
        store.close()
    cache = paths.cache()
    return {
        "llama_cpp": {"version": llama_cpp.__version__,
                      "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
                      "n_gpu_layers": gpu_layers(),
                      "system_info": llama_cpp.llama_print_system_info().decode().strip()},
        "torch": {"version": torch.__version__, "device": str(twin.device()),
                  "dtype": str(twin.DTYPE).removeprefix("torch."), "cuda": cuda,
                  "cuda_version": torch.version.cuda},
        "memory": {"ram_free": _free_ram(),
                   "vram_free": torch.cuda.mem_get_info()[0] if cuda else None},
        "caches": {"path": str(cache),
                   "entries": {p.name: _size(p) for p in sorted(cache.iterdir())}},
        "model": {"path": str(model_file.path), "architecture": model_file.architecture,
                  "sha256": model_file.sha256, "learnable": model_file.learnable},
        "store": {"path": str(store.path), "integrity": integrity,
                  "read_only": store.read_only, "repaired": store.repaired},
        # removed (temporaries) or moved aside (versions) when a profile's memory next opens
        "leftovers": {"temporary_files": temporaries, "unrecorded_versions": unrecorded},
        "set_aside": {"items": [vars(item) for item in aside]},
    }


def report(result: dict) -> str:
    lines = []
    for section, values in result.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            if key == "entries":
                lines += [f"  {name}: {_bytes(size)}" for name, size in value.items()]
            elif key in ("ram_free", "vram_free") and value is not None:
                lines.append(f"  {key}: {_bytes(value)}")
            elif section == "set_aside":
                lines += [f"  {set_aside.SetAside(**item).line()}" for item in value] \
                    or ["  nothing"]
            elif section == "leftovers":
                lines.append(f"  {key}: " + (", ".join(value) + " (tidied at the next start)"
                                             if value else "none"))
            else:
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _free_ram() -> int | None:
    """What the kernel can give without swapping (Linux's MemAvailable), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bytes(n: int) -> str:
    scaled, unit = float(n), "B"
    for larger in ("KB", "MB", "GB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, larger
    return f"{n} B" if unit == "B" else f"{scaled:.1f} {unit}"
