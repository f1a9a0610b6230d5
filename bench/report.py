"""What the benchmarks share: the machine line and the writer of their BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU model and threads, library versions, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} CPU threads, torch {torch.__version__}"
    try:
        import onnxruntime

        text += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return text


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (an ``--sizes`` argument) -> (width, height)."""
    w, h = text.lower().split("x")
    return int(w), int(h)


def write_section(path: Path, key: str, body: str) -> None:
    """Replace the text between ``<!-- key:begin -->`` and ``<!-- key:end -->``, or append it."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
