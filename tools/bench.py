#!/usr/bin/env python
"""Run every benchmark section and write docs/benchmarks.md.

Each ``tools/bench_<area>.py`` exposes ``run(quick: bool = False) -> str``, a
Markdown section. This script runs them in order, names the machine, date and
command, and writes the page. Speed numbers come from here, never from tests.

Usage: ``python tools/bench.py [--quick] [--only segmentation tracking ...] [--out docs/benchmarks.md]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("segmentation", "unet", "pipeline", "readers", "transport", "tracking", "analysis",
            "dashboard", "simulate")


def machine_description() -> str:
    """CPU model, cores, memory and the main library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        mem = "?"
    import numpy

    versions = [f"python {platform.python_version()}", f"numpy {numpy.__version__}"]
    for name in ("cv2", "onnxruntime", "torch"):
        try:
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, {platform.system()} {platform.release()}; " + ", ".join(versions)


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load(section: str):
    path = ROOT / "tools" / f"bench_{section}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{section}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def _split_sections(text: str) -> dict[str, str]:
    """Page -> {"": header, section: its text up to and including its timing line}."""
    import re

    out: dict[str, str] = {}
    marker = re.compile(r"^_\(section `(\w+)` took .*\)_$", re.M)
    start = text.find("\n## ")
    out[""] = text[: start + 1] if start >= 0 else text
    pos = start + 1 if start >= 0 else len(text)
    for match in marker.finditer(text, pos):
        out[match.group(1)] = text[pos: match.end()].strip("\n") + "\n"
        pos = match.end()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes, not tens)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    # as the CLI does at start (etemlive.allocator): the numbers are the product's
    from etemlive.allocator import keep_freed_memory

    allocator = ("glibc mmap / trim thresholds raised as the CLI sets them" if keep_freed_memory()
                 else "C library defaults")
    command = "python tools/bench.py" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")
    parts = [
        "# Benchmarks",
        "",
        "Written by `tools/bench.py`; every number below was measured by the command shown.",
        "",
        f"- machine: {machine_description()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- revision: {_git_revision()}",
        f"- command: `{command}`",
        f"- allocator: {allocator}",
        "",
    ]
    blocks: dict[str, str] = {}
    for section in args.only or SECTIONS:
        module = _load(section)
        if module is None:
            continue
        print(f"[bench] {section} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            text = module.run(quick=args.quick)
        except Exception:  # noqa: BLE001 (a broken section is reported, the rest still runs)
            text = f"## {section}\n\nFAILED:\n\n```\n{traceback.format_exc()}```\n"
        blocks[section] = (text.rstrip() + "\n\n"
                           + f"_(section `{section}` took {time.perf_counter() - t0:.0f} s)_\n")
    if args.only and args.out.exists():
        # Re-running some sections keeps the others as they were measured, and says so.
        old = _split_sections(args.out.read_text(encoding="utf-8"))
        rerun = (f"- sections {', '.join(blocks)} re-measured {parts[5][8:]} by `{command}` "
                 f"(allocator: {allocator})")
        header = old.get("", "\n".join(parts)).rstrip() + "\n" + rerun + "\n"
        merged = {k: v for k, v in old.items() if k}
        merged.update(blocks)
        ordered = [merged[k] for k in SECTIONS if k in merged]
        ordered += [v for k, v in merged.items() if k not in SECTIONS]
        text = header + "\n" + "\n".join(ordered)
    else:
        text = "\n".join(parts) + "\n" + "\n".join(blocks.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
