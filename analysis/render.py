"""A report as blocks (headings, paragraphs, tables, figures), rendered to Markdown and to one HTML
page that opens from its folder: figures beside it by relative paths, wide tables scrolling inside
the page. analysis/report.py fills the blocks section by section."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    """Sections in order; rendered to Markdown and HTML from the same blocks."""
    blocks: list[tuple] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fits: dict[str, dict] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def skip(self, what: str, reason: str) -> None:
        """A part that could not be shown: why, where it stands, and again in the Skipped list."""
        self.blocks.append(("p", f"Not shown: {what}: {reason}"))
        self.skipped.append(f"{what}: {reason}")

    def figure(self, paths: list[Path], caption: str, out: Path) -> None:
        self.figures.extend(paths)
        png = next(p for p in paths if p.suffix == ".png")
        svg = next(p for p in paths if p.suffix == ".svg")
        self.blocks.append(("img", png.relative_to(out).as_posix(), svg.relative_to(out).as_posix(), caption))


def render_markdown(report: Report, title: str = "Scaling report") -> str:
    lines = [f"# {title}", ""]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[3]}]({block[1]})", "", f"*{block[3]}* ([SVG]({block[2]}))", ""]
    return "\n".join(lines)


def render_html(report: Report, title: str = "Scaling report") -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in report.blocks:
        kind = block[0]
        if kind == "h2":
            body.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            css = ' class="skipped"' if block[1].startswith("Not shown: ") else ""
            body.append(f"<p{css}>{_inline_code(block[1])}</p>")
        elif kind == "table":
            header = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f'<div class="scroll"><table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif kind == "img":
            body.append(f'<figure><a href="{html.escape(block[2])}"><img src="{html.escape(block[1])}" '
                        f'alt="{html.escape(block[3])}"></a><figcaption>{html.escape(block[3])}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}"
             "img{max-width:100%}figcaption{font-style:italic;font-size:0.9em}"
             ".scroll{overflow-x:auto;max-width:100%}.skipped{color:#8a4b00}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _inline_code(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
