"""The one way Converge starts Spark: Delta + Splink's similarity UDFs, sized from conf, tables registered."""

from __future__ import annotations

import os
import sys

from delta.pip_utils import configure_spark_with_delta_pip
from pyspark.sql import SparkSession
from splink.backends.spark import similarity_jar_location

from pipelines.config import Config
from pipelines.io import register_tables
from pipelines.maven import resolve_pom


def get_spark(cfg: Config) -> SparkSession:
    """Return the process's SparkSession, creating it from ``cfg`` on first use.

    Maven packages (the Delta jar) and the jars of ``spark.maven_poms`` resolve into ``spark.ivy_dir``
    inside the project on first start; later starts read that cache and need no network. Every Delta table that exists
    under the lakehouse root is registered in the catalog, so ``SELECT * FROM gold.profiles`` works.
    """
    active = SparkSession.getActiveSession()
    if active is None:
        # Python workers must run this interpreter (the project's venv), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.makedirs(cfg.spark.ivy_dir, exist_ok=True)
        maven_jars = [
            j for pom in cfg.spark.maven_poms for j in resolve_pom(pom, cfg.spark.ivy_dir / "maven")
        ]
        builder = (
            SparkSession.builder.master(cfg.spark.master)
            .appName(cfg.spark.app_name)
            .config("spark.driver.memory", cfg.spark.driver_memory)
            .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
            .config("spark.jars.ivy", str(cfg.spark.ivy_dir))
            .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
            .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
            .config("spark.sql.warehouse.dir", str(cfg.lakehouse.root / "_warehouse"))
            .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={cfg.lakehouse.root / '_derby'}")
            # jaro_winkler & co. for probabilistic matching: the jar ships inside the splink wheel;
            # the Kafka source from conf/maven (resolved with mvn on first start)
            .config("spark.jars", ",".join([similarity_jar_location(), *maven_jars]))
        )
        for key, value in cfg.spark.conf.items():
            builder = builder.config(key, value)
        builder = configure_spark_with_delta_pip(builder, extra_packages=cfg.spark.packages)
        active = builder.getOrCreate()
        active.sparkContext.setLogLevel("WARN")
    active.sparkContext.setCheckpointDir(str(cfg.lakehouse.checkpoints / "spark"))
    register_tables(active, cfg)
    return active
