"""PII policies as code (conf/policies.yaml): classes of personal data per column, and what may leave.

Three uses, one classification:
- Delta statistics: only numbers, dates, timestamps and ``non_personal`` string columns get
  per-file min/max in the transaction log (``stats_properties``); a deleted person's email can then never
  survive in ``_delta_log`` as some file's minimum.
- Analyst views (``gold.profiles_masked``) and materialization previews: each class plain, hashed
  (salted), masked or dropped (``mask_for_view``).
- Destinations: the fields a destination lists, each as its policy allows (``destination_fields``);
  ``sha256`` there is unsalted over the normalised value, as advertising platforms match on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DateType, NumericType, StringType, StructType, TimestampType

from pipelines.config import PoliciesConfig

_STATS_TYPES = (NumericType, DateType, TimestampType)  # Delta refuses booleans


def stats_columns(schema: StructType, policies: PoliciesConfig) -> list[str]:
    """Top-level columns that may keep Delta per-file statistics: numbers, dates, timestamps, and string
    columns listed as non-personal (and in no PII class)."""
    out = []
    for f in schema.fields:
        if policies.class_of(f.name) is not None:
            continue
        if isinstance(f.dataType, _STATS_TYPES) or (
            isinstance(f.dataType, StringType) and f.name in policies.non_personal
        ):
            out.append(f.name)
    return out


def stats_properties(schema: StructType, policies: PoliciesConfig) -> dict[str, str]:
    """Table properties that keep personal values out of the log's per-file statistics."""
    cols = stats_columns(schema, policies)
    if not cols:
        return {"delta.dataSkippingNumIndexedCols": "0"}
    return {"delta.dataSkippingStatsColumns": ",".join(f"`{c}`" for c in cols)}


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _normalised(expr: str, cls: str) -> str:
    """The form a class is hashed in: emails trimmed and lower-cased (phones are E.164 already)."""
    return f"lower(trim({expr}))" if cls == "email" else f"trim(CAST({expr} AS STRING))"


def _treat(expr: str, data_type, cls: str, treatment: str, salt: str) -> str | None:
    """SQL for one column under one treatment (None: dropped); arrays element by element. SQL, so the
    same text serves DataFrames and the catalog view ``gold.profiles_masked``."""
    if treatment == "drop":
        return None
    if treatment == "plain":
        return expr
    if isinstance(data_type, ArrayType):
        inner = _treat("x", data_type.elementType, cls, treatment, salt)
        return f"transform({expr}, x -> {inner})"
    if treatment == "sha256":
        return f"sha2(concat({_sql_string(salt)}, {_normalised(expr, cls)}), 256)"
    # mask: the first character stays, so a name is still recognisable as one
    return (
        f"CASE WHEN {expr} IS NULL THEN NULL ELSE concat(substring(CAST({expr} AS STRING), 1, 1), '***') END"
    )


def projection(
    schema: StructType, allowed: Mapping[str, str], policies: PoliciesConfig, salt: str
) -> list[str]:
    """SQL select items: unclassified columns as they are, classified ones treated as ``allowed`` says."""
    items = []
    for f in schema.fields:
        col = f"`{f.name}`"
        cls = policies.class_of(f.name)
        treated = col if cls is None else _treat(col, f.dataType, cls, allowed.get(cls, "drop"), salt)
        if treated is not None:
            items.append(treated if treated == col else f"{treated} AS {col}")
    return items


def _view_salt(policies: PoliciesConfig) -> str:
    return os.environ.get(policies.hash_salt_env, "")


def mask_for_view(df: DataFrame, policies: PoliciesConfig, view: str = "profiles_masked") -> DataFrame:
    """``df`` as analysts may see it under the named view's policy (a class the view omits is dropped).
    Hashes are salted with ``$<hash_salt_env>`` so a view's hash is no match key outside Converge."""
    if view not in policies.views:
        raise KeyError(f"no view {view!r} in conf/policies.yaml; views: {sorted(policies.views)}")
    return df.selectExpr(*projection(df.schema, policies.views[view], policies, _view_salt(policies)))


def preview_safe(df: DataFrame, policies: PoliciesConfig) -> DataFrame:
    """What a materialization preview (kept in Dagster's event log) may show: the analysts' view when
    one is configured, else no personal column at all."""
    view = "profiles_masked"
    allowed = policies.views.get(view, {})
    return df.selectExpr(*projection(df.schema, allowed, policies, _view_salt(policies)))


def view_sql(schema: StructType, policies: PoliciesConfig, view: str, source: str) -> str:
    """``SELECT ... FROM source`` for a catalog view under the named policy view."""
    items = projection(schema, policies.views[view], policies, _view_salt(policies))
    return f"SELECT {', '.join(items)} FROM {source}"


def destination_fields(
    df: DataFrame, fields: list[str], policies: PoliciesConfig, destination: str
) -> DataFrame:
    """``profile_id`` plus the destination's ``fields`` of ``df``, each as its policy allows (unsalted
    sha256: the match key advertising platforms expect). Fields the policy drops are not there."""
    missing = sorted(set(fields) - set(df.columns))
    if missing:
        raise ValueError(
            f"destination {destination}: fields {missing} are neither profile columns nor traits"
        )
    chosen = df.select("profile_id", *[F.col(f"`{f}`") for f in fields if f != "profile_id"])
    return chosen.selectExpr(
        *projection(chosen.schema, policies.destinations.get(destination, {}), policies, "")
    )
