"""Checking the category names a recipe gives against the names a plugin knows.

The names themselves belong to the plugin that reads the files (the built-ins' 345 Quick,
Draw! names are in qdplugins/categories.txt); the rule for checking them is shared, so every
plugin that takes a `category` refuses the same mistakes with the same line.
"""

from __future__ import annotations

import difflib
from typing import Union

from .errors import InputError, RecipeError

ALL = "all"


def check_categories(
    value: Union[str, list[str]], known: list[str], who: str, listed_in: str = "qdplugins/categories.txt"
) -> list[str]:
    """The names `value` gives ("all": every known one), or an error naming the mistake.

    An unknown name is an InputError suggesting the closest known ones; an empty list or a
    name given twice is a RecipeError. `who` starts the line; `listed_in` tells where the
    known names can be read.
    """
    if value == ALL:
        return list(known)
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise RecipeError(f"{who}: `category` is an empty list; name at least one category")
    known_set = set(known)
    for name in names:
        if name not in known_set:
            # Suggest case-insensitively: people write "Coffee Cup" or "coffee_cup".
            lowered = {k.lower(): k for k in known}
            key = name.lower().replace("_", " ").replace("-", " ")
            close = [lowered[c] for c in difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)]
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "no close name"
            raise InputError(
                f"{who}: unknown Quick, Draw! category {name!r} ({hint}); the {len(known)} names are in {listed_in}"
            )
    if len(set(names)) != len(names):
        raise RecipeError(f"{who}: `category` names a category twice: {names}")
    return names
