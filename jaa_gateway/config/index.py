"""Look-up indexes over a Config's lists: by id, badge, phone, a device's person, a door.

Look-ups run per event (a badge at a door, an SMS reply, a heartbeat); a scan of 10,000 people
would not do, so each index is built once per model, on its first use.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

# per-Config look-up indexes, kept outside the model: pydantic compares private attributes in
# ==, so a cache on the instance would make two equal configs unequal after a look-up
_INDEXES: dict[int, dict[str, tuple[object, dict[str, Any]]]] = {}
# what each index is keyed on
_INDEX_KEYS: dict[str, Callable[[Any], Iterable[str]]] = {
    "id": lambda item: (item.id,),
    "badge": lambda person: [b.upper() for b in person.badges],
    "phone": lambda person: (person.phone,),
    "person": lambda device: (device.person,),
    "door": lambda location: location.doors,
}


def lookup(model: BaseModel, attr: str, key: str, by: str = "id") -> Any:
    """Look an item of `model`'s list `attr` up by `by` (an index built once per model)."""
    items = getattr(model, attr)
    indexes = _INDEXES.get(id(model))
    if indexes is None:
        indexes = _INDEXES[id(model)] = {}
        # dropped with the model, so a later object reusing its id() starts afresh
        weakref.finalize(model, _INDEXES.pop, id(model), None)
    name = f"{attr}:{by}"
    cached = indexes.get(name)
    # keyed on the list object too: a model_copy(update=...) that replaces a list gets a new
    # object id anyway, but this keeps the index honest whatever happens to the model
    if cached is None or cached[0] is not items:
        index: dict[str, Any] = {}
        for item in items:
            for k in _INDEX_KEYS[by](item):
                index.setdefault(k, item)
        cached = (items, index)
        indexes[name] = cached
    return cached[1].get(key)
