"""Worker start-up, second part: what the web panel (`daqbridge web`) asks the worker for.

Runs after 00-daqbridge.py, in the same namespace: the runtime and the RunEngine are there.
"""

from daqbridge.web._worker import panel_functions

globals().update(panel_functions(globals()))
del panel_functions
