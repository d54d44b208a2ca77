"""The report as Markdown (report.md): tables as pipe tables, figures as relative image links."""

from __future__ import annotations

from pathlib import Path

from cvlth.report.document import Figure, Report, Table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, folder: Path) -> str:
    """report.md: figures as links relative to the study ``folder``."""
    title, sections = report.title, report.sections
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, list):
                lines += [f"- {item}" for item in block] + [""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"**{block.caption}**", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Figure):
                relative = block.path.relative_to(folder).as_posix()
                lines += [f"![{block.caption}]({relative})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
