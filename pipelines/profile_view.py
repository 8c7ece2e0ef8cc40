"""One person's profile as ``converge profile <identifier> [--as-of TIMESTAMP]`` shows it.

Identifiers, golden attributes with their provenance, computed traits, audiences (with entered/exited) and
the latest events; with ``as_of``, every table is read as it was then (Delta time travel), so a profile
can be shown as it stood before a merge, a deletion or a change of survivorship rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import PROFILE_ATTRIBUTES, Config
from pipelines.profiles import ADDRESS_FIELDS, event_identifier


@dataclass
class ProfileView:
    identifier: str
    as_of: str | None
    profile_id: str | None = None
    identifiers: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)  # attribute -> {value, source_system, ...}
    activity: dict[str, Any] = field(default_factory=dict)  # first/last seen, orders, events
    traits: dict[str, Any] = field(default_factory=dict)
    audiences: list[dict[str, Any]] = field(default_factory=list)
    recent_events: list[dict[str, Any]] = field(default_factory=list)


def _table(spark: SparkSession, cfg: Config, name: str, as_of: str | None) -> DataFrame | None:
    if not io.exists(spark, cfg, name):
        return None
    if as_of is None:
        return io.read(spark, cfg, name)
    try:
        return io.read_as_of(spark, cfg, name, as_of)
    except FileNotFoundError:
        return None  # the table did not exist yet then


def profile_view(
    spark: SparkSession, cfg: Config, identifier: str, as_of: str | None = None, events: int = 10
) -> ProfileView:
    """The profile ``identifier`` (``type:value``, normalised) belongs to, now or at ``as_of``."""
    view = ProfileView(identifier, as_of)
    graph = _table(spark, cfg, "gold.identity_graph", as_of)
    if graph is None:
        return view
    hit = graph.filter(F.col("identifier") == identifier).select("profile_id").first()
    if hit is None:
        return view
    view.profile_id = hit["profile_id"]
    view.identifiers = sorted(
        r["identifier"] for r in graph.filter(F.col("profile_id") == view.profile_id).collect()
    )
    profiles = _table(spark, cfg, "gold.profiles", as_of)
    row = profiles.filter(F.col("profile_id") == view.profile_id).first() if profiles is not None else None
    if row is not None:
        p = row.asDict(recursive=True)
        prov = p.get("provenance") or {}
        for a in PROFILE_ATTRIBUTES:
            value = {f: p[f] for f in ADDRESS_FIELDS} if a == "address" else p.get(a)
            view.attributes[a] = {
                "value": value,
                **{k: v for k, v in (prov.get(a) or {}).items() if k != "value"},
            }
        view.activity = {
            k: p.get(k)
            for k in (
                "first_seen",
                "last_seen",
                "order_count",
                "lifetime_value",
                "event_count",
                "source_records",
            )
        }
    traits = _table(spark, cfg, "gold.profile_traits", as_of)
    t = traits.filter(F.col("profile_id") == view.profile_id).first() if traits is not None else None
    if t is not None:
        view.traits = {k: v for k, v in t.asDict().items() if k != "profile_id"}
    membership = _table(spark, cfg, "gold.audience_membership", as_of)
    if membership is not None:
        view.audiences = [
            r.asDict()
            for r in membership.filter(F.col("profile_id") == view.profile_id)
            .orderBy(F.desc("is_member"), "audience")
            .select("audience", "is_member", "entered_at", "exited_at")
            .collect()
        ]
    silver = _table(spark, cfg, "silver.events", as_of)
    if silver is not None and events:
        mine = spark.createDataFrame([(i,) for i in view.identifiers], "identifier string")
        view.recent_events = [
            r.asDict()
            for r in silver.withColumn("identifier", event_identifier())
            .join(F.broadcast(mine), "identifier", "left_semi")
            .orderBy(F.desc("event_time"), "message_id")
            .select("event_time", "type", F.coalesce("event", "name").alias("name"), "message_id")
            .limit(events)
            .collect()
        ]
    return view


def render(view: ProfileView) -> str:
    when = f" as of {view.as_of}" if view.as_of else ""
    if view.profile_id is None:
        return f"{view.identifier}: no profile{when}"
    lines = [f"profile {view.profile_id}{when}  ({view.identifier})", "", "identifiers:"]
    lines += [f"  {i}" for i in view.identifiers]
    lines += ["", "attributes (value  <- source system, record, updated_at, rule):"]
    for a, p in view.attributes.items():
        src = ", ".join(
            str(p.get(k)) for k in ("source_system", "source_record", "updated_at", "rule") if p.get(k)
        )
        lines.append(f"  {a:<14} {p['value']!s:<40} <- {src or '-'}")
    lines += ["", "activity:"] + [f"  {k:<14} {v}" for k, v in view.activity.items()]
    if view.traits:
        lines += ["", "traits:"] + [f"  {k:<30} {v}" for k, v in view.traits.items()]
    lines += ["", "audiences:"]
    for m in view.audiences:
        state = (
            f"member since {m['entered_at']}"
            if m["is_member"]
            else f"left {m['exited_at']} (entered {m['entered_at']})"
        )
        lines.append(f"  {m['audience']:<24} {state}")
    if not view.audiences:
        lines.append("  (none)")
    lines += ["", "recent events:"] + [
        f"  {e['event_time']}  {e['type']:<9} {e['name'] or ''}  {e['message_id']}"
        for e in view.recent_events
    ]
    return "\n".join(lines)
