"""The text an item is embedded from: one documented template over whatever fields the item has.

    "<title>. Brand: <brand>. Category: <a > b > c>. <description>"

Missing fields are left out with their label. An item with none of them has no text.
"""

from __future__ import annotations

import math


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def item_text(title=None, brand=None, category=None, description=None) -> str:
    """The template above; '' when the item has no text at all."""
    parts = []
    if _present(title):
        parts.append(f"{str(title).strip()}.")
    if _present(brand):
        parts.append(f"Brand: {str(brand).strip()}.")
    if _present(category):
        parts.append(f"Category: {str(category).strip()}.")
    if _present(description):
        parts.append(str(description).strip())
    return " ".join(parts)
