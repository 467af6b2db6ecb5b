"""nntrain.tables: the one table formatter. Numbers right-aligned (row 10 lines up under row 9), text left,
plain tables without trailing spaces, markdown pipe tables with escaped pipes and `---:` for numbers."""

from __future__ import annotations

import pytest

from nntrain.tables import column_alignment, format_table, is_number, rule_for


def test_numbers_right_text_left_and_two_digit_indices_line_up():
    rows = [[str(i), f"layer{i}", f"{10.0 ** (i % 4):.1f}"] for i in (8, 9, 10, 11)]
    text = format_table(["#", "layer", "ms"], rows)
    assert text.splitlines() == [
        " #  layer        ms",
        " 8  layer8      1.0",
        " 9  layer9     10.0",
        "10  layer10   100.0",
        "11  layer11  1000.0",
    ]
    ends = {len(line) for line in text.splitlines()}
    assert ends == {len("11  layer11  1000.0")}            # every row ends in the same column


def test_alignment_detection_and_explicit_alignment():
    assert [is_number(c) for c in ("12", "-0.25", "3.2e-05", "1,234", "97.5%", "10.", 7, 0.5, "nan")] == [True] * 9
    assert [is_number(c) for c in ("(1, 28, 28)", "12/100", "pass", "64x8x8", "1_0", True)] == [False] * 6
    assert column_alignment([["a", "1", "—", ""], ["b", "-", "2", ""]]) == "lrrl"   # placeholders do not decide
    assert format_table(["k", "v"], [["a", "1"], ["bb", "22"]], align="rl").splitlines() == [
        " k  v", " a  1", "bb  22"]
    with pytest.raises(ValueError, match="align"):
        format_table(["k", "v"], [["a", "1"]], align="l")
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        format_table(["k", "v"], [["a", "1"], ["b"]])


def test_plain_options_rule_indent_no_header_and_no_trailing_spaces():
    text = format_table(["name", "value"], [["x", "1"], ["longer", ""]], rule=True, indent="  ")
    assert text.splitlines() == ["  name    value", "  -------------", "  x           1", "  longer"]
    assert rule_for(text) == "-" * len("  name    value")
    assert format_table(None, [["1.", "seven", "0.5000"], ["10.", "one", "0.0100"]]).splitlines() == [
        " 1.  seven  0.5000", "10.  one    0.0100"]
    assert format_table(None, []) == "" and format_table(["a"], []) == "a"


def test_markdown_pipe_table():
    text = format_table(["run", "a|b", "acc"], [["r1", "x", "0.9000"], ["run-two", "y|z", "—"]], markdown=True)
    assert text.splitlines() == [
        "| run     | a\\|b |    acc |",
        "|---------|------|-------:|",
        "| r1      | x    | 0.9000 |",
        "| run-two | y\\|z |      — |",
    ]
    with pytest.raises(ValueError, match="header"):
        format_table(None, [["a"]], markdown=True)
