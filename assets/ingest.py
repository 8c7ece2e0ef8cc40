"""Bronze assets: CSV feeds appended as they land, and the clickstream micro-batches (bronze+silver+quarantine)."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    Config,
    MaterializeResult,
    asset,
    multi_asset,
)

from assets.metadata import table_result
from assets.resources import SparkResource
from pipelines import io
from pipelines.ingest import load_csv_feed, parse_configured
from pipelines.reconcile import reconcile
from pipelines.stream import run_stream

EVENTS = AssetKey(["silver", "events"])


@asset(key_prefix="bronze", group_name="customers", kinds={"spark", "delta"})
def crm_customers(context: AssetExecutionContext, spark: SparkResource) -> MaterializeResult:
    """Raw customer rows of every configured CRM system, appended once per landed CSV file."""
    cfg, session = spark.config(), spark.session()
    files: list[str] = []
    for system in cfg.sources.systems:
        files += load_csv_feed(
            session, cfg, cfg.lakehouse.landing / "customers" / system, system, "bronze.crm_customers"
        )
    context.log.info(f"loaded {len(files)} new customer file(s)")
    if not io.exists(session, cfg, "bronze.crm_customers"):
        raise FileNotFoundError(
            f"no customer CSV under {cfg.lakehouse.landing / 'customers'}/<system>/; run `converge generate` first"
        )
    return table_result(session, cfg, "bronze.crm_customers", files_loaded=len(files))


@asset(key_prefix="bronze", group_name="orders", kinds={"spark", "delta"})
def orders(context: AssetExecutionContext, spark: SparkResource) -> MaterializeResult:
    """Raw order rows, appended once per landed CSV file."""
    cfg, session = spark.config(), spark.session()
    files = load_csv_feed(session, cfg, cfg.lakehouse.landing / "orders", "orders", "bronze.orders")
    context.log.info(f"loaded {len(files)} new order file(s)")
    if not io.exists(session, cfg, "bronze.orders"):
        raise FileNotFoundError(
            f"no order CSV under {cfg.lakehouse.landing / 'orders'}; run `converge generate` first"
        )
    return table_result(session, cfg, "bronze.orders", files_loaded=len(files))


class ClickstreamConfig(Config):
    """``update_identity``: each micro-batch also updates the identity graph and profiles of the people it
    touches (the `events_catch_up` job); off when a full rebuild runs next in the same job."""

    update_identity: bool = False


@multi_asset(
    name="clickstream",
    group_name="events",
    specs=[
        AssetSpec(
            ["bronze", "events"],
            description="Raw clickstream lines exactly as they landed, with file and batch.",
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            EVENTS,
            description="Typed Segment events, one per messageId, corrected event time.",
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["quarantine", "events"],
            description="Clickstream lines that could not be loaded, with the reason.",
            kinds={"spark", "delta"},
        ),
    ],
    check_specs=[
        AssetCheckSpec(
            "reconciliation",
            asset=EVENTS,
            blocking=True,
            description="bronze lines = silver events + quarantined + counted duplicates",
        )
    ],
)
def clickstream(context: AssetExecutionContext, config: ClickstreamConfig, spark: SparkResource):
    """Structured Streaming (availableNow) over the configured source: each micro-batch appends bronze,
    MERGEs unseen messageIds into silver and quarantines rejects, idempotently per batch; with
    ``update_identity`` it also updates gold.identity_graph and gold.profiles for the touched people."""
    cfg, session = spark.config(), spark.session()
    batches = run_stream(session, cfg, available_now=True, update_identity=config.update_identity)
    context.log.info(f"processed {len(batches)} micro-batch(es): {[b.as_dict() for b in batches]}")
    if not io.exists(session, cfg, "bronze.events"):
        raise FileNotFoundError(
            f"no clickstream files under {cfg.lakehouse.landing / 'events'}; run `converge generate` first"
        )
    totals = {
        k: sum(getattr(b, k) for b in batches)
        for k in ("rows", "accepted", "quarantined", "inserted", "duplicates")
    }
    yield table_result(
        session, cfg, "bronze.events", batches=len(batches), **{f"batch_{k}": v for k, v in totals.items()}
    )
    yield table_result(session, cfg, "silver.events")
    yield table_result(session, cfg, "quarantine.events")
    parsed = parse_configured(io.read(session, cfg, "bronze.events"), cfg)
    rec = reconcile(
        "events",
        parsed,
        ["message_id"],
        io.read(session, cfg, "silver.events"),
        io.read(session, cfg, "quarantine.events"),
    )
    yield AssetCheckResult(
        asset_key=EVENTS, check_name="reconciliation", passed=rec.balanced, metadata=rec.as_row()
    )
