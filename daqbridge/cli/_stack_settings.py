"""Which settings of a profile entry each stack's drivers really read.

``daqbridge migration status`` tells a lab which settings only one stack reads, so nobody
deletes a setting that a rollback needs, or trusts one that the other driver ignores. A
hand-kept list of those drifted (issue 18: it still called the Elliptec limits native-only once
the legacy adapter applied them), so nothing here names a setting: the builders are watched
while they build. ``watched`` copies an entry into models that record every field read from
them; both stacks build from such a copy; a setting was read by a stack when its builders read
that field, something inside it, or a table holding it that they handed on whole (the ``legacy``
table becomes the legacy driver's options with ``model_dump``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

SettingPath = tuple[Any, ...]
"""Where a setting sits in an entry: ``("elliptec", "addresses", 0, "low_limit")``."""

Entry = TypeVar("Entry", bound=BaseModel)


@dataclass
class SettingsRead:
    """What one stack's builders read from an entry."""

    fields: set[SettingPath] = field(default_factory=set)
    """Every field read, as its path."""
    tables: set[SettingPath] = field(default_factory=set)
    """Tables handed on whole (dumped or iterated): everything inside them counts as read."""

    def covers(self, path: SettingPath) -> bool:
        """Whether the setting at ``path`` was read: itself, a field inside it, or a table
        holding it handed on whole. Reading a table only to see whether it is there reads
        none of its settings."""
        if any(path[: len(table)] == table for table in self.tables):
            return True
        return any(read[: len(path)] == path for read in self.fields)


def watched(entry: Entry) -> tuple[Entry, SettingsRead]:
    """A copy of ``entry`` that records what is read from it, and the record.

    The copy is an instance of a subclass of each model, so the builders' ``isinstance``
    dispatch and ``model_copy`` work on it as on the entry itself (a copy stays watched).
    """
    read = SettingsRead()
    return _watch(entry, (), read), read


def _watch(model: Entry, path: SettingPath, read: SettingsRead) -> Entry:
    cls = type(model)
    names = frozenset(cls.model_fields)

    class Watched(cls):  # type: ignore[valid-type, misc]
        def __getattribute__(self, name: str) -> Any:
            if name in names:
                read.fields.add((*path, name))
            return super().__getattribute__(name)

        def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            read.tables.add(path)
            return super().model_dump(*args, **kwargs)

        def model_dump_json(self, *args: Any, **kwargs: Any) -> str:
            read.tables.add(path)
            return super().model_dump_json(*args, **kwargs)

        def __iter__(self) -> Any:
            read.tables.add(path)
            return super().__iter__()

    Watched.__name__, Watched.__qualname__ = cls.__name__, cls.__qualname__
    Watched.__module__ = cls.__module__
    values = {name: _watch_value(model.__dict__[name], (*path, name), read) for name in names}
    return Watched.model_construct(_fields_set=set(model.model_fields_set), **values)


def _watch_value(value: Any, path: SettingPath, read: SettingsRead) -> Any:
    if isinstance(value, BaseModel):
        return _watch(value, path, read)
    if isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
        return [_watch_value(item, (*path, i), read) for i, item in enumerate(value)]
    return value
