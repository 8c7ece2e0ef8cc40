"""Join hints Spark cannot work out alone.

Spark broadcasts one side of a join when its *estimated* size is under ``autoBroadcastJoinThreshold``. The
estimate of a filtered or checkpointed frame is that of its origin (a semi join of the 2.5 M-row identity
graph is estimated at 2.5 M rows), so the few thousand rows an incremental step works on are joined to whole
tables with a shuffle of the whole table. Counting the small side, which is materialised anyway, and hinting
the broadcast when the count is small turns that into one scan of the large table. AQE cannot do this
afterwards: by the time it sees the real size, the large side's shuffle has been written.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# Up to this many rows are broadcast: a stream batch or a 10,000-event update touches a few thousand to a
# few tens of thousands; a backfill touching more takes the shuffle join.
BROADCAST_ROWS = 200_000


def broadcast_if_small(df: DataFrame, rows: int | None = None) -> DataFrame:
    """``df`` with a broadcast hint when it has at most ``BROADCAST_ROWS`` rows (``rows``: its count, if known;
    otherwise it is counted, so pass a materialised frame)."""
    n = df.count() if rows is None else rows
    return F.broadcast(df) if n <= BROADCAST_ROWS else df
