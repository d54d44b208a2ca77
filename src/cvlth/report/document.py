"""The report as plain data, computed once and rendered both as Markdown and as HTML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # a PNG already written under the study's figures/
    caption: str


#: Marks a table cell whose verdict the runs do not decide: HTML greys it.
UNDECIDED = "undecided"

Block = str | list[str] | Table | Figure  # a paragraph, bullets, a table, a figure


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # statements for the summary, not shown here


@dataclass
class Report:
    title: str
    sections: list[Section]

    def figures(self) -> set[Path]:
        return {block.path for s in self.sections for block in s.blocks if isinstance(block, Figure)}


def pct(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def num(value: float) -> str:
    return f"{value:.4f}"


def pm(mean: float, std: float) -> str:
    return f"{num(mean)} ± {num(std)}"


def ci(interval: tuple[float, float] | None) -> str:
    """A 95% interval as ``[low, high]``; ``[–]`` when there is none (a single run)."""
    return "[–]" if interval is None else f"[{num(interval[0])}, {num(interval[1])}]"


def slug(text: str) -> str:
    """A file-name-safe form of a source or task name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"
