"""Later Spark starts need no network: the Maven packages come from the project's Ivy cache.

Runs a fresh interpreter (its own JVM) in a network namespace with only loopback up (`unshare -n`, root on
these machines), after the suite's own session has resolved the packages into .ivy2/.
"""

import shutil
import subprocess
import sys

from pipelines.config import PROJECT_ROOT

SCRIPT = """
import socket, sys
try:
    socket.create_connection(("repo1.maven.org", 443), timeout=3)
    sys.exit("the network is reachable: this test proves nothing")
except OSError:
    pass
from pipelines.config import load_config
from pipelines.spark import get_spark
spark = get_spark(load_config("test", lakehouse=sys.argv[1]))
spark.range(7).write.format("delta").save(sys.argv[1] + "/t")
print("rows", spark.read.format("delta").load(sys.argv[1] + "/t").count())
"""


def test_spark_with_delta_starts_with_the_network_off(spark, tmp_path):
    assert shutil.which("unshare") and shutil.which("ip"), (
        "util-linux unshare and iproute2 ip are on every machine of this kind"
    )
    cmd = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" -c "$1" "$2"',
        sys.executable,
        SCRIPT,
        str(tmp_path / "lh"),
    ]
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "rows 7"
