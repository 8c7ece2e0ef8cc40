"""Silver assets for the batch feeds: customers and orders, rebuilt from bronze with their quarantine."""

from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, AssetKey, AssetSpec, multi_asset

from assets.metadata import table_result
from assets.resources import SparkResource
from pipelines import io
from pipelines.customers import silver_customers, standardize_customers
from pipelines.orders import silver_orders, standardize_orders
from pipelines.reconcile import reconcile
from pipelines.records import quarantined

CUSTOMERS = AssetKey(["silver", "customers"])
ORDERS = AssetKey(["silver", "orders"])


def _reconciliation_spec(key: AssetKey, feed: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        "reconciliation",
        asset=key,
        blocking=True,
        description=f"bronze {feed} rows = silver rows + quarantined rows + counted duplicates",
    )


def _publish(
    context: AssetExecutionContext,
    session,
    cfg,
    feed: str,
    standardized,
    silver,
    keys: list[str],
    silver_name: str,
    quarantine_name: str,
):
    """Write silver and quarantine from one standardized frame, then reconcile what was written."""
    standardized = standardized.persist()
    try:
        io.overwrite(silver, cfg, silver_name)
        io.overwrite(quarantined(standardized), cfg, quarantine_name)
        rec = reconcile(
            feed,
            standardized,
            keys,
            io.read(session, cfg, silver_name),
            io.read(session, cfg, quarantine_name),
        )
    finally:
        standardized.unpersist()
    context.log.info(f"reconciliation {rec.as_row()}")
    yield table_result(session, cfg, silver_name, duplicates=rec.duplicates)
    yield table_result(session, cfg, quarantine_name)
    yield AssetCheckResult(
        asset_key=AssetKey(silver_name.split(".")),
        check_name="reconciliation",
        passed=rec.balanced,
        metadata=rec.as_row(),
    )


@multi_asset(
    name="customers",
    group_name="customers",
    specs=[
        AssetSpec(
            CUSTOMERS,
            description="Normalised customer records, one per (source_system, source_id).",
            deps=[AssetKey(["bronze", "crm_customers"])],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["quarantine", "crm_customers"],
            description="Customer rows that could not be loaded, with the reason.",
            deps=[AssetKey(["bronze", "crm_customers"])],
            kinds={"spark", "delta"},
        ),
    ],
    check_specs=[_reconciliation_spec(CUSTOMERS, "customer")],
)
def customers(context: AssetExecutionContext, spark: SparkResource):
    """Customers from every CRM system mapped to canonical columns; emails lower-cased, phones E.164, names cleaned."""
    cfg, session = spark.config(), spark.session()
    std = standardize_customers(
        io.read(session, cfg, "bronze.crm_customers"),
        cfg.sources.systems,
        cfg.sources.country_aliases,
        cfg.sources.default_phone_region,
    )
    yield from _publish(
        context,
        session,
        cfg,
        "customers",
        std,
        silver_customers(std),
        ["source_system", "source_id"],
        "silver.customers",
        "quarantine.crm_customers",
    )


@multi_asset(
    name="orders_silver",
    group_name="orders",
    specs=[
        AssetSpec(
            ORDERS,
            description="Typed orders, one per order_id.",
            deps=[AssetKey(["bronze", "orders"])],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["quarantine", "orders"],
            description="Order rows that could not be loaded, with the reason.",
            deps=[AssetKey(["bronze", "orders"])],
            kinds={"spark", "delta"},
        ),
    ],
    check_specs=[_reconciliation_spec(ORDERS, "order")],
)
def orders_silver(context: AssetExecutionContext, spark: SparkResource):
    """Orders typed with try_cast (bad amounts and dates are quarantined), one per order_id."""
    cfg, session = spark.config(), spark.session()
    std = standardize_orders(io.read(session, cfg, "bronze.orders"), list(cfg.sources.systems))
    yield from _publish(
        context,
        session,
        cfg,
        "orders",
        std,
        silver_orders(std),
        ["order_id"],
        "silver.orders",
        "quarantine.orders",
    )
