"""Materialization metadata every table asset reports: row count, Delta version, path, a preview."""

from typing import Any

from dagster import AssetKey, MaterializeResult, MetadataValue
from pyspark.sql import SparkSession

from pipelines import io
from pipelines.config import Config
from pipelines.policies import preview_safe


def table_result(
    spark: SparkSession, cfg: Config, name: str, preview_rows: int = 5, **extra: Any
) -> MaterializeResult:
    """A MaterializeResult for the table ``layer.name`` as it is now on disk."""
    df = io.read(spark, cfg, name)
    # previews live on in Dagster's event log: personal columns as the analysts' view shows them
    preview = preview_safe(df.limit(preview_rows), cfg.policies).toPandas() if preview_rows else None
    metadata: dict[str, Any] = {
        "dagster/row_count": df.count(),
        "delta_version": io.version(spark, cfg, name),
        "path": MetadataValue.path(io.path_of(cfg, name)),
        "table": name,
    }
    if preview is not None:
        metadata["preview"] = MetadataValue.md(preview.astype(str).to_markdown(index=False))
    metadata.update(extra)
    return MaterializeResult(asset_key=AssetKey(name.split(".")), metadata=metadata)
