"""Search terms of the panel's history (daqbridge/web/_history.py): what becomes which Tiled
query, and what is refused before the catalog sees it."""

from __future__ import annotations

import pytest

from daqbridge.errors import CatalogError
from daqbridge.web._history import parse_search


def test_terms_become_start_and_stop_document_keys():
    assert parse_search("scan_id=3 plan=scan sample=A1 status=abort") == [
        ("start.scan_id", 3),
        ("start.plan_name", "scan"),
        ("start.sample", "A1"),
        ("stop.exit_status", "abort"),
    ]


def test_a_bare_number_is_a_scan_id_and_a_bare_word_a_plan():
    assert parse_search("12 count") == [("start.scan_id", 12), ("start.plan_name", "count")]


@pytest.mark.parametrize("text", ["__class__.x=1", "a=", "=3", "k=" + "v" * 201, "x=1 " * 9])
def test_anything_else_is_refused_with_how_to_search(text):
    with pytest.raises(CatalogError, match="scan_id=3, plan=scan"):
        parse_search(text)
