"""Service settings, read from the environment and `.env` (names as in docs/operations.md).

Durations named `*_TIMEOUT` and `*_DELAY` are milliseconds, `*_TTL` are seconds,
as in the original service.

One module (some 620 lines) on purpose: every setting with its default, its
environment name and its check in one place, so `potok-state config` and
docs/operations.md's table have one source.
"""

from __future__ import annotations

import resource
from enum import StrEnum
from functools import cached_property

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from potok_state.kit.scopes import ApiKey, InvalidApiKeys, parse_api_keys

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./data/potok-state.db"
DEVELOPMENT_API_KEYS = "gateway:gateway-service-key"
# Production refuses API keys and a WEBHOOK_SECRET_KEY shorter than this.
MIN_PRODUCTION_SECRET = 16
FILES_KEPT_FROM_CONNECTIONS = 288
"""Open files a server process needs besides its connections (database, Redis,
logs) and the 32 overflow connections kept for health probes (kit/server.py)."""


def connections_for_open_files() -> int:
    """The connections this process can hold: its open-file limit less what it
    needs besides them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(16, soft - FILES_KEPT_FROM_CONNECTIONS)


EXAMPLE_SECRETS = frozenset({"", "your-webhook-secret", "change-me", "development-secret"})


class AppEnv(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class LogFormat(StrEnum):
    JSON = "json"
    PRETTY = "pretty"


class SqliteSynchronous(StrEnum):
    FULL = "full"
    NORMAL = "normal"


class StorageBackend(StrEnum):
    SQL = "sql"
    EXTERNAL = "external"


def _config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )


class WebhookSettings(BaseSettings):
    model_config = _config("WEBHOOK_")

    delivery_timeout: int = Field(30_000, ge=1, description="Per-attempt timeout, ms.")
    max_retries: int = Field(3, ge=0, le=20, description="Retries after the first attempt.")
    retry_delay: int = Field(5_000, ge=0, description="Backoff base, ms; doubles each retry.")
    secret_key: SecretStr = Field(
        SecretStr("development-secret"),
        description="The service secret: subscription secrets are encrypted at rest with a key "
        "derived from it (docs/webhooks.md).",
    )
    previous_secret_key: SecretStr | None = Field(
        None,
        description="The WEBHOOK_SECRET_KEY before a change: stored secrets are re-encrypted "
        "from it at startup.",
    )
    max_consecutive_failures: int = Field(
        10,
        ge=1,
        description="Deliveries in a row that exhausted their retries before a subscription "
        "may be disabled (with WEBHOOK_DISABLE_AFTER; docs/webhooks.md).",
    )
    disable_after: int = Field(
        86_400_000,
        ge=0,
        description="How long failures must have lasted before a subscription is disabled, ms.",
    )
    circuit_failures: int = Field(
        5,
        ge=1,
        description="Failed attempts in a row that open a subscription's circuit: its "
        "deliveries wait while one probe per interval tests the receiver.",
    )
    circuit_probe_delay: int = Field(
        5_000, ge=1, description="First interval between circuit probes, ms; doubles each time."
    )
    circuit_max_probe_delay: int = Field(
        600_000, ge=1, description="Longest interval between circuit probes, ms."
    )
    secret_grace: int = Field(
        86_400_000,
        ge=0,
        description="How long the old secret still signs after a rotation, ms.",
    )
    allow_private_targets: bool | None = Field(
        None,
        description="Allow private/loopback webhook URLs; defaults to true outside production.",
    )
    replay_max: int = Field(
        100_000,
        ge=1,
        description="Deliveries one replay may queue; a replay that would queue more is "
        "refused with 422, nothing queued (docs/webhooks.md).",
    )
    embedded_worker: bool = Field(
        True,
        description="Run the delivery worker inside `serve`; turn off when running "
        "separate `potok-state worker` processes.",
    )
    worker_concurrency: int = Field(
        64, ge=1, le=1000, description="Delivery attempts in flight per worker process."
    )
    max_in_flight_per_subscription: int = Field(
        48,
        ge=1,
        le=1000,
        description="Delivery attempts one subscription may have in flight in one worker "
        "process (never two for the same entity); while several subscriptions have work, "
        "each gets its share of WEBHOOK_WORKER_CONCURRENCY.",
    )


class RetentionSettings(BaseSettings):
    """What is pruned, and when (docs/operations.md, "Retention")."""

    model_config = _config("RETENTION_")

    deliveries_ttl: int = Field(
        604_800,
        ge=0,
        description="Succeeded webhook deliveries and their attempts are deleted this long "
        "after they were queued, s.",
    )
    outbox_ttl: int = Field(
        604_800,
        ge=0,
        description="Change feed events older than this are deleted once dispatched and no "
        "pending delivery needs them, s; older revisions then answer 410 revision_pruned.",
    )
    history_ttl: int | None = Field(
        None,
        ge=0,
        validation_alias=AliasChoices("HISTORY_RETENTION", "history_ttl"),
        description="History rows older than this are deleted, s; unset keeps history forever.",
    )
    delay: int = Field(60_000, ge=10, description="Pause between pruning rounds, ms.")
    batch: int = Field(
        1_000,
        ge=1,
        le=100_000,
        description="Rows deleted per statement (small batches keep writers from waiting).",
    )


class CacheSettings(BaseSettings):
    model_config = _config("CACHE_")

    state_ttl: int = Field(300, ge=1, description="TTL of one cached state, s.")
    list_ttl: int = Field(60, ge=1, description="TTL of a cached query result, s.")
    timeout: int = Field(
        50, ge=1, description="Per-command Redis timeout of a cache tier, ms; slower is a failure."
    )
    retry_delay: int = Field(
        1_000, ge=1, description="How long a failed cache tier is skipped before it is retried, ms."
    )
    near_size: int = Field(
        10_000,
        ge=0,
        description="States each process keeps encoded in memory in front of the Redis tiers "
        "(the near cache); 0 turns it off.",
    )


class WatchSettings(BaseSettings):
    model_config = _config("WATCH_")

    heartbeat: int = Field(
        15_000, ge=100, description="Comment line sent on an idle watch stream every so many ms."
    )
    max_clients: int = Field(
        1_000, ge=1, description="Open watch streams per API key and process; 429 beyond."
    )
    max_buffer_bytes: int = Field(
        1024 * 1024,
        ge=16 * 1024,
        description="Bytes a watch stream may hold unsent (its queued events and its "
        "connection's write buffer); a stream over it is cut off with a reset event saying "
        "where to resume.",
    )
    memory_budget: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes all watch streams of a process may hold unsent together; over it "
        "the streams holding most are closed (they resume with Last-Event-ID).",
    )


class ConsoleSettings(BaseSettings):
    """The operator console at /console (docs/console.md)."""

    model_config = _config("CONSOLE_")

    enabled: bool = Field(
        True, description="Serve the operator console at /console; false answers 404 there."
    )
    session_ttl: int = Field(
        28_800,
        ge=1,
        le=30 * 86_400,
        description="How long a console sign-in lasts, s; then the operator signs in again.",
    )


class RedisTierSettings(BaseSettings):
    host: str = Field("localhost", description="Redis host.")
    port: int = Field(6379, ge=1, le=65535, description="Redis port.")
    db: int = Field(0, ge=0, description="Redis database number.")
    password: SecretStr | None = Field(None, description="Redis password.")
    enabled: bool = False

    @model_validator(mode="after")
    def _on_when_pointed_at(self) -> RedisTierSettings:
        """A tier whose host or port is set is on unless `*_ENABLED` says false:
        the seed's `.env` configures the local tier that way, with no flag."""
        explicit = self.model_fields_set
        if "enabled" not in explicit and explicit & {"host", "port"}:
            self.enabled = True
        return self


class RedisLocalSettings(RedisTierSettings):
    model_config = _config("REDIS_LOCAL_")

    enabled: bool = Field(
        False,
        description="Use a local Redis cache tier (on by itself when REDIS_LOCAL_HOST or _PORT "
        "is set and this is not).",
    )


class RedisGlobalSettings(RedisTierSettings):
    model_config = _config("REDIS_GLOBAL_")

    enabled: bool = Field(
        False,
        description="Use the global Redis tier shared by replicas (on by itself when "
        "REDIS_GLOBAL_HOST or _PORT is set and this is not).",
    )
    db: int = Field(1, ge=0, description="Redis database number.")


class ThrottleSettings(BaseSettings):
    model_config = _config("THROTTLE_")

    limit: int = Field(1000, ge=0, description="Requests per API key per window; 0 disables.")
    ttl: int = Field(60, ge=1, description="Rate-limit window, s.")
    auth_failures: int = Field(
        20,
        ge=0,
        description="Failed authentications per client address per window; beyond, further "
        "failures from the address get 429 until its window ends (valid keys still pass). "
        "0 disables.",
    )


class ExternalDbSettings(BaseSettings):
    model_config = _config()

    url: str | None = Field(
        None, validation_alias="EXTERNAL_DB_URL", description="Potok Admin Service base URL."
    )
    api_key: SecretStr | None = Field(
        None, validation_alias="EXTERNAL_DB_API_KEY", description="Admin Service API key."
    )
    connection_timeout: int = Field(
        30_000, ge=1, validation_alias="DB_CONNECTION_TIMEOUT", description="Per-call timeout, ms."
    )
    retry_attempts: int = Field(
        3,
        ge=0,
        le=20,
        validation_alias="DB_RETRY_ATTEMPTS",
        description="Retries of one call on network errors, timeouts, 5xx and 429.",
    )
    max_backlog: int = Field(
        100_000,
        ge=1,
        validation_alias="EXTERNAL_DB_MAX_BACKLOG",
        description="Accepted changes not yet in the Admin Service; beyond, writes get 503.",
    )
    states_collection: str = Field(
        "states",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        validation_alias="EXTERNAL_DB_STATES_COLLECTION",
        description="Admin Service collection of the current states.",
    )
    history_collection: str = Field(
        "state_history",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        validation_alias="EXTERNAL_DB_HISTORY_COLLECTION",
        description="Admin Service collection of the history records.",
    )


class NatsSettings(BaseSettings):
    """The event stream in NATS JetStream (docs/stream.md); off while `NATS_URL` is empty."""

    model_config = _config("NATS_")

    url: str | None = Field(
        None,
        description="NATS server URL(s), comma-separated (`nats://host:4222`, `tls://…`); "
        "empty: the event stream is off.",
    )
    stream: str = Field(
        "POTOK",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream the events go to; created at start when missing.",
    )
    subject_prefix: str = Field(
        "potok",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="First subject token(s): events go to `{prefix}.{event}.{entity}` and "
        "`{prefix}.{event}`.",
    )
    stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Replicas of the stream when the service creates it (3 on a NATS cluster).",
    )
    duplicate_window: int = Field(
        120_000,
        ge=1_000,
        description="JetStream de-duplication window of a stream the service creates, ms.",
    )
    publish_timeout: int = Field(
        5_000, ge=100, description="How long the publisher waits for JetStream's ack, ms."
    )
    user: str | None = Field(None, description="NATS user name (with NATS_PASSWORD).")
    password: SecretStr | None = Field(None, description="NATS password.")
    token: SecretStr | None = Field(None, description="NATS authentication token.")
    creds_file: str | None = Field(
        None, description="NATS credentials file (JWT and NKey seed, as `nsc` writes it)."
    )
    nkey_seed_file: str | None = Field(None, description="File holding an NKey seed.")
    tls_ca_file: str | None = Field(
        None, description="CA bundle to verify the NATS server with (turns TLS on)."
    )
    tls_cert_file: str | None = Field(
        None, description="Client certificate for mutual TLS (with NATS_TLS_KEY_FILE)."
    )
    tls_key_file: str | None = Field(None, description="Private key of NATS_TLS_CERT_FILE.")

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.url.strip())


class Settings(BaseSettings):
    model_config = _config()

    app_env: AppEnv = Field(
        AppEnv.DEVELOPMENT,
        validation_alias=AliasChoices("APP_ENV", "NODE_ENV", "app_env"),
        description="development, test or production.",
    )
    app_name: str = Field("potok-state-service", description="Service name in logs and health.")
    port: int = Field(3002, ge=1, le=65535, description="HTTP port.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("WEB_CONCURRENCY", "workers"),
        description="Server processes sharing the port (`serve --workers N`); one per core.",
    )
    host: str = Field("0.0.0.0", description="HTTP bind address.")
    forwarded_allow_ips: str = Field(
        "",
        validation_alias=AliasChoices("FORWARDED_ALLOW_IPS", "forwarded_allow_ips"),
        description="Comma-separated addresses (or networks, `*` for any) of proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; empty (the default) trusts none, "
        "so the client address is always the TCP peer.",
    )
    log_level: str = Field("info", description="debug, info, warning, error.")
    log_format: LogFormat = Field(LogFormat.PRETTY, description="json or pretty.")
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys, each `key`, `name:key` (every scope) or "
        "`name:key:scopes` (`read`, `write`, `admin` joined by `+`, each optionally limited "
        "to entity types: `read+write@invoice|payment`); the name is the actor.",
    )
    database_url: str = Field(DEFAULT_SQLITE_URL, description="SQLAlchemy async database URL.")
    database_pool_size: int = Field(16, ge=1, description="Connections per process (PostgreSQL).")
    sqlite_synchronous: SqliteSynchronous = Field(
        SqliteSynchronous.FULL,
        description="SQLite durability: full syncs the log at every (group) commit, so an "
        "answered write survives a power loss; normal survives a crash of the process only.",
    )
    storage_backend: StorageBackend = Field(StorageBackend.SQL, description="sql or external.")
    state_machines_file: str | None = Field(
        None, description="YAML file with transition tables that extend the built-in ones."
    )
    state_machines_strict: bool = Field(
        False, description="Reject entity types that have no transition table."
    )
    metadata_max_bytes: int = Field(
        65_536, ge=2, description="Largest serialized metadata object, bytes."
    )
    request_body_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body, bytes (413 above)."
    )
    request_body_timeout: int = Field(
        30_000,
        ge=100,
        description="Longest pause while a request body arrives, ms; beyond it a 408 closes "
        "the connection.",
    )
    request_header_timeout: int = Field(
        10_000,
        ge=100,
        description="Longest wait for a whole request head, ms (from the connection's opening, "
        "or the first byte of a later request); beyond it a 408 closes the connection.",
    )
    keep_alive_timeout: int = Field(
        5_000,
        ge=100,
        description="An idle kept-alive connection is closed after so many ms.",
    )
    max_connections: int = Field(
        default_factory=connections_for_open_files,
        ge=1,
        description="Connections served at once per process; beyond it requests get 503 "
        "(health probes are still answered). Default: the open-file limit less 288.",
    )
    idempotency_ttl: int = Field(86_400, ge=1, description="How long an Idempotency-Key holds, s.")

    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    redis_local: RedisLocalSettings = Field(default_factory=RedisLocalSettings)
    redis_global: RedisGlobalSettings = Field(default_factory=RedisGlobalSettings)
    throttle: ThrottleSettings = Field(default_factory=ThrottleSettings)
    external_db: ExternalDbSettings = Field(default_factory=ExternalDbSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    @model_validator(mode="after")
    def _api_keys_parse(self) -> Settings:
        """A malformed entry stops the start, named: a key given scopes it does
        not get, or all of them by accident, is worse than no start."""
        try:
            _ = self.parsed_api_keys
        except InvalidApiKeys as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> Settings:
        if self.app_env is not AppEnv.PRODUCTION:
            return self
        problems: list[str] = []
        raw_keys = self.api_keys.get_secret_value().strip() if self.api_keys else ""
        if not raw_keys:
            problems.append("API_KEYS must be set in production")
        elif raw_keys == DEVELOPMENT_API_KEYS:
            problems.append("API_KEYS must not be the development example key in production")
        else:
            for key in self.parsed_api_keys:
                if not key.named:
                    problems.append(
                        "API_KEYS entries must be named in production (name:key): the name "
                        "is the actor recorded on every change"
                    )
                elif len(key.key.get_secret_value()) < MIN_PRODUCTION_SECRET:
                    problems.append(
                        f"API_KEYS: the key of {key.name!r} is shorter than "
                        f"{MIN_PRODUCTION_SECRET} characters"
                    )
        secret = self.webhooks.secret_key.get_secret_value()
        if secret in EXAMPLE_SECRETS:
            problems.append("WEBHOOK_SECRET_KEY must be set to a real secret in production")
        elif len(secret) < MIN_PRODUCTION_SECRET:
            problems.append(
                f"WEBHOOK_SECRET_KEY must be at least {MIN_PRODUCTION_SECRET} characters "
                "in production"
            )
        if self.storage_backend is StorageBackend.EXTERNAL and not self.external_db.api_key:
            problems.append("EXTERNAL_DB_API_KEY must be set in production")
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        return self

    @model_validator(mode="after")
    def _external_backend_needs_its_service(self) -> Settings:
        if self.storage_backend is StorageBackend.EXTERNAL and not self.external_db.url:
            raise ValueError(
                "STORAGE_BACKEND=external needs EXTERNAL_DB_URL (the Admin Service base URL)"
            )
        return self

    def unused_settings(self) -> list[str]:
        """Settings that are set but do nothing in this configuration, each with
        what to do instead (logged once at startup, listed by `config --check`)."""
        notes: list[str] = []
        external = list(by_environment_name(self.external_db, only_set=True))
        if self.storage_backend is StorageBackend.SQL and external:
            notes.append(
                f"{', '.join(external)} {'is' if len(external) == 1 else 'are'} set but "
                "STORAGE_BACKEND=sql keeps states in DATABASE_URL: the Admin Service is not used"
            )
        for tier, switch in ((self.redis_local, "LOCAL"), (self.redis_global, "GLOBAL")):
            pointed = [
                name
                for name in by_environment_name(tier, only_set=True)
                if name != f"REDIS_{switch}_ENABLED"
            ]
            if pointed and not tier.enabled:
                notes.append(
                    f"{', '.join(pointed)} {'is' if len(pointed) == 1 else 'are'} set but "
                    f"REDIS_{switch}_ENABLED=false: the {switch.lower()} Redis tier is off"
                )
        return notes

    def example_values(self) -> list[str]:
        """Settings in use with a value from an example, which production refuses
        (logged once at startup)."""
        if self.webhooks.secret_key.get_secret_value() in EXAMPLE_SECRETS:
            return [
                "WEBHOOK_SECRET_KEY is an example value: set a real secret (production "
                "refuses to start with it)"
            ]
        return []

    @property
    def is_production(self) -> bool:
        return self.app_env is AppEnv.PRODUCTION

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def parsed_api_keys(self) -> tuple[ApiKey, ...]:
        raw = self.api_keys.get_secret_value() if self.api_keys else DEVELOPMENT_API_KEYS
        return parse_api_keys(raw)

    @property
    def webhooks_allow_private_targets(self) -> bool:
        allowed = self.webhooks.allow_private_targets
        return (not self.is_production) if allowed is None else allowed


def environment_names(prefix: str, name: str, field: FieldInfo) -> tuple[str, ...]:
    """The environment variables a setting is read from (`APP_ENV`, `NODE_ENV`);
    the first is the one it is shown under."""
    alias = field.validation_alias
    if isinstance(alias, str):
        return (alias,)
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices if str(choice).isupper())
    return ((prefix + name).upper(),)


def environment_name(prefix: str, name: str, field: FieldInfo) -> str:
    """The environment variable a setting is shown under (the first of its aliases)."""
    return environment_names(prefix, name, field)[0]


def by_environment_name(settings: BaseSettings, *, only_set: bool = False) -> dict[str, object]:
    """Every setting under the environment variable that sets it, nested groups
    flattened (`WEBHOOK_DELIVERY_TIMEOUT`, not webhooks.delivery_timeout);
    `only_set`: those given explicitly (environment, `.env`, arguments)."""
    values: dict[str, object] = {}
    prefix = str(settings.model_config.get("env_prefix", ""))
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, BaseSettings):
            values.update(by_environment_name(value, only_set=only_set))
        elif not only_set or name in settings.model_fields_set:
            values[environment_name(prefix, name, field)] = value
    return values


def aliases_by_environment_name(model: type[BaseSettings]) -> dict[str, tuple[str, ...]]:
    """Each setting's name (as `by_environment_name` shows it) and every
    environment variable that sets it."""
    aliases: dict[str, tuple[str, ...]] = {}
    prefix = str(model.model_config.get("env_prefix", ""))
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            aliases.update(aliases_by_environment_name(annotation))
        else:
            names = environment_names(prefix, name, field)
            aliases[names[0]] = names
    return aliases
