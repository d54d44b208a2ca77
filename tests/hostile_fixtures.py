"""Helpers for the hostile-input tests: run the CLI, check its one error line, hash input files."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

from cvlth.cli import run_cli


def file_hashes(*roots: Path) -> dict[Path, str]:
    """sha256 of every file under ``roots`` (files or folders), to show that nothing was changed."""
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def cli_error(args: list[str], capsys) -> str:  # noqa: ANN001 - pytest's capsys
    """Run the CLI in-process; assert exit 2, no traceback, one ``error:`` line plus at most a hint."""
    capsys.readouterr()
    code = run_cli(args)
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out, captured.err)
    text = captured.out + captured.err
    assert "Traceback" not in text
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("error: ") and 1 <= len(lines) <= 2, captured.err
    assert len(lines) == 1 or lines[1].startswith("  hint: "), captured.err
    return lines[0]


def png_header(width: int, height: int) -> bytes:
    """A grey 1-bit PNG that claims ``width`` x ``height`` pixels but holds a few bytes of data.

    PIL reads the size from IHDR when it opens the file, which is where a decompression bomb must
    be stopped; the pixels are never needed.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
