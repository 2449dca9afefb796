"""Reading numeric tables (CSV or TSV with a header line) as the command line does; usable from
Python: `values, names, lines = moejax.tables.read_table("train.csv")`."""

import csv
import math
import os

import numpy as np


class TableError(ValueError):
    """A table that cannot be read as numbers; the message names the file, line and column."""


def _lines(numbers, limit=10) -> str:
    shown = ", ".join(str(v) for v in numbers[:limit])
    return shown + (f", ... ({len(numbers)} in all)" if len(numbers) > limit else "")


def read_table(path: str, *, drop_missing: bool = False, delimiter: str | None = None,
               log=print):
    """Reads a numeric table with a header line.

    Args:
      path: the file; .tsv and .tab files are tab-separated, others comma-separated.
      drop_missing: drop rows with empty, NaN or infinite cells (reported through `log`)
        instead of failing on them.
      delimiter: one character, overriding the choice by file name.
      log: called with a message when rows are dropped.

    Returns:
      (values (n, m) float64, column names, file line numbers (n,) of the kept rows).

    Raises:
      TableError (a ValueError): for a missing or empty file, a ragged row, non-numeric
        cells, or rows with empty/NaN/infinite cells (unless `drop_missing`).
    """
    if os.path.isdir(path):
        raise TableError(f"data file {path!r} is a directory.")
    if not os.path.isfile(path):
        raise TableError(f"data file {path!r} does not exist.")
    if delimiter is None:
        delimiter = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    elif len(delimiter) != 1:
        raise TableError(f"--delimiter must be one character, got {delimiter!r}.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except UnicodeDecodeError:
        raise TableError(f"{path!r} is not a text table (not UTF-8).") from None
    except csv.Error as e:
        raise TableError(f"{path!r} is not a readable table: {e}.") from None
    # Blank lines (e.g. a trailing newline) are not data.
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise TableError(f"{path!r} is empty: expected a header line and data rows.")
    (_, header), body = numbered[0], numbered[1:]
    names = [c.strip() for c in header]
    others = [c for c in ",;\t|" if c != delimiter and c in "".join(header)]
    if len(names) == 1 and others:
        raise TableError(f"{path!r}: the header reads as one column {names[0][:60]!r} with "
                         f"delimiter {delimiter!r}, but contains {others[0]!r}: pass "
                         f"--delimiter={others[0]!r}" + (" (a tab)" if others[0] == "\t" else "")
                         + ".")
    if len(set(names)) != len(names) or not all(names):
        raise TableError(f"{path!r}: the header must name every column once, got {names}.")
    values, missing, bad = [], [], []
    for line, row in body:
        if len(row) != len(names):
            raise TableError(f"{path!r} line {line} has {len(row)} fields; the header has "
                             f"{len(names)}.")
        parsed, is_missing = [], False
        for name, cell in zip(names, row):
            cell = cell.strip()
            try:
                v = float(cell) if cell else math.nan
            except ValueError:
                bad.append(f"line {line} column {name!r}: {cell!r}")
                v = math.nan
            is_missing |= not math.isfinite(v)
            parsed.append(v)
        values.append(parsed)
        if is_missing:
            missing.append(line)
    if bad:
        raise TableError(f"{path!r} has {len(bad)} non-numeric cell(s): " + "; ".join(bad[:5])
                         + (" ..." if len(bad) > 5 else ""))
    if missing and not drop_missing:
        raise TableError(f"{path!r} has {len(missing)} row(s) with empty, NaN or infinite cells, "
                         f"at lines {_lines(missing)}; fix them or pass --drop_missing.")
    dropped = set(missing)
    keep = [i for i, (line, _) in enumerate(body) if line not in dropped]
    if missing:
        log(f"dropped {len(missing)} row(s) with empty, NaN or infinite cells (lines "
            f"{_lines(missing)})")
    table = np.array([values[i] for i in keep], dtype=np.float64).reshape(len(keep), len(names))
    return table, names, np.array([body[i][0] for i in keep], dtype=np.int64)
