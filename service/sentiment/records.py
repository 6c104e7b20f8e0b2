"""Records of an uploaded file, read from a text stream at bounded memory: a JSON Lines line, or a
CSV record bounded in characters and in fields however many lines it spans.

The csv module holds a whole record before it returns it: a quoted field may span any number of
lines and a record may have any number of fields, so its own field limit bounds neither (a header
of three million quoted fields over three million lines was an OOM kill). `csv_records` runs csv's
own state machine (the excel dialect: `,` between fields, `"` around them, `""` for a quote) over
each line only to find where a record ends, keeps the record's lines while they fit
MAX_RECORD_CHARS and MAX_FIELDS, and reads past the rest of one that does not, holding none of it.
The csv module then parses each record that fits, so fields are exactly what csv makes of them.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

# A CSV record (all its lines together) or a JSON Lines line: at most this many characters (each
# 1 to 4 bytes of UTF-8), and at most this many fields. No record past them is ever held whole.
MAX_RECORD_CHARS = 128 * 1024
MAX_FIELDS = 4096
# An error names at most this many columns or keys, each clipped, and says how many it left out.
MAX_NAMES = 10
MAX_NAME_CHARS = 100

# csv's parser states that a record can be in at the end of a piece of a line: at the start of a
# field, in an unquoted field (quotes in it are plain characters), in a quoted field, and just after
# a quote in a quoted field (the next character says whether it was `""` or the closing quote).
_START, _UNQUOTED, _QUOTED, _QUOTE = range(4)
_FIELD_END = re.compile(r"[,\r\n]")
_BLANK = frozenset(("\n", "\r", "\r\n"))
_NEWLINES = ("\n", "\r")
UNCLOSED_QUOTE = "opens a quoted field that is never closed"


@dataclass
class Record:
    lines: list[str]  # the record's lines as csv.reader takes them; empty when it is refused
    problem: str | None = None  # why it is refused ("is longer than ..."), to follow "the row"


def _scan(piece: str, state: int) -> tuple[int, int, bool]:
    """csv's state machine over a piece of a line, from `state`: the state after it, how many
    field separators it holds, and whether it ends the record (a line end outside quotes)."""
    if state == _START and piece.endswith(_NEWLINES) and '"' not in piece:  # most lines: C speed
        return _START, piece.count(","), True
    at = separators = 0
    while True:
        if state == _QUOTED:
            at = piece.find('"', at)
            if at < 0:
                return _QUOTED, separators, False
            at, state = at + 1, _QUOTE
        elif state == _QUOTE:
            if at == len(piece):
                return _QUOTE, separators, False
            if piece[at] == '"':  # `""`: a quote inside the field
                at, state = at + 1, _QUOTED
            else:  # the field's closing quote; what follows up to a separator is plain text
                state = _UNQUOTED
        elif state == _START:
            if at == len(piece):
                return _START, separators, False
            if piece[at] == '"':
                at, state = at + 1, _QUOTED
            else:
                state = _UNQUOTED
        else:
            found = _FIELD_END.search(piece, at)
            if found is None:
                return _UNQUOTED, separators, False
            if found.group() != ",":
                return _START, separators, True
            at, state, separators = found.end(), _START, separators + 1


def csv_records(
    stream: TextIO, max_chars: int = MAX_RECORD_CHARS, max_fields: int = MAX_FIELDS
) -> Iterator[Record]:
    """The stream's CSV records, blank lines skipped. A record past a bound is yielded, refused, as
    soon as it passes it (a header's 422 needs no more of it); the rest of it is read past when the
    next record is asked for. So is a record whose quoted field is still open at the end of the file."""
    lines: list[str] = []
    chars = separators = 0
    state, refused = _START, False
    while piece := stream.readline(max_chars + 1):
        if not chars and piece in _BLANK:
            continue
        state, found, ended = _scan(piece, state)
        chars, separators = chars + len(piece), separators + found
        if not refused:
            problem = None
            if chars > max_chars:
                problem = f"is longer than {max_chars} characters"
                if state in (_QUOTED, _QUOTE):
                    problem += " (inside a quoted field: is a quote left open?)"
            elif separators >= max_fields:
                problem = f"has more than {max_fields} fields"
            if problem is not None:
                refused = True
                lines = []
                yield Record([], problem)
            else:
                lines.append(piece)
        if ended:
            if not refused:
                yield Record(lines)
            lines, chars, separators, state, refused = [], 0, 0, _START, False
    if chars and not refused:  # the last record, ended by the end of the file
        yield Record([], UNCLOSED_QUOTE) if state == _QUOTED else Record(lines)


def line_records(stream: TextIO, max_chars: int = MAX_RECORD_CHARS) -> Iterator[Record]:
    """The stream's lines (JSON Lines' records), blank ones skipped; a line longer than `max_chars`
    is read past in pieces and yielded refused."""
    while line := stream.readline(max_chars + 1):
        if line in _BLANK:
            continue
        if len(line) <= max_chars or line.endswith(_NEWLINES):
            yield Record([line])
            continue
        while (rest := stream.readline(max_chars)) and not rest.endswith(_NEWLINES):
            pass
        yield Record([], f"is longer than {max_chars} characters")


def sample_names(names: list[str]) -> tuple[list[str], int]:
    """At most MAX_NAMES of `names`, each clipped to MAX_NAME_CHARS, and how many were left out:
    an error that lists a header's columns stays small whatever the header."""
    clip = MAX_NAME_CHARS - 1
    listed = [name if len(name) <= MAX_NAME_CHARS else name[:clip] + "…" for name in names[:MAX_NAMES]]
    return listed, len(names) - len(listed)
