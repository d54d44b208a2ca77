"""The report as one self-contained HTML page (report.html): it opens offline and can be mailed."""

from __future__ import annotations

import base64
import html

from cvlth.report.document import UNDECIDED, Figure, Report, Table

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .25rem; }
nav { font-size: .92rem; margin: .5rem 0 1rem; }
nav a { margin-right: 1rem; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d6d6d6; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.yes { background: #e6f4e6; }
td.undecided { background: #ececec; color: #6e6e6e; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
ul.facts li { margin-bottom: .35rem; }
"""


def _cell_class(cell: str) -> str:
    """Undecided verdicts greyed (even a matching one: the runs do not settle it), decided ones green."""
    if UNDECIDED in cell:
        return ' class="undecided"'
    return ' class="yes"' if "✓" in cell else ""


def render_html(report: Report) -> str:
    """report.html: one self-contained page (figures as ``data:`` URIs, inline CSS, no external reference)."""
    title, sections = report.title, report.sections
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        out.append(f'<section id="{section.anchor}"><h2>{esc(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{esc(block)}</p>")
            elif isinstance(block, list):
                out.append('<ul class="facts">' + "".join(f"<li>{esc(i)}</li>" for i in block) + "</ul>")
            elif isinstance(block, Table):
                out.append("<table>")
                if block.caption:
                    out.append(f"<caption>{esc(block.caption)}</caption>")
                if any(block.header):
                    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>")
                for row in block.rows:
                    cells = []
                    for k, cell in enumerate(row):
                        tag = "th" if k == 0 else "td"
                        css = _cell_class(cell)
                        cells.append(f"<{tag}{css}>{esc(cell)}</{tag}>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
