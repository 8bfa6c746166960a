"""The lab's control panel in a browser (``daqbridge web``): on the lab server, in FastAPI."""

from daqbridge.web._app import create_app
from daqbridge.web._history import History
from daqbridge.web._hub import Hub
from daqbridge.web._lab_link import LabLink
from daqbridge.web._security import Guard, is_loopback

__all__ = ["Guard", "History", "Hub", "LabLink", "create_app", "is_loopback"]
