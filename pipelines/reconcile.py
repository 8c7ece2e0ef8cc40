"""Reconciliation: every bronze row is in silver, in quarantine, or a counted duplicate.

The expected split is derived again from bronze with the same functions the loads use (Kappa style),
then compared with what the tables hold. A lost, doubled or misfiled row makes ``balanced`` false.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class Reconciliation:
    feed: str
    bronze: int
    silver: int
    quarantined: int
    duplicates: int
    expected_silver: int
    expected_quarantined: int

    @property
    def balanced(self) -> bool:
        return (
            self.bronze == self.silver + self.quarantined + self.duplicates
            and self.silver == self.expected_silver
            and self.quarantined == self.expected_quarantined
        )

    def as_row(self) -> dict:
        return asdict(self) | {"balanced": self.balanced}


def reconcile(
    feed: str, standardized: DataFrame, keys: list[str], silver: DataFrame, quarantine: DataFrame
) -> Reconciliation:
    """Compare ``silver``/``quarantine`` with what ``standardized`` (bronze after validation) says they hold.

    Duplicates are counted from bronze: accepted rows minus distinct accepted keys.
    """
    stats = standardized.agg(
        F.count(F.lit(1)).alias("bronze"),
        F.count(F.when(F.col("_reject_reason").isNotNull(), 1)).alias("rejected"),
        F.count_distinct(F.when(F.col("_reject_reason").isNull(), F.struct(*keys))).alias("distinct_keys"),
    ).collect()[0]
    bronze, rejected, distinct_keys = (
        int(stats["bronze"]),
        int(stats["rejected"]),
        int(stats["distinct_keys"]),
    )
    return Reconciliation(
        feed=feed,
        bronze=bronze,
        silver=silver.count(),
        quarantined=quarantine.count(),
        duplicates=bronze - rejected - distinct_keys,
        expected_silver=distinct_keys,
        expected_quarantined=rejected,
    )
