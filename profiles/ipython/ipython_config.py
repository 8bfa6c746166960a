"""IPython settings of the daqbridge profile: the command history goes to the lab's data
directory, not into this directory (which is in the git checkout).

IPython opens its history database before any startup file runs, so only a config file can move
it. The data directory is the lab's: ``$DAQBRIDGE_DATA``, else the profile's ``lab.data_dir``
(the same rule as the catalog), so each lab keeps its own history beside its runs.
"""

import os
import sys
from pathlib import Path


def _history_file() -> Path:
    env = os.environ.get("DAQBRIDGE_DATA", "").strip()
    if env:
        data = Path(env).expanduser().absolute()
    else:
        try:
            from daqbridge.cli._session import resolve_profile
            from daqbridge.config import PathExists, load_profile

            profile = load_profile(resolve_profile(), device_cache=PathExists())
            data = profile.data_path().expanduser().absolute()
        except Exception as exc:  # noqa: BLE001 - a broken profile: 00-daqbridge.py says why
            from IPython.paths import get_ipython_dir

            data = Path(get_ipython_dir()) / "daqbridge"
            print(
                f"daqbridge: the lab profile did not load ({type(exc).__name__}): command "
                f"history in {data}",
                file=sys.stderr,
            )
    history = data / "ipython" / "history.sqlite"
    history.parent.mkdir(parents=True, exist_ok=True)
    return history


c = get_config()  # noqa: F821 - IPython's config loader provides it
c.HistoryManager.hist_file = str(_history_file())
del _history_file
