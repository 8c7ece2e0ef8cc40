"""Keeping computed traits and audiences fresh: for everyone, or for the people whose data changed.

``refresh_traits_and_audiences`` runs in two modes:

- **full** (the Dagster asset, the schedule that re-evaluates time-based audiences, a first run, a change of
  the trait definitions): traits for every live profile, audiences for everyone, and members whose profile is
  gone (merged away) or whose audience was removed from conf exit.
- **incremental** (each stream micro-batch): the profiles touched since the last refresh are read from the
  Delta change data feed of silver.events, silver.orders, silver.customers (rows whose identifier belongs
  to a profile), gold.identity_graph (profiles that gained, lost or changed identifiers, before and after
  the change) and gold.profiles (whose attributes the audiences read). Only their traits are recomputed and
  MERGEd, and only their memberships re-evaluated.

The source versions a refresh read are stored in its gold.profile_traits commit (userMetadata), so the
next incremental run reads the change feed from there: nothing is missed, and a crash before that commit
just recomputes the same people. Every input table is read at the version recorded, so the result is
the same as a full refresh at those versions with the same ``as_of`` (tested).

An incremental run writes its membership changes and its traits side by side (two MERGEs of a few
seconds each, mostly fixed cost, which overlap even on 2 cores). Its traits commit then cannot wait for
the membership commit, so when there are membership changes it also records the versions the run
started from and a token that its membership commit carries; the next run starts from those earlier
versions unless it finds that commit (``last_state``): a membership MERGE that failed after the traits
commit costs a recomputation, never a missed change.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from pipelines import io
from pipelines.audiences import current_membership, evaluate, membership_changes, update_membership
from pipelines.config import Config
from pipelines.customers import silver_customers, standardize_customers
from pipelines.orders import silver_orders, standardize_orders
from pipelines.plans import BROADCAST_ROWS, broadcast_if_small
from pipelines.profiles import customer_identifier, event_identifier, order_identifier
from pipelines.records import BRONZE_CSV_SCHEMA
from pipelines.timing import PhaseTimer
from pipelines.traits import compute_traits

SOURCE_TABLES = ["silver.events", "silver.orders", "silver.customers", "gold.identity_graph", "gold.profiles"]
STATE_KEY = "converge_traits"
MEMBERSHIP_KEY = "converge_membership"  # userMetadata of an incremental run's membership commit: its token


@dataclass
class RefreshStats(PhaseTimer):
    mode: str = "skipped"  # full | incremental | skipped (no profiles yet, or nothing changed)
    reason: str = ""
    as_of: str = ""
    profiles: int = 0  # profiles whose traits were (re)computed
    removed: int = 0  # trait rows of profiles that no longer exist
    membership_changes: int = 0  # audience entries and exits written
    versions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step


def silver_or_empty(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """A silver batch table, or an empty frame of its shape when no batch load has run yet (a lakehouse
    fed by the stream alone still gets profiles)."""
    if io.exists(spark, cfg, name):
        return io.read(spark, cfg, name)
    bronze = spark.createDataFrame([], BRONZE_CSV_SCHEMA)
    if name == "silver.customers":
        std = standardize_customers(
            bronze, cfg.sources.systems, cfg.sources.country_aliases, cfg.sources.default_phone_region
        )
        shaped = silver_customers(std)
    else:
        shaped = silver_orders(standardize_orders(bronze, list(cfg.sources.systems)))
    # only the shape: executing the standardising plan on no rows still compiles it (slow, huge)
    return spark.createDataFrame([], shaped.schema)


def last_state(spark: SparkSession, cfg: Config) -> dict | None:
    """What the last refresh recorded: source versions, as_of and the trait columns; None if none ran.

    If that refresh wrote membership changes beside its traits and their commit is not among the
    membership table's recent commits, the versions are those it started from (its people are taken
    again)."""
    if not io.exists(spark, cfg, "gold.profile_traits"):
        return None
    for commit in io.commits(spark, cfg, "gold.profile_traits", limit=1):
        try:
            state = json.loads(commit["user_metadata"] or "{}").get(STATE_KEY)
        except ValueError:
            return None
        token = (state or {}).get("membership")
        if token and not _membership_committed(spark, cfg, token):
            state = {**state, "versions": state["previous"]}
        return state
    return None


def _membership_committed(spark: SparkSession, cfg: Config, token: str) -> bool:
    """Whether gold.audience_membership has the commit carrying ``token``, among its last few (the next
    refresh looks soon after; not finding it only costs a recomputation)."""
    for commit in io.commits(spark, cfg, "gold.audience_membership", limit=10):
        try:
            if json.loads(commit["user_metadata"] or "{}").get(MEMBERSHIP_KEY) == token:
                return True
        except ValueError:
            continue
    return False


def _changed_rows(feed: DataFrame, key: str) -> DataFrame:
    """``(key)`` of the rows a range of a table's change feed really changed. A rebuild that overwrites a
    table deletes and inserts every row, most of them as they were: each row content (hashed as JSON, which
    takes maps and arrays) counts +1 where it came in and -1 where it went, and a key whose contents all
    net to zero did not change. (JSON of a map follows its entries' order: a map rebuilt in another order
    counts as a change, which costs a recomputation, never a missed one.)"""
    content = [c for c in feed.columns if c not in ("_change_type", "_commit_version", "_commit_timestamp")]
    came = F.col("_change_type").isin("insert", "update_postimage")
    return (
        feed.select(
            key,
            F.xxhash64(F.to_json(F.struct(*content))).alias("_row"),
            F.when(came, 1).otherwise(-1).alias("_n"),
        )
        .groupBy(key, "_row")
        .agg(F.sum("_n").alias("_n"))
        .filter(F.col("_n") != 0)
        .select(key)
    )


def touched_profiles(
    spark: SparkSession, cfg: Config, since: dict[str, int], until: dict[str, int], graph: DataFrame
) -> DataFrame:
    """``(profile_id)`` of every profile whose traits or memberships may differ between the two sets of
    versions, from the change data feeds. Raises ``AnalysisException`` when a feed is not available for
    the range (a table created before change data feed was on): the caller then refreshes everything."""
    changed: list[DataFrame] = []  # identifiers of the silver rows that changed
    for table, identifier in (
        ("silver.events", event_identifier()),
        ("silver.orders", order_identifier()),
        ("silver.customers", customer_identifier()),
    ):
        start, end = since.get(table, -1) + 1, until[table]
        if end >= start:
            changed.append(io.changes(spark, cfg, table, start, end).select(identifier.alias("identifier")))
    parts: list[DataFrame] = []
    if changed:
        identifiers = changed[0]
        for c in changed[1:]:
            identifiers = identifiers.unionByName(c)
        # materialised and counted first: a stream batch changes a few thousand identifiers, which are
        # broadcast into one scan of the graph instead of shuffling the whole graph to join them
        identifiers = identifiers.filter(F.col("identifier").isNotNull()).distinct().localCheckpoint()
        parts.append(
            graph.join(broadcast_if_small(identifiers), "identifier", "left_semi").select("profile_id")
        )
    # profiles whose graph rows or whose profile row changed: the stream's traits refresher may have read
    # the graph of a batch whose profile rows were not written yet; those rows' commit brings them here
    for table in ("gold.identity_graph", "gold.profiles"):
        start, end = since.get(table, -1) + 1, until[table]
        if end >= start:
            parts.append(_changed_rows(io.changes(spark, cfg, table, start, end), "profile_id"))
    if not parts:
        return spark.createDataFrame([], "profile_id string")
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out.filter(F.col("profile_id").isNotNull()).distinct()


def _state(versions: dict[str, int], as_of: str, columns: list[str], **more) -> str:
    """A refresh's state, as its gold.profile_traits commit's userMetadata."""
    return json.dumps({STATE_KEY: {"versions": versions, "as_of": as_of, "columns": columns, **more}})


_WRITERS: weakref.WeakKeyDictionary[SparkSession, SparkSession] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _membership_session(spark: SparkSession) -> SparkSession:
    """The session an incremental run of ``spark`` MERGEs its membership changes in: made once per
    refreshing session (the stream refreshes once a batch), dropped with it."""
    with _WRITERS_LOCK:
        if spark not in _WRITERS:
            _WRITERS[spark] = spark.newSession()
        return _WRITERS[spark]


def _write_membership_as(
    session: SparkSession,
    token: str,
    changes: DataFrame,
    cfg: Config,
    as_of: datetime,
    txn_app_id: str | None,
    txn_version: int | None,
) -> int:
    """The membership MERGE of an incremental run, in a session of its own (Delta's txn ids and
    userMetadata are session confs; the traits MERGE sets them at the same time), its commit carrying
    ``token``."""
    with io.user_metadata(session, json.dumps({MEMBERSHIP_KEY: token})):
        return update_membership(changes, cfg, as_of, False, txn_app_id, txn_version, session)


def _audience_inputs(
    cfg: Config, profiles: DataFrame, touched: DataFrame, rows: int
) -> tuple[DataFrame, DataFrame]:
    """The profile rows and the membership rows of the ``touched`` people (profile_id, materialised, ``rows``
    of them), materialised: what an incremental run's audiences read besides the traits."""
    people = broadcast_if_small(touched, rows)
    return (
        profiles.join(people, "profile_id", "left_semi").localCheckpoint(),
        current_membership(touched.sparkSession, cfg, touched, rows),
    )


def refresh_traits_and_audiences(
    spark: SparkSession,
    cfg: Config,
    full: bool = False,
    as_of: datetime | None = None,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
) -> RefreshStats:
    """Bring gold.profile_traits and gold.audience_membership up to date (see the module docstring)."""
    t0 = time.time()
    stats = RefreshStats()
    with stats.phase("versions"):
        versions = io.versions(spark, cfg, SOURCE_TABLES)
    stats.versions = versions
    if versions["gold.identity_graph"] < 0 or not io.exists(spark, cfg, "gold.profiles"):
        stats.reason = "no identity graph or profiles yet"
        return stats
    as_of = (as_of or datetime.now(UTC)).replace(microsecond=0, tzinfo=None)
    stats.as_of = as_of.isoformat(sep=" ")
    columns = ["profile_id", *cfg.traits.definitions, "computed_at"]
    with stats.phase("state"):
        state = None if full else last_state(spark, cfg)
    if full:
        stats.reason = "full refresh requested"
    elif state is None:
        stats.reason = "no earlier refresh"
    elif state.get("columns") != columns:
        stats.reason, state = "trait definitions changed", None

    # The tables as they are now: at least the versions recorded (a writer may have committed since).
    # Recording older versions than were read is safe: the next run's change feed starts after them and
    # recomputes those people again. (Reading exactly those versions would cost a log replay per table.)
    graph = io.read(spark, cfg, "gold.identity_graph")
    events = silver_or_empty(spark, cfg, "silver.events")
    orders = silver_or_empty(spark, cfg, "silver.orders")
    customers = silver_or_empty(spark, cfg, "silver.customers")
    profiles = io.read(spark, cfg, "gold.profiles")
    touched = None
    if state is not None:
        try:
            with stats.phase("touched"):
                touched = touched_profiles(spark, cfg, state["versions"], versions, graph).localCheckpoint()
        except AnalysisException as exc:
            stats.reason, state = f"change data feed unavailable ({str(exc).splitlines()[0][:200]})", None
    new_state = _state(versions, stats.as_of, columns)

    if touched is None:
        stats.mode = "full"
        traits = compute_traits(graph, events, orders, customers, cfg.traits, as_of).localCheckpoint()
        live = profiles.join(graph.select("profile_id").distinct(), "profile_id", "left_semi")
        evaluated = evaluate(live, traits, cfg.audiences, as_of)
        stats.membership_changes = update_membership(evaluated, cfg, as_of, True, txn_app_id, txn_version)
        with io.user_metadata(spark, new_state):
            io.overwrite(traits.select(*columns), cfg, "gold.profile_traits", txn_app_id, txn_version)
        stats.profiles = traits.count()
    else:
        stats.mode = "incremental"
        with stats.phase("traits"), ThreadPoolExecutor(1, thread_name_prefix="converge-prefetch") as pool:
            n_touched = touched.count()
            # the touched people's profile rows and memberships, which the audiences need, read beside the
            # traits computation: independent of it, and each read is mostly fixed cost (a Delta snapshot,
            # a file listing, small jobs), which overlaps with the computation even on 2 cores
            ahead = pool.submit(_audience_inputs, cfg, profiles, touched, n_touched)
            # the touched people's graph rows: one scan of the graph with a broadcast filter
            mine = graph.join(
                broadcast_if_small(touched, n_touched), "profile_id", "left_semi"
            ).localCheckpoint()
            small = mine.count() <= BROADCAST_ROWS  # then broadcast into each source's join
            gone = touched.join(
                mine.select("profile_id").distinct(), "profile_id", "left_anti"
            ).localCheckpoint()
            traits = compute_traits(
                mine, events, orders, customers, cfg.traits, as_of, profile_ids=touched, small_graph=small
            ).localCheckpoint()
            stats.profiles, stats.removed = traits.count(), gone.count()
            their_profiles, current = ahead.result()
        if stats.profiles + stats.removed == 0:
            stats.mode, stats.reason = "skipped", "no profile touched since the last refresh"
        live = their_profiles.join(
            broadcast_if_small(traits.select("profile_id"), stats.profiles), "profile_id", "left_semi"
        )
        evaluated = evaluate(live, traits, cfg.audiences, as_of).unionByName(
            gone.crossJoin(
                spark.createDataFrame([(a,) for a in cfg.audiences.definitions], "audience string")
            ).select("audience", "profile_id", F.lit(False).alias("qualifies"))
        )
        with stats.phase("audiences"):
            changes = membership_changes(evaluated, current)
            token = uuid.uuid4().hex if changes.count() else None
        if token:  # see the module docstring
            assert state is not None
            new_state = _state(versions, stats.as_of, columns, previous=state["versions"], membership=token)
        with stats.phase("write"), ThreadPoolExecutor(1, thread_name_prefix="converge-membership") as pool:
            membership = (
                pool.submit(
                    _write_membership_as,
                    _membership_session(spark),
                    token,
                    changes,
                    cfg,
                    as_of,
                    txn_app_id,
                    txn_version,
                )
                if token
                else None
            )
            with io.user_metadata(spark, new_state):
                io.merge_upsert(
                    io.upserts_and_deletes(traits.select(*columns), gone, "profile_id"),
                    cfg,
                    "gold.profile_traits",
                    ["profile_id"],
                    None,
                    txn_app_id,
                    txn_version,
                    "_delete",
                )
            stats.membership_changes = membership.result() if membership else 0
    stats.seconds = round(time.time() - t0, 2)
    return stats
