"""moejax.tables.read_table on the tables people have: R's NA, spreadsheets' quoting, BOM and
CRLF, text columns, decimal commas, and reading only some columns."""

import numpy as np
import pytest

from moejax.tables import TableError, read_header, read_table


def _write(tmp_path, text, name="t.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_na_cells_are_missing_and_dropped_on_request(tmp_path):
    path = _write(tmp_path, "a,b,y\n1,2,3\nNA,2,3\n4,nan,6\n7,NaN,9\n,1,2\n5,6,7\n")
    with pytest.raises(TableError, match="4 row\\(s\\) with missing or infinite cells, at "
                                         "lines 3, 4, 5, 6 .*--drop_missing"):
        read_table(path)
    logged = []
    values, names, lines = read_table(path, drop_missing=True, log=logged.append)
    np.testing.assert_array_equal(values, [[1, 2, 3], [5, 6, 7]])
    assert names == ["a", "b", "y"] and lines.tolist() == [2, 7] and "dropped 4" in logged[0]
    # Another set of missing markers: "NA" is then a text cell.
    with pytest.raises(TableError, match="non-numeric"):
        read_table(path, na_values=["", "?"], drop_missing=True)


def test_quotes_bom_and_crlf_as_spreadsheets_write_them(tmp_path):
    path = _write(tmp_path, '\ufeff"speed","angle, deg",y\r\n"1.5",2,3\r\n4,"5",6\r\n',
                  encoding="utf-8")
    values, names, lines = read_table(path)
    assert names == ["speed", "angle, deg", "y"] and lines.tolist() == [2, 3]
    np.testing.assert_array_equal(values, [[1.5, 2, 3], [4, 5, 6]])
    assert read_header(path) == names


def test_only_the_columns_asked_for_are_parsed(tmp_path):
    path = _write(tmp_path, "id,a,name,y\nx1,1,alpha,2\nx2,3,beta,?\n")
    values, names, _ = read_table(path, columns=["a"])
    assert names == ["a"] and values[:, 0].tolist() == [1, 3]
    with pytest.raises(TableError, match="no column\\(s\\) \\['b'\\]"):
        read_table(path, columns=["a", "b"])


def test_a_text_column_is_named_with_the_flag_that_leaves_it_out(tmp_path):
    path = _write(tmp_path, "id,a,y\nx1,1,2\nx2,3,4\n")
    with pytest.raises(TableError, match="in column\\(s\\) \\['id'\\].*--exclude=id"):
        read_table(path)


def test_a_decimal_comma_is_detected_and_named(tmp_path):
    path = _write(tmp_path, "a;b;y\n1,5;2,25;3\n4,0;5,5;6\n")
    with pytest.raises(TableError, match="decimal comma \\(e.g. '1,5' at line 2, column 'a'\\)"):
        read_table(path, delimiter=";")


def test_excel_sep_line_header_only_and_unterminated_quotes(tmp_path):
    path = _write(tmp_path, "sep=;\na;y\n1;2\n3;4\n")
    values, names, lines = read_table(path)
    assert names == ["a", "y"] and lines.tolist() == [3, 4] and values[1, 1] == 4
    with pytest.raises(TableError, match="header line but no data rows"):
        read_table(_write(tmp_path, "a,y\n", name="h.csv"))
    with pytest.raises(TableError, match="line 3 has 1 fields.*quote opened on that line"):
        read_table(_write(tmp_path, 'a,y\n1,2\n"3,4\n' + "5,6\n" * 20, name="q.csv"))
