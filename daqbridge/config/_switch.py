"""Moving one instrument between the stacks by editing its profile entry, and only that.

``daqbridge config switch ID --stack legacy|shadow|native`` changes the entry's ``stack`` key
and nothing else: comments, key order and quoting stay as the lab wrote them (tomlkit edits the
file in place), and settings that only one stack reads (``polling_rate_hz``, the ``legacy``
table) stay in the entry, so switching back restores exactly the file that ran before.
Legacy -> shadow -> native -> legacy gives back the original bytes.

An Elliptec bus is one entry, so switching the bus switches all its mounts; naming a mount or a
``_legacy`` twin is refused with the id to use instead, because the person asked to move less
than would move. The edited profile is checked with the same rules as ``config check`` before
the file is replaced (atomically), so a switch never leaves a profile that does not load.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import String, StringType, Table

from daqbridge.config._models import LEGACY_DRIVERS, STACKS, InstrumentBase, Profile
from daqbridge.errors import ConfigError

__all__ = ["StackSwitch", "switch_stack"]


@dataclass
class StackSwitch:
    """What ``switch_stack`` did (or, with ``write=False``, would do)."""

    path: Path
    instrument: str
    """Id of the ``[[instruments]]`` entry that switched."""
    driver: str
    before: str
    after: str
    devices_before: list[str] = field(default_factory=list)
    devices_after: list[str] = field(default_factory=list)
    text: str = ""
    """The profile as written (the original text when nothing changed)."""

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def format(self) -> str:
        if not self.changed:
            return f"{self.instrument} is already on the {self.after} stack; {self.path} unchanged."
        return (
            f"switched {self.instrument} ({self.driver}) from {self.before} to {self.after} in "
            f"{self.path}\n  devices before: {', '.join(self.devices_before) or 'none'}\n"
            f"  devices after:  {', '.join(self.devices_after) or 'none'}\n"
            f"  switch back with: daqbridge config switch {self.instrument} --stack {self.before}"
        )


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _entry(profile: Profile, asked: str, label: str) -> tuple[int, InstrumentBase]:
    """The entry ``asked`` names; a part or twin id is refused with the entry's id."""
    for i, inst in profile.iter_instruments():
        if inst.id == asked:
            return i, inst
    for inst in profile.instruments:
        for stack in STACKS:  # the devices the entry has on any stack, twins included
            for ref in inst.model_copy(update={"stack": stack}).devices():
                if ref.id == asked:
                    what = (
                        f"{ref.part!r} on {inst.driver} {inst.id!r}"
                        if ref.part is not None
                        else f"the legacy twin of {inst.id!r}"
                    )
                    raise ConfigError(
                        f"{asked!r} is {what}; the stack belongs to the whole entry, so every "
                        f"device of {inst.id!r} ({', '.join(inst.parts()) or 'one device'}) "
                        "would switch with it.",
                        file=label,
                        key="instruments",
                        instrument=inst.id,
                        fix=f"switch the entry: daqbridge config switch {inst.id} --stack ...",
                    )
    ids = [inst.id for inst in profile.instruments]
    raise ConfigError(
        f"no instrument {asked!r} in the profile.",
        file=label,
        key="instruments",
        fix=f"{_suggest(asked, ids)}instrument ids: {', '.join(ids) or 'none'}.",
    )


def _stack_item(old: Any, stack: str) -> Any:
    """The new ``stack`` value, quoted and commented as the old one was."""
    if isinstance(old, String):
        literal = old.type in (StringType.SLL, StringType.MLL)
        new = tomlkit.string(stack, literal=literal)
    else:
        new = tomlkit.item(stack)
    new.trivia.indent = old.trivia.indent
    new.trivia.comment_ws = old.trivia.comment_ws
    new.trivia.comment = old.trivia.comment
    new.trivia.trail = old.trivia.trail
    return new


def _set_stack(table: Table, stack: str) -> None:
    if "stack" in table:
        table["stack"] = _stack_item(table.item("stack"), stack)
        return
    # Absent means native: write it where a person looks for it, right after the driver.
    container = table.value
    after = [i for i, (key, _) in enumerate(container.body) if key is not None and key == "driver"]
    try:
        container._insert_at(after[0] + 1, "stack", stack)
    except (AttributeError, IndexError, KeyError, ValueError):  # no driver key, or a new tomlkit
        table.add("stack", stack)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "profile not found",
            file=str(path),
            fix="give the path of the lab's profile (--profile FILE or $DAQBRIDGE_PROFILE).",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the profile: {exc}",
            file=str(path),
            fix="check the path, the permissions, and that the file is UTF-8 text.",
        ) from None


def _write(path: Path, text: str) -> None:
    """Replace the file in one step, so a crash leaves the old profile or the new one."""
    try:
        mode = path.stat().st_mode & 0o7777
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(
            f"cannot write the profile: {exc.strerror or exc}",
            file=str(path),
            fix="check that the file and its directory are writable by this user.",
        ) from None


def switch_stack(path: str | os.PathLike, instrument: str, stack: str, *, write: bool = True):
    """Put instrument ``instrument`` of the profile at ``path`` on ``stack``.

    Only the entry's ``stack`` key changes. Raises ConfigError (nothing written) for an unknown
    stack or id, a driver that has no legacy driver, or a result the profile rules refuse.
    """
    from daqbridge.config._load import profile_from_dict
    from daqbridge.config._validate import raise_for_issues, validate_profile

    path = Path(os.fspath(path))
    label = str(path)
    if stack not in STACKS:
        raise ConfigError(
            f"unknown stack {stack!r}.",
            key="--stack",
            fix=f"{_suggest(stack, list(STACKS))}stacks: {', '.join(STACKS)}.",
        )
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: {exc}",
            file=label,
            fix="run `daqbridge config check` on it and fix the syntax first.",
        ) from None
    profile = profile_from_dict(data, file=label, path=path, text=text)
    index, inst = _entry(profile, instrument, label)
    if stack != "native" and inst.driver not in LEGACY_DRIVERS:
        raise ConfigError(
            f"{inst.driver} instrument {inst.id!r} has no legacy driver, so it cannot run on "
            f"the {stack} stack.",
            file=label,
            key=f"instruments[{index}].stack",
            instrument=inst.id,
            fix=f"legacy drivers exist for: {', '.join(sorted(LEGACY_DRIVERS))}.",
        )
    result = StackSwitch(
        path,
        inst.id,
        inst.driver,
        inst.stack,
        stack,
        devices_before=[ref.id for ref in inst.devices()],
        devices_after=[ref.id for ref in inst.model_copy(update={"stack": stack}).devices()],
        text=text,
    )
    if not result.changed:
        return result
    try:
        doc = tomlkit.parse(text)
        table = doc["instruments"][index]  # type: ignore[index]
    except (TOMLKitError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"cannot edit entry instruments[{index}] ({inst.id!r}) in place: {exc}",
            file=label,
            key=f"instruments[{index}]",
            fix=f'set stack = "{stack}" in that entry by hand.',
        ) from None
    if not isinstance(table, Table) or table.get("id") != inst.id:
        raise ConfigError(
            f"entry instruments[{index}] is not written as a [[instruments]] table, so it "
            "cannot be edited in place.",
            file=label,
            key=f"instruments[{index}]",
            fix=f'set stack = "{stack}" in the entry of {inst.id!r} by hand.',
        )
    _set_stack(table, stack)
    new_text = tomlkit.dumps(doc)
    switched = profile_from_dict(tomllib.loads(new_text), file=label, path=path, text=new_text)
    raise_for_issues(validate_profile(switched))
    result.text = new_text
    if write:
        _write(path, new_text)
    return result
