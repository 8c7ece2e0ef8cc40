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

from pyspark.sql import Column, DataFrame
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


def _normalised(value: Column, cls: str) -> Column:
    """The form a class is hashed in: emails trimmed and lower-cased (phones are E.164 already)."""
    return F.lower(F.trim(value)) if cls == "email" else F.trim(value.cast("string"))


def _treat(col: Column, data_type, cls: str, treatment: str, salt: str) -> Column | None:
    """One column under one treatment (None: dropped). Arrays are treated element by element."""
    if treatment == "drop":
        return None
    if treatment == "plain":
        return col
    if isinstance(data_type, ArrayType):
        inner = data_type.elementType
        return F.transform(col, lambda x: _treat(x, inner, cls, treatment, salt))  # type: ignore[arg-type,return-value]
    if treatment == "sha256":
        return F.sha2(F.concat(F.lit(salt), _normalised(col, cls)), 256)
    text = col.cast("string")  # mask: the first character stays, so a name is still recognisable as one
    return F.when(text.isNotNull(), F.concat(F.substring(text, 1, 1), F.lit("***")))


def _project(df: DataFrame, allowed: dict[str, str], policies: PoliciesConfig, salt: str) -> DataFrame:
    cols = []
    for f in df.schema.fields:
        cls = policies.class_of(f.name)
        if cls is None:
            cols.append(F.col(f"`{f.name}`"))
            continue
        treated = _treat(F.col(f"`{f.name}`"), f.dataType, cls, allowed.get(cls, "drop"), salt)
        if treated is not None:
            cols.append(treated.alias(f.name))
    return df.select(*cols)


def mask_for_view(df: DataFrame, policies: PoliciesConfig, view: str = "profiles_masked") -> DataFrame:
    """``df`` as analysts may see it under the named view's policy (a class the view omits is dropped).
    Hashes are salted with ``$<hash_salt_env>`` so a view's hash is no match key outside Converge."""
    if view not in policies.views:
        raise KeyError(f"no view {view!r} in conf/policies.yaml; views: {sorted(policies.views)}")
    return _project(df, policies.views[view], policies, os.environ.get(policies.hash_salt_env, ""))


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
    return _project(
        df.select("profile_id", *[F.col(f"`{f}`") for f in fields if f != "profile_id"]),
        policies.destinations.get(destination, {}),
        policies,
        "",
    )
