"""The one settings object, nested by concern, read from ``CITY_VITALS_*`` environment variables.

Built once in each entry point and passed down; nothing else reads the environment.
Example: ``CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS=kafka-1:9092``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import Topics

_DEFAULT_DB_URL = "postgresql://city_vitals@127.0.0.1:54329/city_vitals"
# Placeholders shipped in deploy/ and docs; production must replace them.
PLACEHOLDER_PASSWORDS = frozenset({"REPLACE-ME", "change-me"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="city-vitals", pattern=r"^[A-Za-z0-9._\-]+$")
    partitions: int = Field(
        default=3,
        ge=1,
        description="Partitions for topics we create: as many as members a consumer group may "
        "run (deploy/ sets 12, docker-compose.yml 6; the local stack's embedded broker takes "
        "CITY_VITALS_LOCAL__BROKER_PARTITIONS unless this is set).",
    )
    replication_factor: int = Field(default=1, ge=1)
    # Apache Kafka supports the idempotent producer; the local Tansu broker does not.
    enable_idempotence: bool = False
    request_timeout_ms: int = Field(default=10_000, ge=1000)
    linger_ms: int = Field(
        default=5,
        ge=0,
        description="How long a producer batch waits for more records: ingest's concurrent "
        "requests share one batch per partition for this long (0: a batch per request).",
    )
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = Field(
        default="zstd",
        description="How producers compress their batches (Kafka 2.1 or newer reads zstd). A "
        "frame of readings shrinks ~16x for ~0.1 us a reading to compress and 0.05 to read: the "
        "local broker's CPU fell from 2.0 to 0.7 us a reading, and a 1 MB produce request, one "
        "in flight at a time, carries ~80,000 readings instead of ~10,000.",
    )
    max_batch_records: int = Field(default=5_000, ge=1, description="Records per consumer batch.")
    # How long the broker may hold a fetch waiting for data: bounds reading-to-alert latency.
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="A consumer silent this long leaves its group; its partitions move on.",
    )

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)


class DatabaseSettings(_Section):
    url: SecretStr = SecretStr(_DEFAULT_DB_URL)
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(default=8, ge=1)
    acquire_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a request waits for a connection before 503."
    )
    # Use TimescaleDB features when the extension is installed on the server.
    use_timescaledb: bool = True


class AuthSettings(_Section):
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a key check is remembered; a revocation "
        "takes effect within this time.",
    )


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class IngestSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    max_batch_items: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # What a caller is told to wait before retrying when the broker cannot take data.
    retry_after_seconds: int = Field(default=5, ge=1)
    delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    max_future_seconds: float | None = Field(
        default=300.0,
        gt=0,
        description="Readings stamped further ahead of the server's clock are refused: a device "
        "clock running ahead would move its whole partition's event time on and make everyone "
        "else's readings late for the rules engine. Unset: no limit.",
    )
    # Reading ids remembered to drop a retried batch's repeats (about 100 bytes each): the
    # latest half of this at least, all of it at most (ingest.batch.RecentIds).
    dedupe_capacity: int = Field(default=1_000_000, ge=1)
    # Readings of devices missing from the registry, or disabled there, are refused.
    require_registered_devices: bool = True
    registry_refresh_seconds: float = Field(default=5.0, gt=0)
    sort_processes: int = Field(
        default=2,
        ge=0,
        description="Worker processes that parse, validate and encode batch bodies beside the "
        "event loop (ingest/sorting.py); 0: in the event loop. Two on a 2-core machine: the "
        "event loop then needs about half a core.",
    )


class MqttSettings(_Section):
    """The MQTT bridge: devices publish to <topic_root>/<district>/<device type>/<device id>."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_root: str = Field(default="city-vitals/readings", pattern=r"^[A-Za-z0-9_\-/.]+$")
    # A fixed id and a persistent session: Mosquitto keeps QoS 1 messages while we are away.
    client_id: str = "city-vitals-bridge"
    username: str | None = None
    password: SecretStr | None = None
    max_batch: int = Field(default=1000, ge=1, description="Messages forwarded per Kafka hand-off.")


class RulesSettings(_Section):
    catalogue: Path | None = Field(
        default=None, description="Indicator catalogue YAML; the bundled default when unset."
    )
    consumer_group: str = "city-vitals-rules"
    definitions_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the engine polls PostgreSQL's definitions version (hot reload).",
    )
    stale_factor: float = Field(
        default=3.0,
        ge=1,
        description="No data for an indicator's update interval times this raises a no-data "
        "alert (counted from the end of the last window with data, plus one window).",
    )
    tick_seconds: float = Field(
        default=5.0,
        gt=0,
        description="A source partition quiet this long (wall clock) gets a tick, so windows "
        "close and durations run out although no data arrives.",
    )
    commit_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How often state and offsets are saved together (0: after every batch). "
        "A crash replays at most this much, re-emitting identical records.",
    )


class WriterSettings(_Section):
    consumer_group: str = Field(
        default="city-vitals-writer",
        description="Readings are consumed in this group, alerts in '<group>-alerts', and "
        "indicator values, tickets and dead letters in '<group>-events', each by a process "
        "of its own: an alert never waits behind the others.",
    )
    # Rollup refresh and retention run inside the writer (one replica at a time) on plain
    # PostgreSQL; TimescaleDB's own job scheduler runs its policies.
    maintenance_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often the plain layout's upkeep runs."
    )
    maintenance_offset_seconds: float = Field(
        default=40.0,
        ge=0,
        description="Upkeep rounds run this far past each multiple of the interval (wall "
        "clock). The rules engine closes most windows 30 s (the usual allowed lateness) past "
        "a minute, with a burst of alerts; a round's aggregation, seconds of a core at high "
        "rates, then starts after that burst and ends well before the next.",
    )
    readings_processes: int = Field(
        default=1,
        ge=1,
        description="Processes writing readings, in one consumer group: each takes some of "
        "the readings topic's partitions and writes them through a PostgreSQL backend of its "
        "own, so give the topic at least as many partitions. One process and its backend "
        "write one batch at a time, ~4 us of CPU a reading between them (writer ~2, "
        "PostgreSQL ~2 since migration 0012; ~9 with the per-device index before it).",
    )
    synchronous_commit: bool = Field(
        default=True,
        description="Wait for each batch's transaction to reach the disk before the next. Off "
        "is safe: a batch's rows commit together with the Kafka offsets they end at, so a "
        "transaction PostgreSQL loses in a crash loses its offsets with it; the next batch "
        "then finds the stored offset behind the one the writer stored, and the writer goes "
        "on from the stored offsets, reading the batch from Kafka again (its records stay "
        "there for the topic's retention). Off cut a small commit's worst wait behind the "
        "readings' WAL from ~80 ms to ~10 ms on a 2-core machine, but bench.e2e's storm "
        "showed no gain beyond its noise, so the default keeps the wait.",
    )
    bulk_niceness: int = Field(
        default=5,
        ge=0,
        le=19,
        description="How much nicer (lower CPU priority) the readings and events roles run "
        "than the alerts role: on a busy machine an alert's few rows go first, and the bulk "
        "catches up when it is idle.",
    )
    nice_database_backends: bool = Field(
        default=False,
        description="PostgreSQL runs on this host (the local stack sets this): give the "
        "readings and events roles' database backends the roles' niceness too, so the COPY "
        "work they hand PostgreSQL also yields to alerts. Leave it off for a database on "
        "another host: a backend's process id would name some other local process.",
    )
    bulk_fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description="How long the broker may hold a fetch of the readings and events roles "
        "until it has bulk_fetch_min_bytes for them: readings and values are stored up to "
        "this much later, in fewer, larger fetches and transactions.",
    )
    bulk_fetch_min_bytes: int = Field(default=1024 * 1024, ge=1)


class StorageSettings(_Section):
    """How long history is kept and when it is compressed; None keeps it for ever."""

    readings_retention_days: int | None = Field(default=90, ge=1)
    indicator_values_retention_days: int | None = Field(default=400, ge=1)
    alert_transitions_retention_days: int | None = Field(default=None, ge=1)
    rollup_1m_retention_days: int | None = Field(default=400, ge=1)
    # Plain layout only.
    readings_vacuum_minutes: int | None = Field(
        default=10,
        ge=1,
        le=60,
        description="Vacuum and analyze the readings table in the upkeep round at every "
        "multiple of this many minutes, and let autovacuum take it on its own only after "
        "far more inserts than its defaults. At 15,000 readings/s autovacuum took the table "
        "about once a minute, 2-3 s at full priority each time, whenever the inserts had "
        "crossed its threshold: over a storm's window close it held ingest up 350 ms. "
        "None leaves the table to autovacuum's defaults.",
    )
    # TimescaleDB only: chunks older than this are compressed (columnstore).
    compress_after_days: int | None = Field(default=7, ge=1)
    # TimescaleDB only: continuous aggregates are refreshed this far back, so data this late
    # still counts. On plain PostgreSQL the writer marks the buckets late data changes, and
    # the refresh redoes just those, however late.
    rollup_lateness_minutes: int = Field(default=60, ge=1)


class LocalSettings(_Section):
    data_dir: Path | None = Field(
        default=None, description="Where the local stack keeps PostgreSQL and logs."
    )
    postgres_port: int = Field(default=54329, ge=1, le=65535)
    broker_port: int = Field(default=9092, ge=1, le=65535)
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    # Off: use the MQTT broker at CITY_VITALS_MQTT__HOST:PORT instead of starting Mosquitto.
    embedded_mqtt: bool = True
    # Off: use the configured CITY_VITALS_KAFKA__* / CITY_VITALS_DB__URL parts instead.
    embedded_broker: bool = True
    embedded_postgres: bool = True
    broker_partitions: int = Field(
        default=1,
        ge=1,
        description="Partitions of the topics on the embedded broker, unless "
        "CITY_VITALS_KAFKA__PARTITIONS is set. One: its memory store keeps every produced "
        "batch and lists a partition's batches on each fetch, and a post spread over three "
        "partitions stores three batches; one partition stores one. Set more to try scaling "
        "a consumer group out on one machine.",
    )
    simulate: bool = True
    simulate_rate: float = Field(default=20.0, gt=0, description="Readings per second.")
    # The key the simulated city posts with; the local stack issues one at every start.
    gateway_key: SecretStr | None = None


class Settings(BaseSettings):
    """Everything configurable about a city-vitals process."""

    model_config = SettingsConfigDict(
        env_prefix="CITY_VITALS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    env: Environment = Environment.DEVELOPMENT
    log_level: str = "INFO"
    kafka: KafkaSettings = KafkaSettings()
    db: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    ingest: IngestSettings = IngestSettings()
    mqtt: MqttSettings = MqttSettings()
    rules: RulesSettings = RulesSettings()
    writer: WriterSettings = WriterSettings()
    storage: StorageSettings = StorageSettings()
    local: LocalSettings = LocalSettings()

    @model_validator(mode="after")
    def _no_development_defaults_in_production(self) -> Settings:
        if self.env is Environment.PRODUCTION:
            if self.db.url.get_secret_value() == _DEFAULT_DB_URL:
                raise ValueError(
                    "CITY_VITALS_DB__URL must be set in production (the default points at the "
                    "local development database)"
                )
            password = urlsplit(self.db.url.get_secret_value()).password
            if password in PLACEHOLDER_PASSWORDS:
                raise ValueError("CITY_VITALS_DB__URL still holds a placeholder password")
            if self.kafka.bootstrap_servers == KafkaSettings().bootstrap_servers:
                raise ValueError("CITY_VITALS_KAFKA__BOOTSTRAP_SERVERS must be set in production")
        return self


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same settings (the local stack
    hands its settings to the services it starts this way)."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for field in type(value).model_fields:
                inner = getattr(value, field)
                if inner is not None:
                    env[f"CITY_VITALS_{name.upper()}__{field.upper()}"] = _env_value(inner)
        elif value is not None:
            env[f"CITY_VITALS_{name.upper()}"] = _env_value(value)
    return env
