"""One lakehouse built by `converge_all` for the end-to-end and the forget tests, and the person (Ann) the
forget tests remove: building it once saves a whole pipeline run (2-5 minutes here) from the suite."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, ExecuteInProcessResult

from jobs.definitions import defs
from pipelines.config import Config, load_config
from pipelines.demo_data import Counts, generate
from tests.net import Receiver

PEOPLE = 400
SEED = 20261121

ANN = {
    "email": "ann.forget@example.com",
    "user_id": "ann-forget-7",
    "anonymous_id": "anon-ann-forget-1",
    "crm_id": "CANN1",
    "phone": "+15550109999",
}
CRM_HEADER = "customer_id,first_name,last_name,email,phone,street,city,postal_code,country,date_of_birth,created_at,updated_at"
ORDERS_HEADER = "order_id,source_system,customer_id,order_date,amount,currency,status"
# what Ann and the bad rows add to the generated input, for the counts that must reconcile
ANN_CRM_ROWS, ANN_EVENT_LINES = 1, 3
BAD_CRM_ROWS, BAD_EVENT_LINES = 2, 3


def event(mid, kind, ts, **body) -> str:
    msg = {"messageId": mid, "type": kind, "timestamp": ts, "sentAt": ts, "receivedAt": ts}
    msg.update(body)
    return json.dumps(msg)


def land_ann(landing: Path, events_only: bool = False) -> None:
    (landing / "events").mkdir(parents=True, exist_ok=True)
    consent = {
        "ip": "198.51.100.7",
        "consent": {"categoryPreferences": {"Marketing": True, "Analytics": True}},
    }
    lines = [
        event(
            "ann-e1",
            "page",
            "2026-10-30T10:00:00Z",
            anonymousId=ANN["anonymous_id"],
            name="/",
            context=consent,
        ),
        event(
            "ann-e2",
            "identify",
            "2026-10-30T10:01:00Z",
            anonymousId=ANN["anonymous_id"],
            userId=ANN["user_id"],
            traits={"email": "Ann.Forget@Example.com", "firstName": "Ann", "phone": "+1 555 010 9999"},
            context=consent,
        ),
        '{"messageId": "ann-bad", "type": "track", "userId": "ann-forget-7"}',  # quarantined: no event name
    ]
    assert len(lines) == ANN_EVENT_LINES
    (landing / "events/ann.jsonl").write_text("\n".join(lines) + "\n")
    if events_only:
        return
    (landing / "customers/crm/ann.csv").write_text(
        f"{CRM_HEADER}\nCANN1,Ann,Forget,Ann.Forget@Example.com,+1 (555) 010-9999,1 Privacy Lane,Springfield,"
        "12345,US,1980-02-03,2025-01-01,2026-10-01\n"
    )
    (landing / "orders/ann_orders.csv").write_text(
        f"{ORDERS_HEADER}\n"
        "ANN-O1,crm,CANN1,2026-10-20,450.00,USD,completed\nANN-O2,crm,CANN1,2026-10-25,450.00,USD,completed\n"
    )


def land_bad_rows(landing: Path) -> None:
    (landing / "customers/crm/bad_crm.csv").write_text(
        f'{CRM_HEADER}\n,Nobody,Noid,nobody@x.com,,,,,,,,\nC999,"Unclosed,quote,,,,,,,,,\n'
    )
    (landing / "orders/bad_orders.csv").write_text(
        f"{ORDERS_HEADER}\nBAD1,crm,C1,2026-01-01,twelve,USD,completed\n"
    )
    (landing / "events/bad.jsonl").write_text(
        '{"type": "track", "event": "x"\n[1,2]\n{"messageId": "q1", "type": "page"}\n'
    )


@dataclass
class Built:
    result: ExecuteInProcessResult
    cfg: Config
    counts: Counts
    instance: DagsterInstance
    receiver: Receiver
    env: dict[str, str]  # what the tests set while they use this lakehouse


def build(root: Path) -> Built:
    """Generated people, the bad rows, Ann, and a webhook destination on 127.0.0.1, through `converge_all`."""
    receiver = Receiver()
    hook = {"type": "webhook", "url": receiver.url, "audiences": ["high_value"], "consent": ["marketing"],
            "fields": ["email", "first_name", "lifetime_value"], "backoff_s": 0.01}  # fmt: skip
    env = {
        "CONVERGE_LAKEHOUSE": str(root),
        "CONVERGE_OVERRIDES": json.dumps(
            {
                "destinations": {"definitions": {"crm_hook": hook}},
                "policies": {"destinations": {"crm_hook": {"email": "sha256", "name": "plain"}}},
            }
        ),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cfg = load_config()
        counts = generate(PEOPLE, SEED, cfg.lakehouse.landing)
        land_bad_rows(cfg.lakehouse.landing)
        land_ann(cfg.lakehouse.landing)
        instance = DagsterInstance.ephemeral()
        result = defs.resolve_job_def("converge_all").execute_in_process(
            instance=instance, raise_on_error=False
        )
    except BaseException:
        receiver.close()  # pytest runs no teardown after a failed setup
        raise
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Built(result, cfg, counts, instance, receiver, env)
