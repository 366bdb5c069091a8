"""The paper's tables (its Tables 1-3) in one shape, for the report, docs/RESULTS.md and the logs.

Each evaluation table a node computes is a ``PaperTable``: named columns, one ``Row`` per
captioner (the run's rows, and the paper's published numbers as rows of their own, marked as
the paper's), optional 95% intervals, and notes. It travels between nodes and to disk as the
plain dict of ``to_dict`` (a JSON dataset), and ``table_html`` / ``table_markdown`` render it
the same way for every table.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Literal

RowKind = Literal["model", "baseline", "reference", "paper"]


@dataclass
class Row:
    """One captioner's numbers. ``kind``: ``model`` (the run's VLV captioner, in bold),
    ``baseline`` (another of the run's captioners, or a floor such as chance), ``reference``
    (an upper bound, e.g. the dataset's own captions), ``paper`` (numbers the paper
    published, not measured by this run). ``intervals`` maps a column to its 95% interval."""

    label: str
    values: dict[str, float | None]
    kind: RowKind = "baseline"
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)  # how many items each value averages

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "values": dict(self.values),
            "kind": self.kind,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "count": dict(self.count),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        return cls(
            label=data["label"],
            values=dict(data["values"]),
            kind=data.get("kind", "baseline"),
            intervals={k: (float(a), float(b)) for k, (a, b) in data.get("intervals", {}).items()},
            count=dict(data.get("count", {})),
        )


@dataclass
class PaperTable:
    """``key``: ``table1``, ``table2`` or ``table3``. ``columns``: (key, header) in order.
    ``lower_is_better``: how to read the numbers (FID: lower; ratings, accuracy: higher)."""

    key: str
    title: str
    columns: list[tuple[str, str]]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    lower_is_better: bool = False
    digits: int = 2

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "columns": [list(c) for c in self.columns],
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
            "lower_is_better": self.lower_is_better,
            "digits": self.digits,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PaperTable:
        return cls(
            key=data["key"],
            title=data["title"],
            columns=[(k, h) for k, h in data["columns"]],
            rows=[Row.from_dict(r) for r in data["rows"]],
            notes=list(data.get("notes", [])),
            lower_is_better=bool(data.get("lower_is_better", False)),
            digits=int(data.get("digits", 2)),
        )

    def row(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"{self.key} has no row {label!r} (rows: {[r.label for r in self.rows]})")


def _number(value: float | None, digits: int, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval is not None:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


def _label(row: Row) -> str:
    return f"{row.label} (paper)" if row.kind == "paper" else row.label


def table_markdown(table: PaperTable) -> str:
    """The table as Markdown: the run's rows first, then the paper's, its notes below."""
    head = "| | " + " | ".join(h for _, h in table.columns) + " |"
    lines = [f"**{table.title}**", "", head, "|---" * (1 + len(table.columns)) + "|"]
    for row in table.rows:
        cells = [
            _number(row.values.get(k), table.digits, row.intervals.get(k)) for k, _ in table.columns
        ]
        label = f"**{_label(row)}**" if row.kind == "model" else _label(row)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


def table_html(table: PaperTable) -> str:
    """The table as an HTML fragment (the report's style: ``tr.model`` bold, ``tr.paper``
    grey and marked as the paper's)."""
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(h)}</th>" for _, h in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">'
            f"{html.escape(_number(row.values.get(k), table.digits, row.intervals.get(k)))}</td>"
            for k, _ in table.columns
        )
        body.append(f'<tr class="{row.kind}"><td>{html.escape(_label(row))}</td>{cells}</tr>')
    better = "lower is better" if table.lower_is_better else "higher is better"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (
        f"<h3>{html.escape(table.title)}</h3><p>{better}</p>"
        f"<table>{head}</tr>{''.join(body)}</table>" + (f"<ul>{notes}</ul>" if notes else "")
    )
