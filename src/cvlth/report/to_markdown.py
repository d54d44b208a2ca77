"""The report as Markdown (report.md): tables as pipe tables, figures as relative image links.

Every text of the report is plain text (report.html escapes all of it), and much of it is the
user's: study, pre-training, task and finder names. So every text is escaped here, so that a name
such as ``<script>``, ``[x](http://...)`` or ``# heading`` shows as written instead of becoming HTML,
a link or a heading where report.md is rendered.
"""

from __future__ import annotations

import re
from pathlib import Path

from cvlth.report.document import Figure, Report, Table

# Characters that start Markdown (or inline HTML / entity) syntax anywhere in a line. ``_`` only
# at a word's edge: within a word (retrieval_accuracy, θ_p: Unicode letters too) CommonMark never reads
# it as emphasis.
_INLINE = re.compile(r"[\\`*\[\]<>&#|~]|(?<!\w)_|_(?!\w)")
# What starts a list or a thematic break only at the start of a line: "- x", "+ x", "1. x", "---".
_LINE_START = re.compile(r"^(\s*)([-+](?=\s|$|[-+])|\d+(?=[.)](?:\s|$)))")


def _md_text(text: str) -> str:
    """``text`` as literal Markdown: on one line, every syntax character backslash-escaped."""
    flat = " ".join(str(text).splitlines())
    escaped = _INLINE.sub(lambda match: "\\" + match.group(), flat)
    return _LINE_START.sub(lambda m: m.group(1) + _escape_marker(m.group(2)), escaped, count=1)


def _escape_marker(marker: str) -> str:
    # "1." -> "1\.": the list marker is the dot (or parenthesis) after the digits.
    return "\\" + marker if marker in "-+" else marker + "\\"


def render_markdown(report: Report, folder: Path) -> str:
    """report.md: figures as links relative to the study ``folder``."""
    title, sections = report.title, report.sections
    lines = [f"# {_md_text(title)}", ""]
    for section in sections:
        lines += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [_md_text(block), ""]
            elif isinstance(block, list):
                lines += [f"- {_md_text(item)}" for item in block] + [""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"**{_md_text(block.caption)}**", ""]
                lines.append("| " + " | ".join(_md_text(h) for h in block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_text(c) for c in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Figure):
                relative = block.path.relative_to(folder).as_posix()
                caption = _md_text(block.caption)
                lines += [f"![{caption}]({relative})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
