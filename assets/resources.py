"""Dagster resources: the Converge configuration and the process's one SparkSession."""

from dagster import ConfigurableResource
from pyspark.sql import SparkSession

from pipelines.config import Config, load_config
from pipelines.spark import get_spark


class SparkResource(ConfigurableResource):
    """Spark with Delta, sized and pointed at the lakehouse by conf/ (CONVERGE_ENV, CONVERGE_LAKEHOUSE).

    Jobs run with the in-process executor, so every step of a run shares one JVM (docs/architecture.md).
    """

    env: str | None = None
    lakehouse: str | None = None

    def config(self) -> Config:
        return load_config(self.env, lakehouse=self.lakehouse)

    def session(self) -> SparkSession:
        return get_spark(self.config())
