"""Tables of a page from its words: ruled ones from their lines, unruled ones from aligned columns.

Pure numpy and the standard library, run in the OCR worker on words it already has (Tesseract's,
or a PDF text layer's) and the page's gray image, so asking for tables adds no engine, no model
and, per page, one byte per pixel of mask. Chosen over img2table (OpenCV) by
measurement: MEMORY.md, "Issue 14 - tables".

Ruled: dark horizontal and vertical runs much longer than a letter are ruling lines; lines that
cross each other form a grid, and each word goes to the grid cell holding its centre. Unruled:
words make lines, lines with wide gaps between groups of words make a block, and the x ranges no
word of the block covers split it into columns; each line is a row.
"""

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median

import numpy as np
from PIL import Image, ImageDraw

from service.ocr.words import Word

# Letter height (px) assumed where none is measured: looking for lines before recognition, or a
# page without words. ~11 pt at 150 dpi.
_DEFAULT_EM = 22.0
# A ruling line is at least this many letter heights long, and at most this thick: letters' strokes
# are shorter, filled blocks (photos, shading) thicker.
_MIN_LINE_EMS = 2.5
_MAX_THICKNESS_EMS = 0.35
# A pixel is ink when darker than this share of its neighbourhood's mean: uneven light in a photo
# moves the mean, not the comparison.
_INK_SHARE = 0.7
_BACKGROUND_BLOCK = 16
_DARK = 96
_STRIP = 128
# Gaps, in letter heights, that split a line into groups of words (unruled columns), and that a
# column hint may go down to.
_COLUMN_GAP_EMS = 0.9
_HINTED_GAP_EMS = 0.3
# Lines farther apart than this (letter heights, bottom to top) are not rows of one table.
_ROW_GAP_EMS = 2.5
_MIN_UNRULED_ROWS = 3
_LINE_GLYPHS = set("-‐‑‒–—―_|¦")


@dataclass(frozen=True)
class Rule:
    """A ruling line's box in page pixels: wider than tall is horizontal."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def horizontal(self) -> bool:
        return self.right - self.left >= self.bottom - self.top


@dataclass(frozen=True)
class Cell:
    text: str
    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class Table:
    rows: list[list[Cell]]  # every row has the same number of cells; empty cells have ""
    left: int
    top: int
    right: int
    bottom: int
    ruled: bool

    def csv(self) -> str:
        """RFC 4180 CSV, one record per row."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerows([cell.text for cell in row] for row in self.rows)
        return out.getvalue()


def detect_tables(
    words: Sequence[Word], rules: Iterable[Rule] = (), columns: int | None = None
) -> list[Table]:
    """The tables of a page, top to bottom, from its words and its ruling lines (`ruling_lines`
    of its image). `columns`, the number of columns the caller expects, guides the split of
    unruled tables; ruled tables follow their lines."""
    em = _letter_height(words)
    ruled = _ruled_tables(list(rules), words, em)
    rest = [word for word in words if not any(_holds(table, word) for table in ruled)]
    tables = ruled + _unruled_tables(rest, em, columns)
    return sorted(tables, key=lambda table: (table.top, table.left))


# -- ruling lines ---------------------------------------------------------------------------------


def ruling_lines(image: Image.Image) -> list[Rule]:
    """Horizontal and vertical ruling lines drawn on a gray page image (before recognition, so
    that they can be erased: lengths and thicknesses are judged against _DEFAULT_EM)."""
    gray = image.convert("L") if image.mode != "L" else image
    block = max(1, min(_BACKGROUND_BLOCK, *gray.size))
    # The threshold is made small and in 8 bits, then enlarged: one byte per pixel, never floats.
    # Dark in absolute terms is ink too: inside a filled block the local mean is as dark as the
    # block, which would leave only its rim as "ink", a thin line; whole, it is too thick to be one.
    threshold = gray.reduce(block).point(lambda mean: max(int(mean * _INK_SHARE), _DARK))
    threshold = threshold.resize(gray.size, Image.Resampling.BILINEAR)
    width, height = gray.size
    ink = np.empty((height, width), dtype=bool)
    for top in range(0, height, _STRIP):  # compared a strip at a time: no page-sized copies
        box = (0, top, width, min(top + _STRIP, height))
        ink[box[1] : box[3]] = np.asarray(gray.crop(box)) < np.asarray(threshold.crop(box))
    del threshold
    min_length = round(_MIN_LINE_EMS * _DEFAULT_EM)
    max_thickness = _MAX_THICKNESS_EMS * _DEFAULT_EM
    gap = round(_DEFAULT_EM / 4)
    horizontal = [
        Rule(x0, y0, x1, y1) for y0, x0, y1, x1 in _segments(_runs(ink, min_length), gap, max_thickness)
    ]
    vertical = [
        Rule(x0, y0, x1, y1) for x0, y0, x1, y1 in _segments(_runs(ink.T, min_length), gap, max_thickness)
    ]
    return horizontal + vertical


def erase_rules(image: Image.Image, rules: Iterable[Rule]) -> None:
    """Paint the ruling lines white, in place, before recognition: Tesseract reads a line beside a
    word as a "|" or an "l" glued to it."""
    draw = ImageDraw.Draw(image)
    for rule in rules:  # with the anti-aliased or blurred edge, which reads as a dash
        draw.rectangle((rule.left - 2, rule.top - 2, rule.right + 1, rule.bottom + 1), fill=255)


def _runs(ink: np.ndarray, min_length: int) -> np.ndarray:
    """Runs of ink along each row at least `min_length` long, as rows of (row, start, end).

    Taken _STRIP rows at a time: a page of text has hundreds of thousands of short runs, and
    their positions for the whole page at once would take more memory than the page itself."""
    found = []
    for first in range(0, ink.shape[0], _STRIP):
        edges = np.diff(
            ink[first : first + _STRIP].astype(np.int8), axis=1, prepend=np.int8(0), append=np.int8(0)
        )
        rows, starts = np.nonzero(edges == 1)
        _, ends = np.nonzero(edges == -1)  # same order: every run starts and then ends in its row
        long = (ends - starts) >= min_length
        found.append(np.stack([rows[long] + first, starts[long], ends[long]], axis=1))
    return np.concatenate(found)


def _segments(runs: np.ndarray, gap: int, max_thickness: float) -> list[tuple[int, int, int, int]]:
    """Runs on neighbouring rows that meet along the row joined into lines: (across0, along0,
    across1, along1). A slightly skewed line steps from row to row and still joins; a filled
    block is dropped by its ink per unit of length."""
    lines: list[tuple[int, int, int, int]] = []
    open_: list[list[int]] = []  # [across0, along0, across1 (last row), along1, ink]
    for row, start, end in runs.tolist():
        still_open = []
        for line in open_:
            if row - line[2] > 2:
                _close(line, lines, max_thickness)
            else:
                still_open.append(line)
        open_ = still_open
        for line in open_:
            if start <= line[3] + gap and end >= line[1] - gap:
                line[1], line[3] = min(line[1], start), max(line[3], end)
                line[2] = row
                line[4] += end - start
                break
        else:
            open_.append([row, start, row, end, end - start])
    for line in open_:
        _close(line, lines, max_thickness)
    return lines


def _close(line: list[int], lines: list[tuple[int, int, int, int]], max_thickness: float) -> None:
    across0, along0, across1, along1, ink = line
    if ink / (along1 - along0) <= max_thickness:
        lines.append((across0, along0, across1 + 1, along1))


# -- ruled tables ---------------------------------------------------------------------------------


def _ruled_tables(rules: list[Rule], words: Sequence[Word], em: float) -> list[Table]:
    """Grids of crossing lines with at least two rows and two columns."""
    reach = max(3.0, em / 3)
    parent = list(range(len(rules)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    horizontal = [i for i, rule in enumerate(rules) if rule.horizontal]
    vertical = [i for i, rule in enumerate(rules) if not rule.horizontal]
    for h in horizontal:
        for v in vertical:
            if _cross(rules[h], rules[v], reach):
                parent[root(h)] = root(v)
    groups: dict[int, list[Rule]] = {}
    for index, rule in enumerate(rules):
        groups.setdefault(root(index), []).append(rule)
    tables = []
    for group in groups.values():
        table = _grid(group, words, em)
        if table is not None:
            tables.append(table)
    return tables


def _cross(h: Rule, v: Rule, reach: float) -> bool:
    return (
        h.left - reach <= (v.left + v.right) / 2 <= h.right + reach
        and v.top - reach <= (h.top + h.bottom) / 2 <= v.bottom + reach
    )


def _grid(group: list[Rule], words: Sequence[Word], em: float) -> Table | None:
    horizontal = [rule for rule in group if rule.horizontal]
    vertical = [rule for rule in group if not rule.horizontal]
    if not horizontal or not vertical:
        return None
    # A table without outer borders is closed by its lines' ends.
    ys = [(rule.top + rule.bottom) / 2 for rule in horizontal]
    ys += [min(rule.top for rule in vertical), max(rule.bottom for rule in vertical)]
    xs = [(rule.left + rule.right) / 2 for rule in vertical]
    xs += [min(rule.left for rule in horizontal), max(rule.right for rule in horizontal)]
    row_edges, column_edges = _edges(ys, em / 2), _edges(xs, em / 2)
    if len(row_edges) < 3 or len(column_edges) < 3:
        return None
    kept = [word for word in words if not _rule_residue(word, row_edges, column_edges, em / 2)]
    return _fill(row_edges, column_edges, kept, ruled=True)


def _rule_residue(word: Word, row_edges: list[int], column_edges: list[int], reach: float) -> bool:
    """A "word" of dashes or bars beside a grid line: what is left of the line after erasing
    (a blurred edge in a photo), not text."""
    if not word.text or set(word.text) - _LINE_GLYPHS:
        return False
    near_row = min(min(abs(word.top - y), abs(word.bottom - y)) for y in row_edges) < reach
    near_column = min(min(abs(word.left - x), abs(word.right - x)) for x in column_edges) < reach
    return near_row or near_column


def _edges(positions: list[float], closer_than: float) -> list[int]:
    """Sorted positions, those nearer than `closer_than` to the previous one merged."""
    edges: list[list[float]] = []
    for position in sorted(positions):
        if edges and position - edges[-1][-1] < closer_than:
            edges[-1].append(position)
        else:
            edges.append([position])
    return [round(sum(group) / len(group)) for group in edges]


def _fill(row_edges: list[int], column_edges: list[int], words: Sequence[Word], ruled: bool) -> Table:
    """The grid's cells with the text of the words whose centres they hold."""
    cells: dict[tuple[int, int], list[Word]] = {}
    for word in words:
        x, y = (word.left + word.right) / 2, (word.top + word.bottom) / 2
        row, column = _slot(row_edges, y), _slot(column_edges, x)
        if row is not None and column is not None:
            cells.setdefault((row, column), []).append(word)
    rows = [
        [
            Cell(
                _text(cells.get((r, c), [])),
                column_edges[c],
                row_edges[r],
                column_edges[c + 1],
                row_edges[r + 1],
            )
            for c in range(len(column_edges) - 1)
        ]
        for r in range(len(row_edges) - 1)
    ]
    return Table(rows, column_edges[0], row_edges[0], column_edges[-1], row_edges[-1], ruled)


def _slot(edges: list[int], position: float) -> int | None:
    if not edges[0] <= position < edges[-1]:
        return None
    return int(np.searchsorted(edges, position, side="right")) - 1


def _text(words: list[Word]) -> str:
    """A cell's words in reading order: line by line, left to right."""
    return " ".join(word.text for line in _lines(words) for word in line)


def _holds(table: Table, word: Word) -> bool:
    x, y = (word.left + word.right) / 2, (word.top + word.bottom) / 2
    return table.left <= x < table.right and table.top <= y < table.bottom


# -- unruled tables -------------------------------------------------------------------------------


def _letter_height(words: Sequence[Word]) -> float:
    heights = [word.bottom - word.top for word in words if word.text.strip()]
    return float(median(heights)) if heights else _DEFAULT_EM


def _lines(words: Sequence[Word]) -> list[list[Word]]:
    """Words grouped into text lines (by their vertical centres), each sorted left to right."""
    if not words:
        return []
    em = _letter_height(words)
    ordered = sorted(words, key=lambda word: word.top + word.bottom)
    lines: list[list[Word]] = [[ordered[0]]]
    for previous, word in itertools.pairwise(ordered):
        if (word.top + word.bottom) / 2 - (previous.top + previous.bottom) / 2 > em / 2:
            lines.append([])
        lines[-1].append(word)
    return [sorted(line, key=lambda word: word.left) for line in lines]


def _groups(line: list[Word], gap: float) -> int:
    """How many groups of words a line has, splitting where words are more than `gap` apart."""
    return 1 + sum(1 for a, b in itertools.pairwise(line) if b.left - a.right > gap)


def _unruled_tables(words: Sequence[Word], em: float, columns: int | None) -> list[Table]:
    """Blocks of near lines split into columns by gaps that none of their words cross.

    A block is made of lines with two or more groups of words; a single line with one group
    between two such lines joins it as a row with one cell filled, unless it crosses a column."""
    gap = (_HINTED_GAP_EMS if columns else _COLUMN_GAP_EMS) * em
    tables: list[Table] = []
    block: list[tuple[list[Word], bool]] = []  # (line, has two or more groups)
    for line in _lines(words):
        grouped = _groups(line, gap) >= 2
        near = bool(block) and _top(line) - _bottom(block[-1][0]) <= _ROW_GAP_EMS * em
        if near and (grouped or block[-1][1]):
            block.append((line, grouped))
            continue
        tables += _block_tables(block, gap, columns)
        block = [(line, grouped)] if grouped else []
    tables += _block_tables(block, gap, columns)
    return tables


def _top(line: list[Word]) -> int:
    return min(word.top for word in line)


def _bottom(line: list[Word]) -> int:
    return max(word.bottom for word in line)


def _block_tables(block: list[tuple[list[Word], bool]], gap: float, columns: int | None) -> list[Table]:
    """The table a block makes, or the tables of its parts when a one-group line crosses a column
    (it is text between two tables), or none."""
    while block and not block[-1][1]:
        block = block[:-1]
    if len(block) < 2:
        return []
    separators = _separators([word for line, grouped in block if grouped for word in line], gap, columns)
    for index, (line, grouped) in enumerate(block):
        if not grouped and any(word.left < x < word.right for word in line for x in separators):
            return _block_tables(block[:index], gap, columns) + _block_tables(
                block[index + 1 :], gap, columns
            )
    if not separators:
        return []
    lines = [line for line, _ in block]
    words = [word for line in lines for word in line]
    column_edges = [min(word.left for word in words), *separators, max(word.right for word in words) + 1]
    # A row's edges: halfway between its line and the next, the outer ones at the lines' ends.
    tops, bottoms = [_top(line) for line in lines], [_bottom(line) for line in lines]
    row_edges = (
        [tops[0]] + [(b + t) // 2 for b, t in zip(bottoms, tops[1:], strict=False)] + [bottoms[-1] + 1]
    )
    table = _fill(row_edges, column_edges, words, ruled=False)
    # Rows with two or more cells filled: two such lines of running text happen (a word misread as
    # two leaves a gap in two lines at once); three rows, a header and two, make a table.
    rows_spread = sum(1 for row in table.rows if sum(1 for cell in row if cell.text) >= 2)
    return [table] if rows_spread >= _MIN_UNRULED_ROWS else []


def _separators(words: list[Word], gap: float, columns: int | None) -> list[int]:
    """x positions of the gaps wider than `gap` that no word covers; with a column hint, at most
    the hint's number of widest such gaps."""
    spans = sorted((word.left, word.right) for word in words)
    gaps: list[tuple[int, int]] = []  # (width, middle)
    reach = spans[0][1]
    for left, right in spans[1:]:
        if left - reach > gap:
            gaps.append((left - reach, (left + reach) // 2))
        reach = max(reach, right)
    if columns:
        gaps = sorted(gaps, reverse=True)[: columns - 1]
    return sorted(middle for _, middle in gaps)
