"""Reading numeric tables (CSV or TSV with a header line) as the command line does; usable from
Python: `values, names, lines = moejax.tables.read_table("train.csv")`."""

import csv
import math
import os
import re

import numpy as np


class TableError(ValueError):
    """A table that cannot be read as numbers; the message names the file, line and column."""


def _lines(numbers, limit=10) -> str:
    shown = ", ".join(str(v) for v in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


# Cells read as missing by default: empty, R's NA, and NaN as NumPy, pandas and R write it.
NA_VALUES = ("", "NA", "NaN", "nan")

_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+([eE][+-]?\d+)?$")


def read_header(path: str, *, delimiter: str | None = None) -> list[str]:
    """The column names of a table: its first non-blank line (see `read_table`)."""
    return read_table(path, delimiter=delimiter, columns=(), header_only=True)[1]


def read_table(path: str, *, drop_missing: bool = False, delimiter: str | None = None,
               columns=None, na_values=NA_VALUES, log=print, header_only: bool = False):
    """Reads a numeric table with a header line.

    Args:
      path: the file; .tsv and .tab files are tab-separated, others comma-separated. Quoted
        fields, a byte-order mark and CRLF line ends are read as spreadsheets write them.
      drop_missing: drop rows with missing (`na_values`) or infinite cells in the columns
        read (reported through `log`) instead of failing on them.
      delimiter: one character, overriding the choice by file name.
      columns: None for every column, or the names of the columns to read, in that order;
        the others are not parsed (they may hold text).
      na_values: the cells (after stripping spaces) that mean a missing value.
      log: called with a message when rows are dropped.
      header_only: read only the header (`read_header`).

    Returns:
      (values (n, m) float64, column names, file line numbers (n,) of the kept rows).

    Raises:
      TableError (a ValueError): for a missing or empty file, a ragged row, a column named in
        `columns` that the header lacks, text cells (naming the columns and, for a decimal
        comma, saying so), or rows with missing or infinite cells (unless `drop_missing`).
    """
    if os.path.isdir(path):
        raise TableError(f"data file {path!r} is a directory.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise TableError(f"data file {path!r} is not a regular file (a FIFO, socket or "
                         "device): read tables are files (the command line copies a stream "
                         "given as --data into one first).")
    if not os.path.isfile(path):
        raise TableError(f"data file {path!r} does not exist.")
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    elif len(delimiter) != 1:
        raise TableError(f"--delimiter must be one character, got {delimiter!r}.")
    rows, delimiter = _read_rows(path, delimiter, header_only)
    # Blank lines (e.g. a trailing newline) are not data.
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    names = _header(path, numbered, delimiter)
    if header_only:
        return None, names, None
    body = numbered[1:]
    if not body:
        raise TableError(f"{path!r} has a header line but no data rows.")
    wanted = names if columns is None else [str(c) for c in columns]
    absent = [c for c in wanted if c not in names]
    if absent:
        raise TableError(f"{path!r} has no column(s) {absent}; its columns are {names}.")
    na = {str(v).strip() for v in na_values}
    values, missing = _parse(path, body, names, wanted, na, delimiter)
    if missing and not drop_missing:
        raise TableError(f"{path!r} has {len(missing)} row(s) with missing or infinite cells, "
                         f"at lines {_lines(missing)} (missing: "
                         f"{', '.join(map(repr, sorted(na)))}); fix them or pass "
                         "--drop_missing to drop those rows.")
    dropped = set(missing)
    keep = [i for i, (line, _) in enumerate(body) if line not in dropped]
    if missing:
        log(f"dropped {len(missing)} row(s) with missing or infinite cells (lines "
            f"{_lines(missing)})")
    table = np.array([values[i] for i in keep], dtype=np.float64).reshape(len(keep), len(wanted))
    return table, wanted, np.array([body[i][0] for i in keep], dtype=np.int64)


def _read_rows(path: str, delimiter: str, header_only: bool):
    """The file's rows as lists of cells (only up to the header with `header_only`), and the
    delimiter (an Excel "sep=;" first line names it)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
            # Excel's "sep=;" first line names the delimiter.
            if first.strip().lower().startswith("sep=") and len(first.strip()) == 5:
                delimiter, skipped = first.strip()[4], 1
            else:
                f.seek(0)
                skipped = 0
            reader = csv.reader(f, delimiter=delimiter)
            rows = [[]] * skipped
            try:
                for row in reader:
                    rows.append(row)
                    if header_only and any(c.strip() for c in row):
                        break  # the header alone: the rest of the file is not parsed
            except csv.Error as e:
                line = reader.line_num + skipped
                hint = " (an unterminated quote?)" if "field larger" in str(e) or (
                    "EOF" in str(e)) else ""
                raise TableError(f"{path!r} is not a readable table at line {line}: "
                                 f"{e}{hint}.") from None
    except UnicodeDecodeError:
        raise TableError(f"{path!r} is not a text table (not UTF-8).") from None
    return rows, delimiter


def _header(path: str, numbered: list, delimiter: str) -> list[str]:
    """The column names of the first non-blank row; TableError for a missing, ambiguous or
    repeated name, or a header that reads as one column because of the delimiter."""
    if not numbered:
        raise TableError(f"{path!r} is empty: expected a header line and data rows.")
    header = numbered[0][1]
    names = [c.strip() for c in header]
    others = [c for c in ",;\t|" if c != delimiter and c in "".join(header)]
    if len(names) == 1 and others:
        raise TableError(f"{path!r}: the header reads as one column {names[0][:60]!r} with "
                         f"delimiter {delimiter!r}, but contains {others[0]!r}: pass "
                         f"--delimiter={others[0]!r}" + (" (a tab)" if others[0] == "\t" else "")
                         + ".")
    if len(set(names)) != len(names) or not all(names):
        raise TableError(f"{path!r}: the header must name every column once, got {names}.")
    return names


def _parse(path: str, body: list, names: list, wanted: list, na: set, delimiter: str):
    """The `wanted` cells of every row as floats (NaN for missing ones), and the line numbers
    of rows with a missing or infinite cell; TableError for a ragged row or text cells."""
    index = [names.index(c) for c in wanted]
    values, missing, bad = [], [], {}
    for line, row in body:
        if len(row) != len(names):
            quote = any("\n" in c for c in row)  # a quoted field ran on over the line ends
            raise TableError(f"{path!r} line {line} has {len(row)} fields; the header has "
                             f"{len(names)}" + (" (a quote opened on that line is not "
                                                "closed)" if quote else "") + ".")
        parsed, is_missing = [], False
        for name, i in zip(wanted, index):
            cell = row[i].strip()
            if cell in na:
                v = math.nan
            else:
                try:
                    v = float(cell)
                except ValueError:
                    bad.setdefault(name, []).append((line, cell))
                    v = math.nan
            is_missing |= not math.isfinite(v)
            parsed.append(v)
        values.append(parsed)
        if is_missing:
            missing.append(line)
    if bad:
        raise TableError(_text_message(path, bad, delimiter))
    return values, missing


def _text_message(path: str, bad: dict, delimiter: str) -> str:
    """What is wrong with the non-numeric cells `bad` ({column: [(line, cell), ...]}): decimal
    commas, whole text columns (and the flag that leaves them out), or stray cells."""
    cells = [(name, line, cell) for name, found in bad.items() for line, cell in found]
    shown = "; ".join(f"line {line} column {name!r}: {cell!r}" for name, line, cell in cells[:5])
    shown += " ..." if len(cells) > 5 else ""
    commas = [c for c in cells if _DECIMAL_COMMA.match(c[2])]
    if commas and delimiter != ",":
        name, line, cell = commas[0]
        return (f"{path!r} has {len(cells)} non-numeric cell(s), written with a decimal comma "
                f"(e.g. {cell!r} at line {line}, column {name!r}): convert the commas to "
                "points (e.g. save the table with a point as decimal separator).")
    return (f"{path!r} has {len(cells)} non-numeric cell(s) in column(s) {list(bad)}: {shown}. "
            f"A text column can be left out with --exclude={','.join(bad)} (or choose the "
            "columns with --features).")
