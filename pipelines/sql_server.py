"""`converge sql-server`: the Spark Thrift Server that pyspark ships (HiveServer2 protocol, JDBC/ODBC).

BI tools and SQL clients (beeline, DBeaver, Tableau, PyHive) connect to ``jdbc:hive2://HOST:PORT/default``
and query every registered table (gold.profiles, gold.profile_traits, ...). The server runs inside this
process's SparkSession (``HiveThriftServer2.startWithContext``), so it sees the same catalog and Delta.

Single-session mode is required, not a choice: in the default multi-session mode each connection gets a
new session whose thread cannot load the Delta catalog class that Spark resolved as a package
(delta-io/delta#1332), so every connection fails. One shared session means clients share temporary views
and ``USE`` statements; the tables themselves are read-only for analysts in practice (permissions are the
filesystem's).
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from pipelines.config import Config

# static confs: they must be set before the SparkSession starts (the CLI sets them on the config)
STATIC_CONF = {"spark.sql.hive.thriftServer.singleSession": "true"}


def prepare(cfg: Config, host: str, port: int) -> None:
    """Add the server's settings to ``cfg.spark.conf`` (before ``get_spark``)."""
    cfg.spark.conf.update(STATIC_CONF)
    cfg.spark.conf["spark.hadoop.hive.server2.thrift.bind.host"] = host
    cfg.spark.conf["spark.hadoop.hive.server2.thrift.port"] = str(port)


def start(spark: SparkSession) -> None:
    """Start the Thrift server on the session (returns at once; it serves from JVM threads)."""
    if spark.conf.get("spark.sql.hive.thriftServer.singleSession", "false") != "true":
        raise RuntimeError("the SparkSession was started without single-session mode; use prepare() first")
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext()
    )
