//! The orchestrator's settings, from the environment (see the README's configuration table).

use std::time::Duration;

use platform::config;
use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;

use crate::auth::{DEV_AUDIENCE, DEV_ISSUER, DEV_JWT_SECRET, KeySettings};
use crate::retention::RetentionSettings;
use crate::timers::TimerSettings;

/// The key used for customer references when none is configured; fine for development only.
pub const DEV_CUSTOMER_REF_KEY: &str = "dev-only-customer-ref-key-change-me";

/// Everything the orchestrator is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HTTP_ADDR`, default `127.0.0.1:8080`.
    pub http_addr: String,
    /// Kafka (see `platform::kafka`).
    pub kafka: KafkaSettings,
    /// The database; `MONGODB_DATABASE`, default `orchestrator`.
    pub mongo: MongoSettings,
    /// `KAFKA_GROUP_ID`, default `orchestrator`.
    pub group_id: String,
    /// `SAGA_STEP_TIMEOUT_MS`, default 10000: how long a step waits for its reply before it is retried.
    pub step_timeout: Duration,
    /// `SAGA_TIMER_INTERVAL_MS` (default 200), `SAGA_START_GRACE_MS` (5000), `SAGA_START_SWEEP_MS` (60000),
    /// `SAGA_TIMER_REFIRE_MS` (5000).
    pub timer: TimerSettings,
    /// `CUSTOMER_REF_KEY`: the secret behind customer references. Never logged.
    pub customer_ref_key: String,
    /// `SAGA_ENV`: `development` (default) or `production`; production refuses the built-in secrets.
    pub production: bool,
    /// `JWT_PUBLIC_KEY_FILE` with `JWT_ALGORITHM` (`RS256` or `ES256`), else HS256 with `JWT_SECRET`.
    pub jwt_keys: KeySettings,
    /// `JWT_ISSUER`, default `saga-dev`.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE`, default `saga-api`.
    pub jwt_audience: String,
    /// `PII_RETENTION_HOURS` (default 720) and `PII_SWEEP_INTERVAL_SECS` (default 3600).
    pub retention: RetentionSettings,
    /// `SAGA_GAUGE_INTERVAL_SECS`, default 15: how often the saga gauges (sagas per state, oldest age per
    /// state, outbox backlog) are read from the store.
    pub gauge_interval: Duration,
    /// `SAGA_FINISHED_RECOUNT_HOURS`, default 24: how often the finished sagas are counted one by one to
    /// check the gauges' running tally (see [`crate::gauges`]); 1 to 8760.
    pub finished_recount_every: Duration,
    /// `SAGA_SETTLE_AFTER_MS`, default 5000: how long after its first unsettled transition a saga's
    /// timeline entries are appended to the log and its published outbox emptied (0: after every
    /// transition). See [`crate::settle`].
    pub settle_after: Duration,
}

impl Settings {
    /// Settings from the environment; refuses nonsense with a message naming the variable.
    pub fn from_env() -> anyhow::Result<Self> {
        let millis = |name, default| -> Result<Duration, config::Error> {
            config::parsed::<u64>(name, default).map(Duration::from_millis)
        };
        let settings = Self {
            http_addr: config::string("HTTP_ADDR", "127.0.0.1:8080"),
            kafka: KafkaSettings::from_env()?,
            mongo: MongoSettings::from_env("MONGODB_DATABASE", "orchestrator"),
            group_id: config::string("KAFKA_GROUP_ID", "orchestrator"),
            step_timeout: millis("SAGA_STEP_TIMEOUT_MS", 10_000)?,
            timer: TimerSettings {
                interval: millis("SAGA_TIMER_INTERVAL_MS", 200)?,
                start_grace: millis("SAGA_START_GRACE_MS", 5_000)?,
                start_sweep_every: millis("SAGA_START_SWEEP_MS", 60_000)?,
                refire_after: millis("SAGA_TIMER_REFIRE_MS", 5_000)?,
            },
            customer_ref_key: config::string("CUSTOMER_REF_KEY", DEV_CUSTOMER_REF_KEY),
            production: production()?,
            jwt_keys: jwt_keys()?,
            jwt_issuer: config::string("JWT_ISSUER", DEV_ISSUER),
            jwt_audience: config::string("JWT_AUDIENCE", DEV_AUDIENCE),
            retention: RetentionSettings {
                keep_for: Duration::from_secs(config::parsed::<u64>("PII_RETENTION_HOURS", 720)?.saturating_mul(3600)),
                interval: Duration::from_secs(config::parsed::<u64>("PII_SWEEP_INTERVAL_SECS", 3600)?.max(1)),
            },
            gauge_interval: Duration::from_secs(config::parsed::<u64>("SAGA_GAUGE_INTERVAL_SECS", 15)?),
            finished_recount_every: Duration::from_secs(
                config::parsed::<u64>("SAGA_FINISHED_RECOUNT_HOURS", 24)?.saturating_mul(3600),
            ),
            settle_after: millis("SAGA_SETTLE_AFTER_MS", 5_000)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.step_timeout >= Duration::from_millis(50), "SAGA_STEP_TIMEOUT_MS must be at least 50");
        anyhow::ensure!(self.timer.interval >= Duration::from_millis(10), "SAGA_TIMER_INTERVAL_MS must be at least 10");
        anyhow::ensure!(
            (1..=3600).contains(&self.gauge_interval.as_secs()),
            "SAGA_GAUGE_INTERVAL_SECS must be between 1 and 3600"
        );
        anyhow::ensure!(
            (1..=8760).contains(&(self.finished_recount_every.as_secs() / 3600)),
            "SAGA_FINISHED_RECOUNT_HOURS must be between 1 and 8760"
        );
        anyhow::ensure!(self.settle_after <= Duration::from_secs(60), "SAGA_SETTLE_AFTER_MS must be at most 60000");
        anyhow::ensure!(self.customer_ref_key.len() >= 16, "CUSTOMER_REF_KEY must be at least 16 characters");
        if let KeySettings::Hs256 { secret } = &self.jwt_keys {
            anyhow::ensure!(secret.len() >= 32, "JWT_SECRET must be at least 32 characters");
            anyhow::ensure!(
                !(self.production && secret == DEV_JWT_SECRET),
                "SAGA_ENV=production with the built-in development JWT secret: set JWT_SECRET or JWT_PUBLIC_KEY_FILE"
            );
        }
        anyhow::ensure!(
            !(self.production && self.customer_ref_key == DEV_CUSTOMER_REF_KEY),
            "SAGA_ENV=production with the built-in development CUSTOMER_REF_KEY: set CUSTOMER_REF_KEY"
        );
        Ok(())
    }
}

fn production() -> anyhow::Result<bool> {
    match config::string("SAGA_ENV", "development").as_str() {
        "development" => Ok(false),
        "production" => Ok(true),
        other => anyhow::bail!("SAGA_ENV={other:?} is invalid: use development or production"),
    }
}

fn jwt_keys() -> anyhow::Result<KeySettings> {
    let Some(path) = config::optional("JWT_PUBLIC_KEY_FILE") else {
        return Ok(KeySettings::Hs256 { secret: config::string("JWT_SECRET", DEV_JWT_SECRET) });
    };
    let algorithm = match config::string("JWT_ALGORITHM", "RS256").as_str() {
        "RS256" => jsonwebtoken::Algorithm::RS256,
        "ES256" => jsonwebtoken::Algorithm::ES256,
        other => anyhow::bail!("JWT_ALGORITHM={other:?} is invalid with a public key: use RS256 or ES256"),
    };
    let pem =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read JWT_PUBLIC_KEY_FILE={path:?}: {e}"))?;
    Ok(KeySettings::PublicKey { algorithm, pem })
}
