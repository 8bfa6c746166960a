"""A run is found by what a scientist types: scan id, uid prefix, -1, even a uid that starts with
digits (one uid in 40 has 8 leading digits, and `catalog plot 63121478` once found nothing)."""

from __future__ import annotations

import itertools
import uuid

import bluesky.bundlers
import bluesky.plans as bp
import pytest
from ophyd.sim import det

from daqbridge.catalog import UnknownRun, open_catalog
from daqbridge.cli import main


@pytest.fixture
def digit_uid_run(data_dir, RE, monkeypatch):
    """One run whose uid starts with 8 digits, next to an ordinary one (scan ids 1 and 2)."""
    counter = itertools.count()
    monkeypatch.setattr(
        bluesky.bundlers, "new_uid", lambda: f"{31415926 + next(counter)}{str(uuid.uuid4())[8:]}"
    )
    with open_catalog(data_dir) as catalog:
        RE.subscribe(catalog.writer)
        (digits,) = RE(bp.count([det], 1))
        monkeypatch.undo()
        (ordinary,) = RE(bp.count([det], 1))
        catalog.flush(timeout=60)
    return data_dir, digits, ordinary


def test_a_uid_prefix_of_digits_finds_its_run(digit_uid_run):
    data_dir, digits, ordinary = digit_uid_run
    assert digits[:8].isdigit()
    with open_catalog(data_dir, readonly=True) as catalog:
        assert catalog[digits[:8]].metadata["start"]["uid"] == digits
        assert catalog["2"].metadata["start"]["uid"] == ordinary  # a scan id still wins
        assert catalog["-1"].metadata["start"]["uid"] == ordinary
        with pytest.raises(UnknownRun):
            catalog["3"]  # too short for a uid prefix: no fallback, a clear error


def test_catalog_show_takes_a_uid_prefix_of_digits(digit_uid_run, capsys):
    data_dir, digits, _ = digit_uid_run
    assert main(["catalog", "show", digits[:8], "--data", str(data_dir)]) == 0
    assert digits in capsys.readouterr().out
