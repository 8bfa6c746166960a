"""Worker start-up of `daqbridge lab up` (bluesky-queueserver loads every *.py here, in order).

The lab is the profile named by $DAQBRIDGE_PROFILE (unset: the embedded simulated lab), started
with the same session code as the IPython profile, so the queue and the prompt cannot drift
apart. The queue server takes its plans and devices from these globals; `daqbridge lab up` sets
the environment (profile, data directory, document proxy address) before it starts the manager.
"""

from daqbridge.cli._lab import start_lab_worker

globals().update(start_lab_worker())
del start_lab_worker
