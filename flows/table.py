"""A table as plain data: a header and rows of cells, built once so the places that show it
(``flows/render.py``: terminal, Prefect markdown and table artifact, HTML) cannot drift apart."""

from __future__ import annotations

from typing import NamedTuple

Cell = str | int  # counts stay numbers, so a Prefect table artifact keeps them as such
Row = tuple[str, Cell]  # (figure, value)


class Table(NamedTuple):
    header: list[str]
    rows: list[list[Cell]]


def figure_table(rows: list[Row]) -> Table:
    """One record's figures as a two-column table."""
    return Table(["figure", "value"], [list(row) for row in rows])


def side_by_side(records: list[list[Row]]) -> Table:
    """Several records' figures as one table: a row per record, a column per figure (in the order
    they first appear), '-' where a record lacks one."""
    header = list(dict.fromkeys(name for record in records for name, _ in record))
    return Table(header, [[dict(record).get(name, "-") for name in header] for record in records])
