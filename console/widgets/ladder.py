"""``Ladder``: a keyboard-navigable table that redraws only the rows that changed.

Textual's DataTable invalidates every cached line on any cell update, so a 25-row ladder that changes
10 times a second re-renders all its cells every frame. ``Ladder`` keeps one rendered line per row,
keyed by the row's cells, and ``update_row`` refreshes only the screen line of that row: the cost of a
frame follows the rows that changed, not the size of the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

Cell = tuple[str, str]  # (text, rich style)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    width: int
    justify: str = "right"  # "left", "right", "center"


@lru_cache(maxsize=256)
def _style(spec: str) -> Style:
    return Style.parse(spec) if spec else Style()


def _fit(text: str, width: int, justify: str) -> str:
    if len(text) > width:
        return text[:width]
    if justify == "left":
        return text.ljust(width)
    if justify == "center":
        return text.center(width)
    return text.rjust(width)


class Ladder(Widget, can_focus=True):
    """Rows of cells under a header line; a cell cursor moved with the arrow keys; Enter selects."""

    DEFAULT_CSS = """
    Ladder {
        height: 1fr;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1, 0)", "Up", show=False),
        Binding("down", "cursor(1, 0)", "Down", show=False),
        Binding("left", "cursor(0, -1)", "Left", show=False),
        Binding("right", "cursor(0, 1)", "Right", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(-1)", "Top", show=False),
        Binding("end", "edge(1)", "Bottom", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    class Selected(Message):
        """Enter on a cell: the row's key and the column's index."""

        def __init__(self, ladder: Ladder, key: str, column: int) -> None:
            super().__init__()
            self.ladder = ladder
            self.key = key
            self.column = column

    def __init__(self, columns: Sequence[Column], *, id: str | None = None, cursor_column: int = 0) -> None:
        super().__init__(id=id)
        self.columns = tuple(columns)
        self.keys: list[str] = []
        self.cells: dict[str, tuple[Cell, ...]] = {}
        self.cursor_row = 0
        self.cursor_column = cursor_column
        self.top = 0
        self._lines: dict[int, tuple[object, Strip]] = {}
        self.rows_updated = 0

    # ------------------------------------------------------------------ data

    @property
    def row_count(self) -> int:
        return len(self.keys)

    def get_row(self, key: str) -> list[str]:
        """The texts of one row's cells."""
        return [text for text, _style in self.cells[key]]

    def set_rows(self, rows: Sequence[tuple[str, tuple[Cell, ...]]], cursor_key: str | None = None) -> None:
        """Replace every row; the cursor goes to ``cursor_key`` (or stays on its row number)."""
        self.keys = [k for k, _ in rows]
        self.cells = dict(rows)
        if cursor_key is not None and cursor_key in self.cells:
            self.cursor_row = self.keys.index(cursor_key)
        self.cursor_row = max(0, min(self.cursor_row, len(self.keys) - 1))
        self._lines.clear()
        self._scroll_to_cursor(center=True)
        self.refresh()

    def update_row(self, key: str, cells: tuple[Cell, ...]) -> bool:
        """Set one row's cells; redraws its line only if they changed. False for an unknown key."""
        if key not in self.cells:
            return False
        if self.cells[key] == cells:
            return True
        self.cells[key] = cells
        self.rows_updated += 1
        self._refresh_row(self.keys.index(key))
        return True

    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor_row] if self.keys else None

    # ------------------------------------------------------------------ cursor

    def _visible_rows(self) -> int:
        return max(1, self.size.height - 1)

    def _refresh_row(self, index: int) -> None:
        line = index - self.top + 1
        if 1 <= line < self.size.height:
            self.refresh(Region(0, line, self.size.width, 1))

    def _scroll_to_cursor(self, center: bool = False) -> None:
        visible = self._visible_rows()
        top = self.top
        if center:
            top = self.cursor_row - visible // 2
        elif self.cursor_row < top:
            top = self.cursor_row
        elif self.cursor_row >= top + visible:
            top = self.cursor_row - visible + 1
        top = max(0, min(top, max(0, len(self.keys) - visible)))
        if top != self.top:
            self.top = top
            self.refresh()

    def move_cursor(self, row: int | None = None, column: int | None = None, center: bool = False) -> None:
        old = self.cursor_row
        if row is not None:
            self.cursor_row = max(0, min(row, len(self.keys) - 1))
        if column is not None:
            self.cursor_column = max(0, min(column, len(self.columns) - 1))
        self._refresh_row(old)
        self._refresh_row(self.cursor_row)
        self._scroll_to_cursor(center)

    def action_cursor(self, rows: int, columns: int) -> None:
        self.move_cursor(self.cursor_row + rows, self.cursor_column + columns)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self.cursor_row + direction * self._visible_rows())

    def action_edge(self, direction: int) -> None:
        self.move_cursor(0 if direction < 0 else len(self.keys) - 1)

    def action_select(self) -> None:
        if self.keys:
            self.post_message(self.Selected(self, self.keys[self.cursor_row], self.cursor_column))

    def on_resize(self) -> None:
        self._lines.clear()
        self._scroll_to_cursor(center=True)

    # ------------------------------------------------------------------ rendering

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return sum(c.width + 1 for c in self.columns)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            header = base + Style(bold=True, underline=True)
            head = [Segment(" " + _fit(c.name, c.width, c.justify), header) for c in self.columns]
            return Strip(head).adjust_cell_length(width, base)
        index = self.top + y - 1
        if index >= len(self.keys):
            return Strip.blank(width, base)
        key = self.keys[index]
        cells = self.cells[key]
        cursor = self.cursor_column if index == self.cursor_row and self.has_focus else -1
        signature = (key, cells, cursor, width, base)
        cached = self._lines.get(index)
        if cached is not None and cached[0] == signature:
            return cached[1]
        segments: list[Segment] = []
        for i, (column, (text, spec)) in enumerate(zip(self.columns, cells, strict=False)):
            style = base + _style(spec)
            if i == cursor:
                style += Style(reverse=True)
            segments.append(Segment(" ", base))
            segments.append(Segment(_fit(text, column.width, column.justify), style))
        strip = Strip(segments).adjust_cell_length(width, base)
        self._lines[index] = (signature, strip)
        return strip

    def on_focus(self) -> None:
        self._refresh_row(self.cursor_row)

    def on_blur(self) -> None:
        self._refresh_row(self.cursor_row)
