"""The catalog writer's private names of bluesky-tiled-plugins: all present on the installed
release, and a release without one refuses to open a writable catalog, naming what is missing,
instead of holding every run back until its stop document.

The names are taken away from the real, imported library (in-process): that is the situation
a new release would create."""

from __future__ import annotations

from importlib import metadata

import pytest
from bluesky_tiled_plugins.writing import tiled_writer as library

from daqbridge.catalog import open_catalog
from daqbridge.catalog._tiled_writer import (
    LIBRARY,
    check_library,
    missing_private_names,
)
from daqbridge.errors import CatalogError

INSTALLED = metadata.version(LIBRARY)


def test_the_installed_release_has_every_name_the_writer_uses():
    assert missing_private_names() == []
    check_library()


@pytest.mark.parametrize(
    ("owner", "name", "shown"),
    [
        (library, "_RunWriter", f"{library.__name__}._RunWriter"),
        (
            library._RunWriter,
            "_write_internal_data",
            f"{library.__name__}._RunWriter._write_internal_data",
        ),
    ],
    ids=["_RunWriter", "_RunWriter._write_internal_data"],
)
def test_a_release_without_a_name_refuses_to_open_a_writable_catalog(
    monkeypatch, data_dir, owner, name, shown
):
    monkeypatch.delattr(owner, name)
    with pytest.raises(CatalogError) as caught:
        open_catalog(data_dir)
    message = str(caught.value)
    assert f"{LIBRARY} {INSTALLED} lacks {shown}" in message
    assert f"pip install '{LIBRARY}==" in message


def test_a_catalog_opened_before_the_name_went_refuses_to_give_a_writer(monkeypatch, data_dir):
    catalog = open_catalog(data_dir)
    try:
        monkeypatch.delattr(library._RunWriter, "_close_stream_tree")
        with pytest.raises(CatalogError, match=r"_RunWriter\._close_stream_tree"):
            catalog.writer  # noqa: B018 - creating the writer is what is refused
    finally:
        catalog.close()
