"""What every benchmark script shares: the machine line, and rewriting its own marked
section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
# The Beam options that run a pipeline on the cluster scripts/flink-local.sh starts: its job
# server, two TaskManagers, SDK harnesses from its worker pool.
FLINK_REST = "http://127.0.0.1:8081"
FLINK_LOCAL = [
    "--runner=FlinkRunner",
    "--job_endpoint=localhost:8099",
    "--parallelism=2",
    "--environment_type=EXTERNAL",
    "--environment_config=localhost:50000",
]


def write_marked_section(start: str, end: str, section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between `start` and `end` (read just before writing), or append it."""
    block = f"{start}\n{section}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


def unwrap(section: str) -> str:
    """Join the hard-wrapped lines of each prose paragraph; tables and lists stay as written."""
    paragraphs = section.split("\n\n")
    return "\n\n".join(t if t[0] in "|-" else t.replace("\n", " ") for t in paragraphs)


def publish(section: str, start: str, end: str, write: bool) -> None:
    """Print a benchmark's section; with `write`, also put it between its markers in
    BENCHMARKS.md."""
    print(section)
    if write:
        write_marked_section(start, end, section)


def machine(packages: Iterable[str] = ()) -> str:
    """CPU model, cores, memory, Python and the versions of `packages`: what a figure
    depends on."""
    cpu = "unknown CPU"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    line = f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM (shared); "
    line += f"Python {platform.python_version()}"
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in packages)
    return f"{line}; {versions}" if versions else line


def flink_rest(path: str) -> dict:
    """A GET of the local Flink cluster's REST API (e.g. /jobs/overview), as JSON."""
    import json
    import urllib.request

    with urllib.request.urlopen(FLINK_REST + path, timeout=10) as response:
        return json.load(response)
