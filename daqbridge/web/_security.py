"""Who may act through the panel.

The rule: a panel bound to a loopback address (127.0.0.0/8, ::1) is reachable only from this
machine, where anyone can already reach the lab's queue server; it acts without a token unless
one was given. A panel bound to any other address (0.0.0.0 included, which also answers on
127.0.0.1) requires the token for every action that moves, writes or starts something, whoever
connects. ``--read-only`` refuses every action. Views never need a token.

Browsers let any web page send requests to 127.0.0.1: actions must be JSON posts from the
panel's own origin, which another site's page cannot make without a CORS preflight that this
server never grants; and a panel without a token takes actions only addressed to a loopback
name, so a site whose name is made to point at 127.0.0.1 (DNS rebinding) cannot act either.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

TOKEN_HEADER = "X-Daqbridge-Token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    host: str
    token: str | None
    read_only: bool

    @classmethod
    def for_bind(cls, host: str, token: str | None, read_only: bool) -> Guard:
        """A token is made up when the address needs one and none was given (printed once)."""
        if token is None and not read_only and not is_loopback(host):
            token = secrets.token_urlsafe(24)
        return cls(host, token, read_only)

    @property
    def token_required(self) -> bool:
        return self.token is not None

    def refusal(
        self, given: str | None, origin: str | None, own_origins: set[str], host_header: str = ""
    ) -> str | None:
        """Why an action is refused (None: allowed)."""
        if self.read_only:
            return (
                "this panel is read-only (`daqbridge web --read-only`): it shows the lab but "
                "queues, starts and stops nothing. Use a panel started without --read-only."
            )
        if origin and origin not in own_origins:
            return (
                f"an action from the page of another site ({origin}) is refused. Use the panel's "
                "own page."
            )
        if self.token is None and not is_loopback(_hostname(host_header)):
            # A loopback panel without a token trusts this machine only: a request that names
            # another host came through a name that points here (DNS rebinding), not from it.
            return (
                f"an action addressed to {host_header!r} is refused: this panel without a token "
                "takes actions only at a loopback address. Open it at http://127.0.0.1:PORT/."
            )
        if self.token is not None:
            if not given:
                return (
                    f"this panel listens on {self.host}, not only on this machine: every action "
                    "needs the panel's token. Enter the token `daqbridge web` printed (or gave "
                    "with --token) in the token field."
                )
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return "the token is wrong. Enter the token `daqbridge web` printed at start."
        return None


def _hostname(host_header: str) -> str:
    """``127.0.0.1:8765`` -> ``127.0.0.1``; ``[::1]:8765`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
