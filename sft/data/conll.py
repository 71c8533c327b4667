"""CoNLL files: one token per line with whitespace-separated columns, a blank line between
sentences, `-DOCSTART-` lines ignored. Each sentence becomes one record:

    {"tokens": [first column], "tags": [last column], "columns": [[column 0], [column 1], ...],
     "lines": [line number of each token]}

so a later error about one token (a bad tag) can name its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from sft.errors import DataError


def read_conll(path: Path, opener, encoding: str = "utf-8-sig") -> Iterator[tuple[str, dict]]:
    width = first_line = None
    rows: list[list[str]] = []
    lines: list[int] = []

    def sentence():
        columns = [list(column) for column in zip(*rows)]
        return f"{path}:{lines[0]}", {"tokens": columns[0], "tags": columns[-1], "columns": columns, "lines": list(lines)}

    with opener(path, "rt", encoding=encoding) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if rows:
                    yield sentence()
                rows, lines = [], []
                continue
            if width is None:
                width, first_line = len(fields), number
            elif len(fields) != width:
                raise DataError(f"{path}:{number}: {len(fields)} columns, expected {width} as on line {first_line} "
                                f"(CoNLL: one token per line, columns separated by spaces or tabs)")
            rows.append(fields)
            lines.append(number)
    if rows:
        yield sentence()
