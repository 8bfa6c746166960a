"""The lab's catalog: databroker 2 / Tiled, written crash-safely through a write-ahead log.

    catalog = open_catalog()            # embedded SQLite catalog in $DAQBRIDGE_DATA
    RE.subscribe(catalog.writer)        # WAL first, Tiled in batches on a worker thread
    catalog.client[uid].primary.read()  # xarray Dataset
    catalog.close()
    open_run_list(None, None, data_dir).runs(20)  # summaries only: no Bluesky run clients

See docs/catalog.md for the durability guarantees and the recovery rules.
"""

from ._catalog import Catalog, RunSummary, UnknownRun, open_catalog, open_run_list
from ._embedded import DATA_ENV, default_data_dir, resolve_data_dir
from ._recovery import RecoveredRun
from ._sqlite import LOCK_TIMEOUT, CatalogLocked
from ._wal import LogContents, WriteAheadLog, read_log
from ._writer import CatalogWriter, WriterStats

__all__ = [
    "DATA_ENV",
    "LOCK_TIMEOUT",
    "Catalog",
    "CatalogLocked",
    "CatalogWriter",
    "LogContents",
    "RecoveredRun",
    "RunSummary",
    "UnknownRun",
    "WriteAheadLog",
    "WriterStats",
    "default_data_dir",
    "open_catalog",
    "open_run_list",
    "read_log",
    "resolve_data_dir",
]
