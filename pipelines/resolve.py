"""Resolve any table of person records with the same resolver the pipeline runs (`converge resolve`).

A data team brings a CSV, Parquet or Delta table of person records and a YAML file that maps its columns to
Converge's canonical customer columns (the same mapping as ``sources.systems`` in conf/base.yaml):

    system: people                # record ids become identifiers people_id:<id>
    columns: {source_id: id, first_name: fname, last_name: lname, email: email, phone: phone,
              street: address, city: city, postal_code: zip, country: country, date_of_birth: dob}
    identity: {...}               # optional: overrides of conf/identity.yaml, e.g. probabilistic.threshold

The records go through the silver normalisation (emails, E.164 phones, names, dates), then identifier
observations, deterministic and probabilistic edges, guards and components, exactly as in the pipeline;
the output is record id -> profile id (plus the merge evidence), so it can be scored against their labels.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config, ConfigError, IdentityConfig, SourceSystemConfig, _Strict, deep_merge
from pipelines.customers import silver_customers, standardize_customers
from pipelines.events import SILVER_COLUMNS as EVENT_COLUMNS
from pipelines.events import silver_events
from pipelines.identity import IdentityResult, all_edges, identifier_observations, identity_graph
from pipelines.ingest import parse_configured
from pipelines.records import csv_to_bronze


class ResolveConfig(_Strict):
    system: str = Field("records", pattern=r"^[a-z][a-z0-9_]*$")
    columns: dict[str, str]
    identity: dict[str, Any] = {}


def load_resolve_config(path: Path, cfg: Config) -> tuple[ResolveConfig, SourceSystemConfig, IdentityConfig]:
    """The resolve YAML, validated, with the identity settings it overrides merged over the project's."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        rc = ResolveConfig.model_validate(raw)
        system = SourceSystemConfig(columns=rc.columns)
        identity = deep_merge(cfg.identity.model_dump(mode="json"), rc.identity)
        identity["identifier_types"].setdefault(
            f"{rc.system}_id", {"normalizer": "trim", "max_per_profile": 1000, "priority": 2}
        )
        return rc, system, IdentityConfig.model_validate(identity)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: resolve configuration not found") from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def read_records(spark: SparkSession, source: str) -> DataFrame:
    """A CSV file or folder, a Parquet file or folder, a Delta table path or a registered table name;
    every column as a string, as bronze keeps values."""
    p = Path(source)
    if (p / "_delta_log").is_dir():
        df = spark.read.format("delta").load(str(p))
    elif p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet"))):
        df = spark.read.parquet(str(p))
    elif p.suffix in (".csv", ".txt") or (p.is_dir() and any(p.glob("*.csv"))):
        df = spark.read.option("header", "true").option("inferSchema", "false").csv(str(p))
    elif not p.exists() and spark.catalog.tableExists(source):
        df = spark.table(source)
    else:
        raise ValueError(f"{source}: not a CSV, Parquet or Delta table, nor a registered table")
    return df.select(*[F.col(f"`{c}`").cast("string").alias(c) for c in df.columns])


def customers_from_records(
    records: DataFrame, system: str, mapping: SourceSystemConfig, cfg: Config
) -> DataFrame:
    """Person records -> silver.customers rows, through the pipeline's own standardisation.

    Raises when the mapping names a column the records lack; rows without a record id are dropped by the
    same rule as in silver (``missing_source_id``).
    """
    missing = sorted(set(mapping.columns.values()) - set(records.columns))
    if missing:
        raise ValueError(f"columns {missing} are mapped but not in the input (it has {records.columns})")
    payload = F.map_from_arrays(
        F.array(*[F.lit(c) for c in records.columns]), F.array(*[F.col(f"`{c}`") for c in records.columns])
    )
    bronze = records.select(
        F.lit(system).alias("feed"),
        F.lit("resolve").alias("source_file"),
        F.current_timestamp().alias("loaded_at"),
        payload.alias("payload"),
        F.lit(None).cast("string").alias("corrupt_record"),
    )
    standardized = standardize_customers(
        bronze, {system: mapping}, cfg.sources.country_aliases, cfg.sources.default_phone_region
    )
    return silver_customers(standardized)


def silver_from_landing(spark: SparkSession, cfg: Config, landing: Path) -> tuple[DataFrame, DataFrame]:
    """``(customers, events)`` as silver holds them, straight from a landing folder (batch, no Delta writes):
    the same standardisation and parsing as the pipeline, for tests and benchmarks of the resolver."""
    loaded_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    bronze = None
    for system in cfg.sources.systems:
        files = io.landing_files(landing / "customers" / system, "*.csv")
        if files:
            part = csv_to_bronze(io.read_csv_raw(spark, files), system, loaded_at)
            bronze = part if bronze is None else bronze.unionByName(part)
    if bronze is None:
        raise ValueError(f"{landing}/customers: no customer files")
    customers = silver_customers(
        standardize_customers(
            bronze, cfg.sources.systems, cfg.sources.country_aliases, cfg.sources.default_phone_region
        )
    )
    raw = io.read_text_files(spark, io.landing_files(landing / "events", "*.jsonl"))
    return customers, silver_events(parse_configured(raw, cfg))


def no_events(spark: SparkSession) -> DataFrame:
    """An empty silver.events frame, for resolving records alone."""
    schema = ", ".join(f"`{c}` string" for c in EVENT_COLUMNS)
    return spark.createDataFrame([], schema).withColumn("event_time", F.lit(None).cast("timestamp"))


def resolve(
    customers: DataFrame,
    events: DataFrame,
    identity: IdentityConfig,
    previous: DataFrame | None = None,
    registry: DataFrame | None = None,
    built_at: str | None = None,
) -> tuple[IdentityResult, DataFrame, DataFrame]:
    """``(result, observations, edges)``: the whole resolver over customer records and events."""
    observations = identifier_observations(
        customers, events, identity.blocklist, identity.normalizers
    ).localCheckpoint()
    edges = all_edges(observations, customers, identity).localCheckpoint()
    result = identity_graph(
        observations,
        edges,
        identity.max_component_size,
        limits=identity.limits,
        priorities=identity.priorities,
        previous=previous,
        registry=registry,
        built_at=built_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        max_degree=identity.max_degree,
    )
    return result, observations, edges


def record_profiles(customers: DataFrame, graph: DataFrame, system: str) -> DataFrame:
    """``(record_id, profile_id, profile_identifiers)``: every input record; a record the guards left out (its
    component was oversized) has a null profile id."""
    key = F.concat(F.lit(f"{system}_id:"), F.col("source_id"))
    sizes = graph.groupBy("profile_id").agg(F.count(F.lit(1)).alias("profile_identifiers"))
    return (
        customers.select(F.col("source_id").alias("record_id"), key.alias("identifier"))
        .join(graph.select("identifier", "profile_id"), "identifier", "left")
        .join(sizes, "profile_id", "left")
        .select("record_id", "profile_id", "profile_identifiers")
    )
