"""Configuration: conf/base.yaml deep-merged with conf/<env>.yaml, validated into pydantic models.

The environment is chosen by CONVERGE_ENV (default ``dev``); CONVERGE_LAKEHOUSE overrides the
lakehouse root (tests and benchmarks point it at a temporary folder). Validation errors name the
file(s) and the dotted key that is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECTION_FILES = (
    "identity",
    "profiles",
    "traits",
    "audiences",
    "policies",
    "destinations",
    "governance",
)  # conf/<name>.yaml holds the `<name>` section
CONF_DIR = Path(os.environ.get("CONVERGE_CONF_DIR", PROJECT_ROOT / "conf"))


class ConfigError(ValueError):
    """A configuration file is missing, unparsable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LakehouseConfig(_Strict):
    root: Path
    landing: Path
    checkpoints: Path
    deletion_vectors: list[str] = []  # tables created with deletion vectors (conf/base.yaml says when to)

    @field_validator("deletion_vectors")
    @classmethod
    def _known_tables(cls, names: list[str]) -> list[str]:
        from pipelines.io import TABLES  # io imports this module: a late import, not a cycle at load time

        unknown = sorted(set(names) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown tables {unknown}; known tables: {', '.join(TABLES)}")
        return names


class SparkConfig(_Strict):
    master: str = "local[2]"
    app_name: str = "converge"
    driver_memory: str = "3g"
    shuffle_partitions: int = Field(4, ge=1)
    ivy_dir: Path = Path(".ivy2")
    packages: list[str] = []
    maven_poms: list[Path] = []
    conf: dict[str, str] = {}


CANONICAL_CUSTOMER_COLUMNS = (
    "source_id",
    "user_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "street",
    "city",
    "postal_code",
    "country",
    "date_of_birth",
    "created_at",
    "updated_at",
)


class SourceSystemConfig(_Strict):
    columns: dict[str, str]

    @field_validator("columns")
    @classmethod
    def _canonical(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(CANONICAL_CUSTOMER_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown canonical columns {unknown}; allowed: {list(CANONICAL_CUSTOMER_COLUMNS)}"
            )
        if "source_id" not in v:
            raise ValueError("a source system must map source_id")
        return v


class SourcesConfig(_Strict):
    priority: list[str] = Field(min_length=1)
    default_phone_region: str = "US"
    systems: dict[str, SourceSystemConfig]
    country_aliases: dict[str, str] = {}

    @field_validator("systems")
    @classmethod
    def _names(cls, v: dict[str, SourceSystemConfig]) -> dict[str, SourceSystemConfig]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"system name {name!r} must be lower-case letters, digits and _")
        return v


class KafkaConfig(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "converge.events"
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int = Field(50_000, ge=1)
    options: dict[str, str] = {}  # any other kafka.* consumer option (security, SASL, ...)


class StreamingConfig(_Strict):
    source: Literal["files", "kafka"] = "files"
    trigger: str = "2 seconds"
    max_files_per_trigger: int = Field(50, ge=1)
    kafka: KafkaConfig = KafkaConfig()
    update_identity: bool = True  # each micro-batch updates the identity graph and profiles it touches
    update_traits: bool = True  # ... and a thread beside it their traits and audience memberships
    upsert_few_min_mb: float = Field(16.0, ge=0)  # graph and profile tables this big get io.upsert_few

    @field_validator("trigger")
    @classmethod
    def _known_trigger(cls, v: str) -> str:
        if v != "available_now" and not re.fullmatch(r"\d+(\.\d+)? ?s(econds?)?", v):
            raise ValueError("must be 'available_now' or a processing time such as '2 seconds'")
        return v


class EventsConfig(_Strict):
    max_event_bytes: int = Field(32768, ge=1)
    min_event_time: str = "2000-01-01T00:00:00Z"
    max_future_seconds: int = Field(86400, ge=0)


class IdentifierTypeConfig(_Strict):
    normalizer: Literal["trim", "lower", "email", "phone"] = "trim"
    max_per_profile: int = Field(ge=1)
    priority: int = Field(ge=1)
    max_degree: int | None = Field(None, ge=1)


MATCH_FIELDS = ("first_name", "last_name", "date_of_birth", "street", "city", "postal_code", "email", "phone")


class ComparisonConfig(_Strict):
    kind: Literal[
        "exact",
        "levenshtein",
        "jaro_winkler",
        "name",
        "forename_surname",
        "date_of_birth",
        "email",
        "postcode",
    ]
    columns: list[Literal[MATCH_FIELDS]] = Field(min_length=1, max_length=2)  # type: ignore[valid-type]
    thresholds: list[float] | None = None

    @model_validator(mode="after")
    def _arity(self) -> ComparisonConfig:
        want = 2 if self.kind == "forename_surname" else 1
        if len(self.columns) != want:
            raise ValueError(f"{self.kind} compares {want} column(s), got {self.columns}")
        if self.kind in ("levenshtein", "date_of_birth") and any(
            t != int(t) or t < 1 for t in self.thresholds or []
        ):
            raise ValueError(
                f"{self.kind} thresholds are whole numbers >= 1 (edits, months), got {self.thresholds}"
            )
        return self


class TrainingConfig(_Strict):
    deterministic_rules: list[list[Literal[MATCH_FIELDS]]] = Field(min_length=1)  # type: ignore[valid-type]
    deterministic_recall: float = Field(0.8, gt=0, le=1)
    u_max_pairs: int = Field(1_000_000, ge=1000)
    u_chunks: int = Field(1, ge=1)
    m_label_column: Literal["email", "phone"] | None = "email"
    em_blocking_rules: list[list[Literal[MATCH_FIELDS]]] = []  # type: ignore[valid-type]
    max_iterations: int = Field(20, ge=1)
    em_convergence: float = Field(0.001, gt=0)
    seed: int = 1


class ProbabilisticConfig(_Strict):
    enabled: bool = True
    threshold: float = Field(0.99, gt=0, lt=1)
    comparisons: list[ComparisonConfig] = Field(min_length=1)
    blocking_rules: list[list[Literal[MATCH_FIELDS]]] = Field(min_length=1)  # type: ignore[valid-type]
    training: TrainingConfig

    @model_validator(mode="after")
    def _m_is_trained(self) -> ProbabilisticConfig:
        if self.training.m_label_column is None and not self.training.em_blocking_rules:
            raise ValueError("training needs m_label_column or em_blocking_rules to estimate m-probabilities")
        return self


class IdentityConfig(_Strict):
    max_component_size: int = Field(200, ge=2)
    identifier_types: dict[str, IdentifierTypeConfig]
    blocklist: dict[str, list[str]] = {}
    probabilistic: ProbabilisticConfig | None = None

    @property
    def normalizers(self) -> dict[str, str]:
        return {t: c.normalizer for t, c in self.identifier_types.items()}

    @property
    def limits(self) -> dict[str, int]:
        return {t: c.max_per_profile for t, c in self.identifier_types.items()}

    @property
    def priorities(self) -> dict[str, int]:
        return {t: c.priority for t, c in self.identifier_types.items()}

    @property
    def max_degree(self) -> dict[str, int]:
        return {t: c.max_degree for t, c in self.identifier_types.items() if c.max_degree}

    @model_validator(mode="after")
    def _blocklisted_types_exist(self) -> IdentityConfig:
        unknown = sorted(set(self.blocklist) - set(self.identifier_types))
        if unknown:
            raise ValueError(f"blocklist names identifier types that are not configured: {unknown}")
        return self

    @field_validator("blocklist")
    @classmethod
    def _valid_patterns(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for id_type, values in v.items():
            for value in values:
                if value.startswith("^"):
                    try:
                        re.compile(value)
                    except re.error as exc:
                        raise ValueError(f"{id_type}: bad regular expression {value!r}: {exc}") from exc
        return v


SURVIVORSHIP_RULES = ("source_priority", "most_recent", "most_frequent", "first_seen")
# the attributes a golden profile chooses among its source records (the address is one unit)
PROFILE_ATTRIBUTES = ("first_name", "last_name", "email", "phone", "address", "date_of_birth")


class ProfilesConfig(_Strict):
    """conf/profiles.yaml: how each golden attribute survives (see pipelines/profiles.py)."""

    preview_rows: int = Field(10, ge=0)
    survivorship: dict[str, Literal["source_priority", "most_recent", "most_frequent", "first_seen"]] = (
        dict.fromkeys(PROFILE_ATTRIBUTES, "source_priority")
    )

    @field_validator("survivorship")
    @classmethod
    def _every_attribute_once(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(PROFILE_ATTRIBUTES))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {list(PROFILE_ATTRIBUTES)}")
        return dict.fromkeys(PROFILE_ATTRIBUTES, "source_priority") | v


_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _sql_names(v: dict) -> dict:
    bad = sorted(n for n in v if not _SQL_NAME.fullmatch(n))
    if bad:
        raise ValueError(f"names must be lower-case SQL identifiers (a-z, 0-9, _): {bad}")
    return v


class TraitConfig(_Strict):
    """One computed trait: an aggregate SQL expression over one source view, per profile."""

    source: Literal["events", "orders", "customers"]
    sql: str = Field(min_length=1)  # may use {as_of}: the evaluation time, as a TIMESTAMP literal
    default: str | None = None  # SQL literal for people with no row in the source (e.g. 0)
    description: str = ""

    @property
    def time_based(self) -> bool:
        return "{as_of}" in self.sql


class TraitsConfig(_Strict):
    """conf/traits.yaml (see pipelines/traits.py)."""

    session_gap_minutes: int = Field(30, ge=1)  # events of a device further apart start a new session
    definitions: dict[str, TraitConfig] = {}

    _names = field_validator("definitions")(classmethod(lambda cls, v: _sql_names(v)))


class AudienceConfig(_Strict):
    where: str = Field(
        min_length=1
    )  # a SQL predicate over gold.profiles + gold.profile_traits; may use {as_of}
    description: str = ""

    @property
    def time_based(self) -> bool:
        return "{as_of}" in self.where


class AudiencesConfig(_Strict):
    """conf/audiences.yaml (see pipelines/audiences.py)."""

    # the Dagster check warns when an audience's size changes by more than this fraction in one refresh
    size_change_warning: float = Field(0.5, gt=0)
    # the schedule that re-evaluates time-based audiences (and traits) for everyone
    refresh_cron: str = "*/15 * * * *"
    definitions: dict[str, AudienceConfig] = {}

    _names = field_validator("definitions")(classmethod(lambda cls, v: _sql_names(v)))


PII_CLASSES = ("email", "phone", "name", "address", "date_of_birth", "ip", "identifier", "free_text")
Treatment = Literal["plain", "sha256", "mask", "drop"]


class PoliciesConfig(_Strict):
    """conf/policies.yaml: which columns hold which class of personal data, and who may receive what.

    ``classes``: class -> column names (any table). ``non_personal``: string columns that may keep Delta
    per-file statistics (numbers, dates, booleans always may; every other string column is kept out, so
    the log never holds a personal value as a min/max). ``views``: an analyst view per name, class ->
    treatment; ``destinations``: destination -> class -> treatment (a class not listed is not sent)."""

    classes: dict[Literal[PII_CLASSES], list[str]] = {}  # type: ignore[valid-type]
    non_personal: list[str] = []
    hash_salt_env: str = "CONVERGE_HASH_SALT"  # analyst views hash with this salt (sha256 stays unsalted)
    views: dict[str, dict[Literal[PII_CLASSES], Treatment]] = {}  # type: ignore[valid-type]
    destinations: dict[str, dict[Literal[PII_CLASSES], Treatment]] = {}  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_class_per_column(self) -> PoliciesConfig:
        seen: dict[str, str] = {}
        for cls, columns in self.classes.items():
            for c in columns:
                if c in seen:
                    raise ValueError(f"column {c!r} is in two classes: {seen[c]} and {cls}")
                seen[c] = cls
        return self

    def class_of(self, column: str) -> str | None:
        return next((cls for cls, cols in self.classes.items() if column in cols), None)


class DestinationConfig(_Strict):
    """One activation destination (conf/destinations.yaml)."""

    type: Literal["webhook", "file", "kafka"]
    audiences: list[str] = []  # enter/exit events of these audiences ([] = every audience)
    fields: list[str] = []  # profile or trait columns sent with each event (policies decide how)
    consent: list[str] = []  # categories that must be granted (a missing category is not granted)
    batch_size: int = Field(500, ge=1)
    enabled: bool = True
    # webhook
    url: str | None = None
    headers: dict[str, str] = {}  # values may name an environment variable as ${NAME} (secrets)
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_s: float = Field(1.0, ge=0)  # first retry waits this long, then doubling
    # file
    path: Path | None = None  # folder; relative paths are under the lakehouse root
    format: Literal["csv", "parquet"] = "csv"
    # kafka
    topic: str | None = None
    bootstrap_servers: str | None = None  # default: streaming.kafka.bootstrap_servers

    @model_validator(mode="after")
    def _required(self) -> DestinationConfig:
        need = {"webhook": "url", "file": "path", "kafka": "topic"}[self.type]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.type} destination needs `{need}`")
        return self


class DestinationsConfig(_Strict):
    definitions: dict[str, DestinationConfig] = {}

    _names = field_validator("definitions")(classmethod(lambda cls, v: _sql_names(v)))


class GovernanceConfig(_Strict):
    """conf/governance.yaml: consent categories and how deletions are carried out."""

    consent_categories: list[str] = Field(default_factory=list)
    vacuum_retention_hours: float = Field(168, ge=0)  # < 168 turns Delta's retention safety check off
    vacuum_lite: bool = True  # VACUUM LITE: the files the log says were removed (full: list every file)
    conflict_attempts: int = Field(8, ge=1)  # a deletion racing the stream retries this often
    batch_size: int = Field(1000, ge=1)  # pending requests one `forget` run fulfils together
    scan_paths: list[Path] = []  # more folders `forget --verify` searches (relative: project root)


class CollectorSourceConfig(_Strict):
    """One tracking source (an app, a website): its write key and what the collector does for it."""

    write_key: str = Field(min_length=8)
    enabled: bool = True
    stamp_ip: bool = True  # fill context.ip from the connection when the client sent none
    rate_limit_per_s: float = Field(5000, gt=0)  # events per second (token bucket)
    burst: int = Field(25000, ge=1)


class CollectorConfig(_Strict):
    """`converge collector`: Segment's HTTP tracking API in front of the stream's landing folder or topic."""

    host: str = "127.0.0.1"
    port: int = Field(8088, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    sink: Literal["files", "kafka"] = "files"  # kafka: streaming.kafka's servers and topic, acks=all
    roll_seconds: float = Field(
        1.0, gt=0
    )  # a landing file is renamed in at the latest this long after it opened
    roll_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch_bytes: int = Field(500 * 1024, ge=1024)  # Segment's limits
    max_batch_events: int = Field(2500, ge=1)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)  # decompressed, any request (gzip bombs stop here)
    body_timeout_s: float = Field(10.0, gt=0)  # a client that stalls mid-body gets 408
    cors_origins: list[str] = ["*"]  # web pages allowed to send (analytics.js runs on the site's origin)
    sources: dict[str, CollectorSourceConfig] = {}

    @model_validator(mode="after")
    def _unique_keys(self) -> CollectorConfig:
        keys = [s.write_key for s in self.sources.values()]
        if len(keys) != len(set(keys)):
            raise ValueError("collector.sources: two sources share a write key")
        return self


class SqlServerConfig(_Strict):
    """`converge sql-server`: the Spark Thrift Server (HiveServer2 protocol) for BI tools."""

    host: str = "127.0.0.1"
    port: int = Field(10000, ge=1, le=65535)


class Config(_Strict):
    env: str = "dev"
    lakehouse: LakehouseConfig
    spark: SparkConfig
    sources: SourcesConfig
    streaming: StreamingConfig = StreamingConfig()
    events: EventsConfig = EventsConfig()
    identity: IdentityConfig
    profiles: ProfilesConfig = ProfilesConfig()
    traits: TraitsConfig = TraitsConfig()
    audiences: AudiencesConfig = AudiencesConfig()
    collector: CollectorConfig = CollectorConfig()
    sql_server: SqlServerConfig = SqlServerConfig()
    policies: PoliciesConfig = PoliciesConfig()
    destinations: DestinationsConfig = DestinationsConfig()
    governance: GovernanceConfig = GovernanceConfig()

    @model_validator(mode="after")
    def _destinations_fit(self) -> Config:
        """Every destination names known audiences and consent categories, and every field it sends that
        holds personal data is allowed for it by conf/policies.yaml."""
        for name, d in self.destinations.definitions.items():
            unknown = sorted(set(d.audiences) - set(self.audiences.definitions))
            if unknown:
                raise ValueError(f"destinations.{name}: unknown audiences {unknown}")
            bad = sorted(set(d.consent) - set(self.governance.consent_categories))
            if bad:
                raise ValueError(f"destinations.{name}: unknown consent categories {bad}")
            allowed = self.policies.destinations.get(name, {})
            for f in d.fields:
                cls = self.policies.class_of(f)
                if cls is not None and allowed.get(cls, "drop") == "drop":  # type: ignore[call-overload]
                    raise ValueError(
                        f"destinations.{name}: field {f!r} holds {cls} data, which conf/policies.yaml "
                        f"does not allow for {name}"
                    )
        return self

    @model_validator(mode="after")
    def _systems_have_identifier_types(self) -> Config:
        missing = sorted(
            f"{s}_id" for s in self.sources.systems if f"{s}_id" not in self.identity.identifier_types
        )
        if missing:
            raise ValueError(f"identity.identifier_types must configure the CRM record id types {missing}")
        return self

    def table_path(self, layer: str, table: str) -> str:
        """Absolute path of a Delta table, e.g. ``table_path("silver", "events")``."""
        return str(self.lakehouse.root / layer / table)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested dicts merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def load_config(
    env: str | None = None, overrides: dict[str, Any] | None = None, lakehouse: str | None = None
) -> Config:
    """Load and validate the configuration for ``env`` (default: $CONVERGE_ENV or ``dev``).

    ``lakehouse`` (else $CONVERGE_LAKEHOUSE) moves the whole lakehouse: tables, landing and checkpoints.
    $CONVERGE_OVERRIDES, a YAML/JSON mapping (``{streaming: {source: kafka}}``), is merged over the files,
    and ``overrides`` over that: one process can be pointed elsewhere without another conf file.
    """
    env = env or os.environ.get("CONVERGE_ENV", "dev")
    # (file, the key its content goes under): sections of their own first, the environment's overrides last.
    files: list[tuple[Path, str | None]] = [(CONF_DIR / "base.yaml", None)]
    files += [(CONF_DIR / f"{section}.yaml", section) for section in SECTION_FILES]
    env_file = CONF_DIR / f"{env}.yaml"
    if env_file.exists():
        files.append((env_file, None))
    elif env != "dev":
        raise ConfigError(f"{env_file}: no configuration for CONVERGE_ENV={env!r}")
    merged: dict[str, Any] = {}
    for f, section in files:
        content = _read_yaml(f)
        merged = deep_merge(merged, {section: content} if section else content)
    merged["env"] = env
    lakehouse_override = lakehouse or os.environ.get("CONVERGE_LAKEHOUSE")
    if lakehouse_override:
        root = Path(lakehouse_override)
        merged.setdefault("lakehouse", {})
        merged["lakehouse"].update(
            root=str(root), landing=str(root / "landing"), checkpoints=str(root / "_checkpoints")
        )
    env_overrides = os.environ.get("CONVERGE_OVERRIDES")
    if env_overrides:
        parsed = yaml.safe_load(env_overrides)
        if not isinstance(parsed, dict):
            raise ConfigError(f"CONVERGE_OVERRIDES must be a YAML mapping, got {env_overrides!r}")
        merged = deep_merge(merged, parsed)
    if overrides:
        merged = deep_merge(merged, overrides)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{' + '.join(str(f) for f, _ in files)}: {problems}") from exc
    lh = cfg.lakehouse
    cfg.lakehouse = lh.model_copy(
        update={
            "root": _absolute(lh.root),
            "landing": _absolute(lh.landing),
            "checkpoints": _absolute(lh.checkpoints),
        }
    )
    cfg.spark.ivy_dir = _absolute(cfg.spark.ivy_dir)
    cfg.spark.maven_poms = [_absolute(p) for p in cfg.spark.maven_poms]
    return cfg
