"""The one format check every reader uses: the document back when it matches, else the
caller's error class with one line naming the source, what it holds and what to do."""

from __future__ import annotations

import pytest

import formats


class OwnError(Exception):
    pass


def _check(document, **kwargs):
    return formats.check(
        document, "ddi-fpga-x", 2, source="'x.json'", error=OwnError, remedy="rebuild it", **kwargs
    )


def test_a_matching_document_is_returned_unchanged():
    document = {"format": "ddi-fpga-x", "version": 2, "data": [1]}
    assert _check(document) is document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"data": 1}, "'x.json' has format None version None, not 'ddi-fpga-x' version 2"),
        ({"format": "ddi-fpga-y", "version": 2}, "has format 'ddi-fpga-y' version 2, not"),
        ({"format": "ddi-fpga-x", "version": 1}, "has format 'ddi-fpga-x' version 1, not"),
        ({"format": "ddi-fpga-x", "version": "2"}, "version '2', not"),
        ({"format": "ddi-fpga-x", "version": 2.0}, "version 2.0, not"),
        ([{"format": "ddi-fpga-x"}], "'x.json' holds a list, not a 'ddi-fpga-x' object"),
        (None, "holds a NoneType"),
    ],
)
def test_anything_else_raises_the_callers_error_in_one_line(document, message):
    with pytest.raises(OwnError) as e:
        _check(document)
    assert message in str(e.value) and str(e.value).endswith("; rebuild it")
    assert "\n" not in str(e.value)


def test_a_json_true_is_not_version_1():
    with pytest.raises(OwnError, match="version True, not"):
        formats.check(
            {"format": "f", "version": True}, "f", 1, source="s", error=OwnError, remedy="r"
        )


def test_the_version_field_may_have_another_name():
    document = {"format": "ddi-fpga-x", "format_version": 2}
    assert _check(document, version_key="format_version") is document
    with pytest.raises(OwnError, match="format_version None, not 'ddi-fpga-x' format_version 2"):
        _check({"format": "ddi-fpga-x", "version": 2}, version_key="format_version")


def test_read_loads_checks_and_names_the_file(tmp_path):
    """``read``: the document checked; unreadable JSON is the caller's error in one line naming
    the document; a missing file passes as FileNotFoundError (the caller says how to make it)."""
    from formats import read

    path = tmp_path / "doc.json"
    path.write_text('{"format": "ddi-fpga-test", "version": 1, "x": 2}')
    assert read(path, "ddi-fpga-test", 1, error=ValueError, remedy="fix it")["x"] == 2
    path.write_text("{not json")
    with pytest.raises(KeyError, match=r"cannot read the test document '.*doc\.json'"):
        read(path, "ddi-fpga-test", 1, error=KeyError, remedy="fix it", what="the test document")
    path.write_text('{"format": "ddi-fpga-test", "version": 2}')
    with pytest.raises(ValueError, match=r"version 2, not 'ddi-fpga-test' version 1; fix it$"):
        read(path, "ddi-fpga-test", 1, error=ValueError, remedy="fix it")
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.json", "ddi-fpga-test", 1, error=ValueError, remedy="fix it")
