from datetime import datetime

from pipelines.explain import explain, normalize_identifier, render

GRAPH = "identifier string, id_type string, id_value string, profile_id string, component_size long"
EDGES = "src string, dst string, rule string, source_table string, source_record string, first_seen timestamp, last_seen timestamp, evidence_count long"


def test_normalize_identifier_uses_the_type_normaliser():
    normalizers = {"email": "email", "phone": "phone", "user_id": "trim"}
    assert normalize_identifier("email: Ann@X.COM ", normalizers, "US") == "email:ann@x.com"
    assert normalize_identifier("phone:(415) 234-5678", normalizers, "US") == "phone:+14152345678"
    assert normalize_identifier("user_id: u1 ", normalizers, "US") == "user_id:u1"


def test_explain_walks_the_shortest_chain_of_evidence(spark):
    t = datetime(2026, 1, 1)
    graph = spark.createDataFrame(
        [
            (i, i.split(":")[0], i.split(":")[1], "p1", 4)
            for i in ["email:a@x.com", "crm_id:C1", "phone:+14150000001", "anonymous_id:z"]
        ]
        + [("email:other@x.com", "email", "other@x.com", "p2", 1)],
        GRAPH,
    )
    edges = spark.createDataFrame(
        [
            ("crm_id:C1", "email:a@x.com", "crm_record:crm", "silver.customers", "crm:C1", t, t, 1),
            ("crm_id:C1", "phone:+14150000001", "crm_record:crm", "silver.customers", "crm:C1", t, t, 1),
            ("anonymous_id:z", "email:a@x.com", "event:identify", "silver.events", "m9", t, t, 3),
        ],
        EDGES,
    )
    ex = explain("phone:+14150000001", graph, edges)
    assert ex.profile_id == "p1" and ex.status == "resolved"
    chain = {link.identifier: (link.parent, link.source_record, link.depth) for link in ex.links}
    assert chain == {
        "phone:+14150000001": (None, None, 0),
        "crm_id:C1": ("phone:+14150000001", "crm:C1", 1),
        "email:a@x.com": ("crm_id:C1", "crm:C1", 2),
        "anonymous_id:z": ("email:a@x.com", "m9", 3),
    }
    text = render(ex)
    assert text.splitlines()[0] == "profile p1" and text.splitlines()[1] == "  4 identifiers"
    assert (
        "└─ crm_id:C1   via crm_record:crm (crm:C1" in text
        and "anonymous_id:z   via event:identify (m9" in text
        and "3 records" in text
    )
    missing = explain("email:nobody@x.com", graph, edges)
    assert (missing.profile_id, missing.status) == (None, "unknown") and "no profile holds it" in render(
        missing
    )
