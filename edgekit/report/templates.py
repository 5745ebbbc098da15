"""A tiny document model (headings, paragraphs, tables, images) written out as Markdown or HTML.

The report's content is assembled once as blocks (see :mod:`edgekit.report.render`); these writers only
decide how a block looks, so the Markdown and HTML reports always say the same thing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Literal

Tone = Literal["ok", "bad", "note"] | None


@dataclass(frozen=True)
class Heading:
    """A section title (level 1 is the page title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A line of text, optionally led by a bold label and coloured by a tone in HTML."""

    text: str
    label: str = ""
    tone: Tone = None


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells; columns listed in ``numeric`` are right-aligned."""

    headers: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Image:
    """A picture referenced by a path relative to the report."""

    src: str
    alt: str


Block = Heading | Paragraph | Table | Image

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a202c;
       max-width: 70rem; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #e2e8f0; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #e2e8f0; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f7fafc; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.ok { color: #276749; } p.bad { color: #9b2c2c; } p.note { color: #4a5568; }
img { max-width: min(100%, 60rem); height: auto; display: block; margin: .6rem 0 1.2rem; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .9em; }
"""


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    rule = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    lines = [table.headers, rule, *table.rows]
    return "\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines)


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return f"**{block.label}** {block.text}" if block.label else block.text
    if isinstance(block, Table):
        return _md_table(block)
    return f"![{block.alt}]({block.src})"


def to_markdown(blocks: list[Block]) -> str:
    """Write blocks as GitHub-flavoured Markdown."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


def _html_row(cells: list[str], numeric: frozenset[int], tag: str) -> str:
    parts = [
        f'<{tag} class="num">{html.escape(c)}</{tag}>' if i in numeric else f"<{tag}>{html.escape(c)}</{tag}>"
        for i, c in enumerate(cells)
    ]
    return "<tr>" + "".join(parts) + "</tr>"


def _html_table(table: Table) -> str:
    # A key/value table has no column titles; Markdown needs its empty header row, HTML does not.
    head = f"<thead>{_html_row(table.headers, table.numeric, 'th')}</thead>\n" if any(table.headers) else ""
    body = "\n".join(_html_row(row, table.numeric, "td") for row in table.rows)
    return f"<table>\n{head}<tbody>\n{body}\n</tbody>\n</table>"


def html_block(block: Block) -> str:
    """One block as an HTML fragment."""
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        label = f"<strong>{html.escape(block.label)}</strong> " if block.label else ""
        tone = f' class="{block.tone}"' if block.tone else ""
        return f"<p{tone}>{label}{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    return f'<img src="{html.escape(block.src)}" alt="{html.escape(block.alt)}">'


def to_html(title: str, blocks: list[Block]) -> str:
    """Write blocks as one self-contained HTML page (inline CSS, no scripts)."""
    body = "\n".join(html_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
