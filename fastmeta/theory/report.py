"""Printable reports: one row per term, as plain text or as an HTML table (no pandas needed)."""
from __future__ import annotations

import html
import math
from abc import ABC, abstractmethod


def format_value(x: float) -> str:
    """A number as the tables show it: 6 significant digits, 'inf' spelled out."""
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


class TermReport(ABC):
    """Base of the gap reports: subclasses list their rows in ``_rows``.

    ``str(report)`` is a plain-text table, ``report._repr_html_()`` an HTML table for
    notebooks, and ``report.to_dict()`` maps each row's attribute name to its value.
    """

    title = ""
    notes: list[str]

    @abstractmethod
    def _rows(self) -> list[tuple[str, str, float]]:
        """(attribute name, meaning, value) for every row."""

    def to_dict(self) -> dict[str, float]:
        """Every scalar row as {attribute name: value}."""
        return {name: value for name, _, value in self._rows()}

    def __str__(self) -> str:
        rows = self._rows()
        w_name = max(len(name) for name, _, _ in rows)
        w_val = max(len(format_value(v)) for _, _, v in rows)
        lines = [self.title, "-" * len(self.title)]
        lines += [f"{name:<{w_name}}  {format_value(value):>{w_val}}  {meaning}" for name, meaning, value in rows]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(format_value(value))}</td>"
                       f"<td>{html.escape(meaning)}</td></tr>" for name, meaning, value in self._rows())
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<b>{html.escape(self.title)}</b><table><thead><tr><th>term</th><th>value</th><th>meaning</th>"
                f"</tr></thead><tbody>{body}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else ""))

    def __repr__(self) -> str:
        return str(self)


def times(a: float, b: float) -> float:
    """a * b where an infinite factor makes the product infinite (never 0 * inf = NaN)."""
    if math.isinf(a) or math.isinf(b):
        return math.inf
    return a * b
