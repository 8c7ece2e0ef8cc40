"""Consent, destination syncs and deletions as the Dagster UI shows them.

``gold/consent`` and ``activation/destination_syncs`` are assets (every run records what was sent where,
what was dead-lettered and which destination failed); ``fulfil_deletion_requests`` is the op of the
``forget`` job that the ``deletion_requests`` sensor starts for each new request (jobs/definitions.py).
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetMaterialization,
    Config,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    asset,
    op,
)

from assets.metadata import table_result
from assets.resources import SparkResource
from pipelines import io
from pipelines.consent import consent_history
from pipelines.destinations import sync_destination
from pipelines.forget import fulfil, pending_requests
from pipelines.senders import DeliveryFailed
from pipelines.stream import identity_lock, writes_lock

SYNCS = AssetKey(["activation", "destination_syncs"])


@asset(
    key_prefix="gold",
    group_name="governance",
    deps=[AssetKey(["silver", "events"]), AssetKey(["gold", "identity_graph"])],
    kinds={"spark", "delta"},
)
def consent(spark: SparkResource) -> MaterializeResult:
    """Every consent answer (context.consent.categoryPreferences) per profile and category, with event time."""
    cfg, session = spark.config(), spark.session()
    history = consent_history(
        io.read(session, cfg, "silver.events"), io.read(session, cfg, "gold.identity_graph")
    )
    io.overwrite(history, cfg, "gold.consent")
    by_category = {
        r["category"]: r["count"]
        for r in io.read(session, cfg, "gold.consent").groupBy("category").count().collect()
    }
    return table_result(session, cfg, "gold.consent", answers_by_category=MetadataValue.json(by_category))


@asset(
    key=SYNCS,
    group_name="activation",
    deps=[
        AssetKey(["gold", "audience_membership"]),
        AssetKey(["gold", "consent"]),
        AssetKey(["gold", "profiles"]),
    ],
    check_specs=[AssetCheckSpec("every_destination_delivered", asset=SYNCS)],
    kinds={"spark", "delta"},
)
def destination_syncs(spark: SparkResource):
    """Audience enter/exit events with consented, policy-allowed fields to every destination
    (conf/destinations.yaml), each batch once; a failed destination resumes on the next run."""
    cfg, session = spark.config(), spark.session()
    per_destination, failed = {}, {}
    for name, dest in cfg.destinations.definitions.items():
        if not dest.enabled:
            continue
        try:
            s = sync_destination(session, cfg, name)
            per_destination[name] = {
                "range": [s.run_from, s.run_to], "resumed": s.resumed, "events": s.events,
                "batches_sent": s.batches_sent, "dead_lettered": s.dead_lettered,
                "without_consent": s.without_consent, "seconds": s.seconds,
            }  # fmt: skip
        except DeliveryFailed as exc:
            failed[name] = str(exc)
    metadata = {
        "destinations": MetadataValue.json(per_destination),
        "failed": MetadataValue.json(failed),
        **{f"events/{n}": d["events"] for n, d in per_destination.items()},
    }
    yield MaterializeResult(metadata=metadata)
    dead = sum(d["dead_lettered"] for d in per_destination.values())
    yield AssetCheckResult(
        check_name="every_destination_delivered",
        passed=not failed and not dead,
        severity=AssetCheckSeverity.ERROR if failed else AssetCheckSeverity.WARN,
        description="every destination took every batch (failed ones resume next run; 4xx are dead-lettered)",
        metadata={"failed": MetadataValue.json(failed), "dead_lettered_batches": dead},
    )


class ForgetRequests(Config):
    request_ids: list[str]


@op(out={}, tags={"converge/spark": "true"})
def fulfil_deletion_requests(context: OpExecutionContext, config: ForgetRequests, spark: SparkResource):
    """Remove the persons of these requests from every table and file in one pass (pipelines/forget.py)
    and record the proof trail. Requests fulfilled meanwhile (a re-executed run) are skipped."""
    cfg, session = spark.config(), spark.session()
    pending = {r["request_id"]: r for r in pending_requests(cfg)}
    requests = [pending[i] for i in config.request_ids if i in pending]
    skipped = sorted(set(config.request_ids) - set(pending))
    if skipped:
        context.log.warning(f"not pending (done already, or unknown), skipped: {skipped}")
    if not requests:
        raise LookupError(f"none of the deletion requests {config.request_ids} is pending")
    with writes_lock(cfg), identity_lock(cfg):  # the stream waits between micro-batches meanwhile
        result = fulfil(session, cfg, requests)
    context.log.info(f"{len(requests)} requests: {sum(result.rows_removed.values())} rows removed")
    yield AssetMaterialization(
        asset_key=["governance", "audit_log"],
        description=f"{len(result.request_ids)} deletion request(s) fulfilled",
        metadata={
            "request_ids": MetadataValue.json(result.request_ids),
            "rows_removed": sum(result.rows_removed.values()),
            "rows_by_table": MetadataValue.json(result.rows_removed),
            "files_rewritten": len(result.files),
            "delta_versions": MetadataValue.json(result.versions),
            "seconds": result.seconds,
        },
    )
    yield AssetMaterialization(
        asset_key=["governance", "deletion_requests"],
        metadata={
            "pending": len(pending_requests(cfg)),
            "delta_version": io.version(session, cfg, "governance.deletion_requests"),
        },
    )
