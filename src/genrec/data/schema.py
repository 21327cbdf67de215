"""The canonical tables every source is turned into, and every later stage reads.

Events: one row per logged action in a paginated feed. Items: the catalog.
Ids are int64: adapters map string ids of real sources to integers and keep the map beside the data.
"""

from __future__ import annotations

import pyarrow as pa

# Intensity order used everywhere a page's items are ranked: order > cart > click > expose.
EVENT_TYPES = ("expose", "click", "cart", "order")
INTENSITY = {name: rank for rank, name in enumerate(EVENT_TYPES)}
POSITIVE_EVENT_TYPES = ("click", "cart", "order")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.int64(), nullable=True),
        pa.field("position", pa.int32(), nullable=True),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),  # a path: "Beauty > Makeup > Nails"
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("image_path", pa.string()),  # relative to the items folder
    ]
)

# Optional (the simulator with simulator.pseudo_exposures): items the serving system ranked for a request but
# did not show, best first (rank counts from the page's first slot, so it starts at the page size).
PSEUDO_EXPOSURES_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)

CATEGORY_SEP = " > "

# File names inside the folders the ingest stage writes.
EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
PSEUDO_EXPOSURES_FILE = "pseudo_exposures.parquet"
MANIFEST_FILE = "manifest.json"
