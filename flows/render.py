"""A :class:`flows.table.Table` as the terminal prints it, as Prefect markdown, as a Prefect table
artifact's records, and as HTML; and the loop's history as the command line prints it."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from flows.rows import history_table
from flows.table import Table

if TYPE_CHECKING:
    from flows.round_records import RoundSummary


def as_text(table: Table) -> str:
    """Columns padded to their widest cell, under a rule."""
    rows = [[str(cell) for cell in row] for row in table.rows]
    widths = [max(len(row[i]) for row in [table.header, *rows]) for i in range(len(table.header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(table.header), line(["-" * w for w in widths]), *map(line, rows)])


def as_markdown(table: Table) -> str:
    cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
    return "\n".join([cells(table.header), "|" + "---|" * len(table.header), *map(cells, table.rows)])


def as_records(table: Table) -> list[dict]:
    """One dict per row, keyed by the header: what ``create_table_artifact`` takes."""
    return [dict(zip(table.header, row)) for row in table.rows]


def as_html(table: Table) -> str:
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in table.rows)
    return f"<table><tr>{cells(table.header, 'th')}</tr>{body}</table>"


def summary_table(rounds: list[RoundSummary]) -> str:
    """The rounds as a plain-text table, one row per round."""
    return as_text(history_table(rounds)) if rounds else "no rounds yet"
