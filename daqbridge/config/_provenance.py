"""What every run records about the profile it ran with, so a migration can be traced.

A run's start document says which profile content ran (``profile_sha256``) and which stack each
instrument was on (``instrument_stacks``). ``daqbridge migration status`` counts shadow runs by
that record, and a lab can find every run an instrument made on its legacy driver after the
switch. The hash is of the settings as loaded (every key, defaults included, in a canonical
JSON form), not of the file's bytes: a comment or a re-ordered key is not a different lab, a
changed setting (a switch included) is.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from daqbridge.config._models import Profile

__all__ = ["profile_sha256", "run_provenance"]


def profile_sha256(profile: Profile) -> str:
    """Hex SHA-256 of the profile's settings in canonical JSON (sorted keys)."""
    data = profile.model_dump(mode="python")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_provenance(profile: Profile) -> dict[str, Any]:
    """Start-document metadata: ``profile_sha256`` and ``instrument_stacks`` (enabled
    instrument id -> "legacy", "shadow" or "native", as the profile declares it)."""
    return {
        "profile_sha256": profile_sha256(profile),
        "instrument_stacks": {inst.id: inst.stack for inst in profile.enabled_instruments()},
    }
