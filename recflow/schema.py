"""The recflow data schema: interaction events, the item catalog and users (versioned; docs/schema.md).

Three tables, each stored as Parquet with the schema name and version in the file's key-value metadata:

* ``events``: one row per interaction (impression, view, click, add_to_cart, remove_from_cart, purchase).
* ``items``: the catalog.
* ``users``: user attributes.

Only a handful of fields are required (ids, event type, timestamp), so any shop's log fits; every other field is
optional and every step of the platform degrades gracefully when it is absent. This module is the single source
of truth: the validator, the simulator, the loaders, the Transform step and the serving feedback log all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import pyarrow as pa

SCHEMA_VERSION = "1.0"
METADATA_SCHEMA_KEY = b"recflow.schema"
METADATA_VERSION_KEY = b"recflow.schema_version"

TableKind = Literal["events", "items", "users"]
TABLE_KINDS: tuple[TableKind, ...] = ("events", "items", "users")

TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")


class EventType(StrEnum):
    """The kinds of interaction event, in funnel order."""

    IMPRESSION = "impression"
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    PURCHASE = "purchase"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
#: Event types that count as positive feedback for training, weakest first.
POSITIVE_EVENT_TYPES: tuple[str, ...] = ("click", "add_to_cart", "purchase")
DEVICES: tuple[str, ...] = ("desktop", "mobile", "tablet")


@dataclass(frozen=True)
class Field:
    """One column of a recflow table and the rules a valid value follows."""

    name: str
    type: pa.DataType
    required: bool
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    allowed: tuple[str, ...] | None = None
    unique: bool = False

    @property
    def kind(self) -> str:
        """A short type name for error messages and docs."""
        if pa.types.is_timestamp(self.type):
            return "timestamp"
        if pa.types.is_integer(self.type):
            return "integer"
        if pa.types.is_floating(self.type):
            return "number"
        return "string"


EVENT_FIELDS: tuple[Field, ...] = (
    Field("event_id", pa.string(), False, "Unique id of the event; duplicates are rejected.", unique=True),
    Field("event_type", pa.string(), True, "One of " + ", ".join(EVENT_TYPES) + ".", allowed=EVENT_TYPES),
    Field("timestamp", TIMESTAMP_TYPE, True, "When the event happened (UTC, millisecond precision)."),
    Field("user_id", pa.string(), True, "Who acted (a stable pseudonymous id)."),
    Field("item_id", pa.string(), True, "Which catalog item; must exist in items when a catalog is given."),
    Field("session_id", pa.string(), False, "Browsing session the event belongs to."),
    Field("request_id", pa.string(), False, "Recommendation request (slate) that showed the item, if any."),
    Field("position", pa.int32(), False, "0-based position of the item in the slate it was shown in.", minimum=0),
    Field("price", pa.float64(), False, "Unit price of the item at event time.", minimum=0.0),
    Field("order_value", pa.float64(), False, "Total value of a purchase (purchase events).", minimum=0.0),
    Field("dwell_time_s", pa.float64(), False, "Seconds spent on the item page (view events).", minimum=0.0),
    Field("hour", pa.int8(), False, "Local hour of day, 0-23.", minimum=0, maximum=23),
    Field("weekday", pa.int8(), False, "Local weekday, 0 = Monday ... 6 = Sunday.", minimum=0, maximum=6),
    Field("device", pa.string(), False, "Device class, e.g. " + ", ".join(DEVICES) + "."),
    Field("region", pa.string(), False, "Coarse region of the user."),
    Field("policy_id", pa.string(), False, "Id of the policy that chose the slate (logging policy)."),
    Field(
        "propensity",
        pa.float64(),
        False,
        "Probability with which the logging policy showed this item at this position, in (0, 1].",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
    ),
    Field("variant", pa.string(), False, "A/B test variant that served the slate (serving sets it)."),
)

ITEM_FIELDS: tuple[Field, ...] = (
    Field("item_id", pa.string(), True, "Unique item id.", unique=True),
    Field("category", pa.string(), False, "Product category."),
    Field("price", pa.float64(), False, "Current list price.", minimum=0.0),
    Field("brand", pa.string(), False, "Brand name."),
    Field("attributes", pa.string(), False, "Free-form attributes as 'key=value' pairs separated by ';'."),
    Field("created_at", TIMESTAMP_TYPE, False, "When the item entered the catalog (UTC)."),
)

USER_FIELDS: tuple[Field, ...] = (
    Field("user_id", pa.string(), True, "Unique user id.", unique=True),
    Field("segment", pa.string(), False, "Marketing segment or other coarse attribute."),
    Field("region", pa.string(), False, "Home region."),
    Field("signup_at", TIMESTAMP_TYPE, False, "When the user signed up (UTC)."),
)

FIELDS: dict[TableKind, tuple[Field, ...]] = {"events": EVENT_FIELDS, "items": ITEM_FIELDS, "users": USER_FIELDS}
#: Default file name of each table inside a dataset directory.
FILE_NAMES: dict[TableKind, str] = {"events": "events.parquet", "items": "items.parquet", "users": "users.parquet"}


def fields(kind: TableKind) -> tuple[Field, ...]:
    """The fields of one table."""
    return FIELDS[kind]


def required_columns(kind: TableKind) -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS[kind] if f.required)


def arrow_schema(kind: TableKind, columns: list[str] | None = None) -> pa.Schema:
    """The Arrow schema of ``kind`` restricted to ``columns`` (all fields when None), with recflow metadata."""
    chosen = [f for f in FIELDS[kind] if columns is None or f.name in columns]
    return pa.schema(
        [pa.field(f.name, f.type, nullable=not f.required) for f in chosen],
        metadata={METADATA_SCHEMA_KEY: kind.encode(), METADATA_VERSION_KEY: SCHEMA_VERSION.encode()},
    )
