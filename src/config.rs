//! Settings: every one is a command-line flag and an environment variable, validated once at
//! startup into a [`Config`]. A bad setting stops startup with one line that names it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::auth::{AllowedOrigins, ClaimNames, DevTokens, RoomPolicy, Verifier};
use crate::bus::redis::RedisSettings;
use crate::events::catalog::Catalog;
use crate::events::PublishRules;
use crate::presence::PresenceConfig;
use crate::wire::Settings;
pub use presence::PresenceArgs;

mod presence;

/// A setting that cannot be used: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    /// Flag and environment variable, e.g. `--jwt-secret / JWT_SECRET`.
    pub setting: &'static str,
    /// What is wrong and what would be right.
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; use e.g. 500ms, 10s, 5m, 1h, 2d"))?;
    let secs = |m: u64| Duration::from_secs(n.saturating_mul(m));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86400)),
        _ => Err(format!("'{s}' has an unknown unit; use ms, s, m, h or d")),
    }
}

/// A duration longer than 0 (see [`parse_duration`]).
fn nonzero_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| match d.is_zero() {
        true => Err("must be longer than 0".into()),
        false => Ok(d),
    })
}

/// A whole number of at least 1.
fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(v) if v >= T::from(1) => Ok(v),
        _ => Err(format!("'{s}' is not a whole number of at least 1")),
    }
}

/// A duration of at least `min` (see [`parse_duration`]), which the message spells as
/// `spelled`.
fn at_least(
    min: Duration,
    spelled: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        parse_duration(s).and_then(|d| match d < min {
            true => Err(format!("must be at least {spelled}")),
            false => Ok(d),
        })
    }
}

/// A claim name: not blank.
fn claim_name(s: &str) -> Result<String, String> {
    match s.trim().is_empty() {
        true => Err("must name a claim".into()),
        false => Ok(s.to_string()),
    }
}

/// A prefix of Redis keys and channels.
fn redis_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':'));
    match ok {
        true => Ok(s.to_string()),
        false => Err("must be letters, digits, '_', '-', '.' or ':'".into()),
    }
}

/// A gateway's name in the fleet (blank: not set, so generated).
fn gateway_id(s: &str) -> Result<String, String> {
    match s.trim().is_empty() || crate::events::TenantId::parse(s).is_ok() {
        true => Ok(s.to_string()),
        false => Err("must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'".into()),
    }
}

/// The items of a comma-separated list, trimmed, without empty ones.
fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|k| !k.is_empty())
}

/// A room name length limit: 16 to 1024.
fn room_len(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (16..=1024).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not between 16 and 1024")),
    }
}

/// The soft limit on open files of this process (from `/proc/self/limits`; 1024, the usual
/// default, if it cannot be read).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_files(&limits))
        .unwrap_or(1024)
}

/// The "Max open files" soft limit in the text of `/proc/<pid>/limits`.
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags and environment variables of `realtime-gateway serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Public listener: Socket.IO, the publish API, /healthz and /readyz.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,
    /// Admin listener: /metrics. Keep it off the public network.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,
    /// HS256 secret for client tokens (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 or ES256 client tokens (instead of JWT_SECRET).
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Token algorithm: HS256 (with JWT_SECRET), RS256 or ES256 (with JWT_PUBLIC_KEY_FILE).
    #[arg(long, env = "JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Clock skew tolerated on exp and nbf, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 0)]
    pub jwt_leeway_secs: u64,
    /// Required `iss` claim, if set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Claim that holds the user id.
    #[arg(long, env = "JWT_CLAIM_USER", default_value = "sub", value_parser = claim_name)]
    pub jwt_claim_user: String,
    /// Claim that holds the tenant (institution) id.
    #[arg(long, env = "JWT_CLAIM_TENANT", default_value = "institutionId", value_parser = claim_name)]
    pub jwt_claim_tenant: String,
    /// Claim that holds the role.
    #[arg(long, env = "JWT_CLAIM_ROLE", default_value = "role", value_parser = claim_name)]
    pub jwt_claim_role: String,
    /// API keys accepted by the publish API, comma separated (each at least 16 characters).
    #[arg(long, env = "PUBLISH_API_KEYS", hide_env_values = true)]
    pub publish_api_keys: Option<String>,
    /// API keys file: a JSON array (or YAML list) of `{ key | sha256, name, tenants, scopes }`;
    /// re-read on SIGHUP.
    #[arg(long, env = "GATEWAY_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Tenants file: quota defaults and per-tenant overrides (JSON or YAML); re-read on SIGHUP.
    #[arg(long, env = "GATEWAY_TENANTS_FILE")]
    pub tenants_file: Option<PathBuf>,
    /// How long a revocation is kept: at least the longest token lifetime.
    #[arg(
        long,
        env = "GATEWAY_REVOCATION_TTL",
        default_value = "24h",
        value_parser = at_least(Duration::from_secs(1), "1s (and at least the longest token lifetime)")
    )]
    pub revocation_ttl: Duration,
    /// This gateway's name in the fleet (connection listings); default: generated.
    #[arg(long, env = "GATEWAY_ID", value_parser = gateway_id)]
    pub gateway_id: Option<String>,
    /// Redis URL (redis://host:port/db). Absent: the embedded single-node bus.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma separated (`redis://host:port,redis://host:port`); one is
    /// enough, the others are discovered. Replaces REDIS_URL (set one or the other).
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "rtg", value_parser = redis_prefix)]
    pub redis_prefix: String,
    /// Connections in the Redis publish and history pool.
    #[arg(long, env = "GATEWAY_REDIS_POOL_SIZE", default_value_t = 16, value_parser = positive::<usize>)]
    pub redis_pool_size: usize,
    /// Deadline of one Redis operation (connect, pool wait, command).
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value = "2s", value_parser = at_least(Duration::from_millis(50), "50ms"))]
    pub redis_timeout: Duration,
    /// Most events kept in a room's history.
    #[arg(long, env = "GATEWAY_HISTORY_MAX_LEN", default_value_t = 1000, value_parser = positive::<u64>)]
    pub history_max_len: u64,
    /// How long a room's history lives after its last event.
    #[arg(long, env = "GATEWAY_HISTORY_TTL", default_value = "6h", value_parser = at_least(Duration::from_secs(1), "1s"))]
    pub history_ttl: Duration,
    /// How long a room stays subscribed after its last local member left.
    #[arg(long, env = "GATEWAY_UNSUBSCRIBE_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub unsubscribe_delay: Duration,
    /// Most events one recovery may replay; a bigger gap answers `recovered: false`.
    #[arg(long, env = "GATEWAY_MAX_REPLAY", default_value_t = 1000, value_parser = positive::<u64>)]
    pub max_replay: u64,
    /// Joins a socket may make per second (bursts of as many).
    #[arg(long, env = "GATEWAY_JOIN_RATE", default_value = "20")]
    pub join_rate: std::num::NonZeroU32,
    /// Events one publish API key may publish per second (bursts of as many).
    #[arg(long, env = "GATEWAY_PUBLISH_RATE", default_value = "2000")]
    pub publish_rate: std::num::NonZeroU32,
    /// Most client connections held at once (0: the open-file limit less 256). Past it new
    /// connections are closed at once and /readyz answers 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Outgoing packets queued per socket before it counts as a slow consumer.
    #[arg(long, env = "GATEWAY_SOCKET_BUFFER", default_value_t = 512)]
    pub socket_buffer: usize,
    /// After SIGTERM: how long to keep serving while not ready, so the load balancer moves away.
    #[arg(long, env = "GATEWAY_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// After the delay: the period over which connections are closed in batches.
    #[arg(long, env = "GATEWAY_DRAIN_PERIOD", default_value = "10s", value_parser = parse_duration)]
    pub drain_period: Duration,
    /// Development mode: without JWT_SECRET, generate one (and a publish key) and print them;
    /// serve `GET /dev/token`; allow every browser origin unless GATEWAY_CORS_ORIGINS is set.
    #[arg(long, env = "GATEWAY_DEV", default_value_t = false)]
    pub dev: bool,
    /// Browser origins allowed to poll cross-origin and to open WebSockets, comma separated,
    /// each exactly `scheme://host[:port]` (`*`: any). Default: none (`*` under --dev).
    #[arg(long, env = "GATEWAY_CORS_ORIGINS", value_parser = AllowedOrigins::parse)]
    pub cors_origins: Option<AllowedOrigins>,
    /// Event catalog (JSON) to use instead of the built-in ELMS catalog; the file is a whole catalog.
    #[arg(long, env = "GATEWAY_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Refuse to publish channels, events or payloads that are not in the catalog.
    #[arg(long, env = "GATEWAY_STRICT_CATALOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_catalog: bool,
    /// How long a socket that connected without a token has to emit `authenticate`.
    #[arg(long, env = "GATEWAY_AUTH_GRACE", default_value = "10s", value_parser = nonzero_duration)]
    pub auth_grace: Duration,
    /// How long a new WebSocket session has to send its Socket.IO connect packet.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT", default_value = "45s", value_parser = nonzero_duration)]
    pub connect_timeout: Duration,
    /// Room kinds a socket may join on request, comma separated.
    #[arg(
        long,
        env = "GATEWAY_ROOM_KINDS",
        default_value = "batch,exam,course,timetable,incident"
    )]
    pub room_kinds: String,
    /// Roles allowed per room kind, e.g. `incident=ADMIN|INVIGILATOR;exam=ADMIN` (unlisted kinds: any role).
    #[arg(long, env = "GATEWAY_ROOM_ROLES", default_value = "")]
    pub room_roles: String,
    /// Most rooms a socket may join on request.
    #[arg(long, env = "GATEWAY_MAX_ROOMS_PER_SOCKET", default_value_t = 50, value_parser = positive::<usize>)]
    pub max_rooms_per_socket: usize,
    /// Longest room name, in bytes.
    #[arg(long, env = "GATEWAY_MAX_ROOM_LEN", default_value_t = 128, value_parser = room_len)]
    pub max_room_len: usize,
    /// Largest event payload accepted by the publish paths, in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD_BYTES", default_value_t = 65536, value_parser = positive::<usize>)]
    pub max_payload_bytes: usize,
    /// Most rooms one published event may be addressed to.
    #[arg(long, env = "GATEWAY_MAX_ROOMS_PER_PUBLISH", default_value_t = 32, value_parser = positive::<usize>)]
    pub max_rooms_per_publish: usize,
    /// Most events in one `POST /v1/publish/batch`.
    #[arg(long, env = "GATEWAY_MAX_BATCH", default_value_t = 100, value_parser = positive::<usize>)]
    pub max_batch: usize,
    /// Largest packet a client may send, in bytes (after decompression).
    #[arg(long, env = "GATEWAY_MAX_CLIENT_PACKET_BYTES", default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_client_packet_bytes: u64,
    /// Offer permessage-deflate on WebSocket sessions: negotiated when the client offers it,
    /// without context takeover, so each event is compressed once for every socket.
    #[arg(long, env = "GATEWAY_WS_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub ws_compression: bool,
    /// Messages shorter than this many bytes go out uncompressed (compressing them gains little).
    #[arg(long, env = "GATEWAY_WS_COMPRESSION_MIN_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32))]
    pub ws_compression_min_bytes: u32,
    /// Engine.IO ping interval.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "25s", value_parser = nonzero_duration)]
    pub ping_interval: Duration,
    /// Engine.IO ping timeout.
    #[arg(long, env = "GATEWAY_PING_TIMEOUT", default_value = "20s", value_parser = nonzero_duration)]
    pub ping_timeout: Duration,
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Validate every setting, print `configuration ok` and exit (0 if valid, 2 if not).
    #[arg(long)]
    pub check_config: bool,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `realtime_gateway=debug`.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
    /// Presence and lifecycle stream settings.
    #[command(flatten)]
    pub presence: PresenceArgs,
}

/// Validated settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Token verifier.
    pub verifier: Verifier,
    /// API keys of the publish API (empty: publishing over HTTP is off).
    pub publish_keys: Vec<String>,
    /// Where keys and quotas come from (`PUBLISH_API_KEYS`, the keys and tenants files).
    pub tenancy: crate::tenancy::Sources,
    /// How long a revocation is kept.
    pub revocation_ttl: Duration,
    /// This gateway's name in the fleet.
    pub gateway_id: String,
    /// Redis bus settings; `None` for the embedded bus.
    pub redis: Option<RedisSettings>,
    /// Publish validation rules.
    pub publish: PublishRules,
    /// Most events per batch publish.
    pub max_batch: usize,
    /// Room policy.
    pub policy: RoomPolicy,
    /// Grace period for the seed's `authenticate` flow.
    pub auth_grace: Duration,
    /// Limits and timers of the transport (both Engine.IO transports).
    pub transport: Settings,
    /// Most events kept per room (embedded bus; the Redis bus has its own copy).
    pub history_max_len: u64,
    /// History lifetime after a room's last event.
    pub history_ttl: Duration,
    /// Most client connections held at once.
    pub max_connections: usize,
    /// Joins per second per socket.
    pub join_rate: std::num::NonZeroU32,
    /// Events per second per publish key.
    pub publish_rate: std::num::NonZeroU32,
    /// Drain: not-ready delay before closing connections.
    pub drain_delay: Duration,
    /// Drain: period over which connections are closed.
    pub drain_period: Duration,
    /// Browser origins that get CORS answers on `/socket.io/` and may open WebSockets.
    pub cors_origins: AllowedOrigins,
    /// `--dev` with an HS256 secret: signs the tokens of `GET /dev/token` (absent otherwise).
    pub dev_tokens: Option<DevTokens>,
    /// Presence and lifecycle stream.
    pub presence: PresenceConfig,
}

/// Secrets generated for `--dev`, to be shown to the developer.
#[derive(Debug, Clone, Default)]
pub struct DevSecrets {
    /// The generated HS256 secret.
    pub jwt_secret: Option<String>,
    /// The generated publish key.
    pub publish_key: Option<String>,
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServeArgs {
    /// Validates the settings. In `--dev` mode, missing secrets are generated and returned.
    pub fn into_config(mut self) -> Result<(Config, DevSecrets), ConfigError> {
        // An environment variable set to the empty string means "not set".
        for opt in [
            &mut self.jwt_secret,
            &mut self.jwt_algorithm,
            &mut self.jwt_issuer,
            &mut self.jwt_audience,
            &mut self.publish_api_keys,
            &mut self.redis_url,
            &mut self.gateway_id,
            &mut self.redis_cluster_nodes,
        ] {
            opt.take_if(|v| v.trim().is_empty());
        }
        for path in [
            &mut self.jwt_public_key_file,
            &mut self.api_keys_file,
            &mut self.tenants_file,
            &mut self.catalog,
        ] {
            path.take_if(|p| p.as_os_str().is_empty());
        }
        let mut dev = DevSecrets::default();
        let claims = ClaimNames {
            user: self.jwt_claim_user,
            tenant: self.jwt_claim_tenant,
            role: self.jwt_claim_role,
        };
        // The HS256 secret, if any, that `--dev` signs development tokens with.
        let mut dev_secret = None;
        let (key, algorithm) = match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "--jwt-secret / JWT_SECRET",
                    "give either JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both",
                ))
            }
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err(bad(
                        "--jwt-secret / JWT_SECRET",
                        format!("is {} bytes long; use at least 32 random bytes", secret.len()),
                    ));
                }
                let alg = self.jwt_algorithm.as_deref().unwrap_or("HS256");
                if alg != "HS256" {
                    return Err(bad(
                        "--jwt-algorithm / JWT_ALGORITHM",
                        format!("{alg} needs JWT_PUBLIC_KEY_FILE; JWT_SECRET is for HS256"),
                    ));
                }
                dev_secret = Some(secret.clone());
                (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    bad("--jwt-public-key-file / JWT_PUBLIC_KEY_FILE", format!("cannot read {}: {e}", path.display()))
                })?;
                let alg = self.jwt_algorithm.as_deref().unwrap_or("RS256");
                let key = match alg {
                    "RS256" => DecodingKey::from_rsa_pem(&pem).map(|k| (k, Algorithm::RS256)),
                    "ES256" => DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)),
                    other => {
                        return Err(bad(
                            "--jwt-algorithm / JWT_ALGORITHM",
                            format!("{other} is not supported with a key file; use RS256 or ES256"),
                        ))
                    }
                };
                key.map_err(|e| {
                    bad("--jwt-public-key-file / JWT_PUBLIC_KEY_FILE", format!("not a {alg} PEM public key: {e}"))
                })?
            }
            (None, None) if self.dev => {
                let secret = random_secret();
                dev.jwt_secret = Some(secret.clone());
                dev_secret = Some(secret.clone());
                (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
            }
            (None, None) => {
                return Err(bad(
                    "--jwt-secret / JWT_SECRET",
                    "is required (or JWT_PUBLIC_KEY_FILE); for local development pass --dev to generate one",
                ))
            }
        };
        let dev_tokens = dev_secret
            .filter(|_| self.dev)
            .map(|secret| DevTokens::new(&secret, claims.clone()));
        let verifier = Verifier::new(
            key,
            algorithm,
            claims,
            self.jwt_leeway_secs,
            self.jwt_issuer.as_deref(),
            self.jwt_audience.as_deref(),
        );

        let mut publish_keys: Vec<String> = list(self.publish_api_keys.as_deref().unwrap_or(""))
            .map(String::from)
            .collect();
        if let Some(short) = publish_keys.iter().find(|k| k.len() < 16) {
            return Err(bad(
                "--publish-api-keys / PUBLISH_API_KEYS",
                format!(
                    "a key of {} characters is too short; use at least 16",
                    short.len()
                ),
            ));
        }
        if publish_keys.is_empty() && self.dev {
            let key = random_secret();
            dev.publish_key = Some(key.clone());
            publish_keys.push(key);
        }

        let tenancy = crate::tenancy::Sources {
            publish_keys: publish_keys.clone(),
            keys_file: self.api_keys_file,
            tenants_file: self.tenants_file,
        };
        crate::tenancy::Keyring::load(&tenancy.publish_keys, tenancy.keys_file.as_deref())
            .map_err(|m| bad("--api-keys-file / GATEWAY_API_KEYS_FILE", m))?;
        crate::tenancy::Quotas::load(tenancy.tenants_file.as_deref())
            .map_err(|m| bad("--tenants-file / GATEWAY_TENANTS_FILE", m))?;
        let gateway_id = self
            .gateway_id
            .unwrap_or_else(|| format!("gw-{}", ulid::Ulid::new().to_string().to_lowercase()));

        let (url, cluster_nodes) = match (self.redis_url, self.redis_cluster_nodes) {
            (None, None) => (None, Vec::new()),
            (Some(url), None) => {
                if !["redis://", "rediss://", "redis+unix://", "unix://"]
                    .iter()
                    .any(|p| url.starts_with(p))
                {
                    return Err(bad(
                        "--redis-url / REDIS_URL",
                        "must start with redis://, rediss:// or unix://",
                    ));
                }
                if redis::Client::open(url.as_str()).is_err() {
                    return Err(bad(
                        "--redis-url / REDIS_URL",
                        "is not a valid Redis URL (redis://[user:password@]host:port/db)",
                    ));
                }
                (Some(url), Vec::new())
            }
            (None, Some(nodes)) => {
                let nodes: Vec<String> = list(&nodes).map(String::from).collect();
                let Some(first) = nodes.first().cloned() else {
                    return Err(bad(
                        "--redis-cluster-nodes / REDIS_CLUSTER_NODES",
                        "must list at least one redis:// node",
                    ));
                };
                let tcp = |n: &String| n.starts_with("redis://") || n.starts_with("rediss://");
                if !nodes
                    .iter()
                    .all(|n| tcp(n) && crate::bus::redis::topology::address_of(n).is_some())
                {
                    return Err(bad(
                        "--redis-cluster-nodes / REDIS_CLUSTER_NODES",
                        "each node must be a redis://[user:password@]host:port URL",
                    ));
                }
                (Some(first), nodes)
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "--redis-cluster-nodes / REDIS_CLUSTER_NODES",
                    "cannot be combined with --redis-url / REDIS_URL: set REDIS_URL for one Redis server or REDIS_CLUSTER_NODES for a Redis Cluster",
                ))
            }
        };
        let redis_settings = url.map(|url| RedisSettings {
            url,
            cluster_nodes,
            prefix: self.redis_prefix,
            history_max_len: self.history_max_len,
            history_ttl: self.history_ttl,
            pool_size: self.redis_pool_size,
            timeout: self.redis_timeout,
            unsubscribe_delay: self.unsubscribe_delay,
        });

        let kinds: std::collections::HashSet<String> =
            list(&self.room_kinds).map(String::from).collect();
        if let Some(k) = kinds.iter().find(|k| {
            crate::events::RoomName::parse(&format!("{k}:x"), usize::MAX).is_err()
                || crate::events::ids::is_automatic_kind(k)
        }) {
            return Err(bad(
                "--room-kinds / GATEWAY_ROOM_KINDS",
                format!("'{k}' is not a joinable room kind (a-z and '_'; institution and user are automatic)"),
            ));
        }
        let roles_per_kind = RoomPolicy::parse_roles_per_kind(&self.room_roles)
            .map_err(|m| bad("--room-roles / GATEWAY_ROOM_ROLES", m))?;
        if self.socket_buffer == 0 || self.socket_buffer as u64 + 64 > self.max_replay {
            return Err(bad(
                "--socket-buffer / GATEWAY_SOCKET_BUFFER",
                format!(
                    "must be 1 to GATEWAY_MAX_REPLAY - 64 = {}: a socket cut as a slow consumer misses up to this many queued events and must be able to recover them from history (raise GATEWAY_MAX_REPLAY to queue more)",
                    self.max_replay.saturating_sub(64)
                ),
            ));
        }

        let presence = self.presence.into_config(redis_settings.is_some())?;
        // A bad catalog file stops startup with one line naming the file and the JSON pointer.
        let catalog = match &self.catalog {
            None => Catalog::elms(),
            Some(path) => Catalog::from_file(path)
                .map(std::sync::Arc::new)
                .map_err(|e| bad("--catalog / GATEWAY_CATALOG", e.to_string()))?,
        };
        let config = Config {
            presence,
            listen: self.listen,
            admin_listen: self.admin_listen,
            verifier,
            publish_keys,
            tenancy,
            revocation_ttl: self.revocation_ttl,
            gateway_id,
            redis: redis_settings,
            publish: PublishRules {
                max_payload_bytes: self.max_payload_bytes,
                max_rooms: self.max_rooms_per_publish,
                max_room_len: self.max_room_len,
                strict_catalog: self.strict_catalog,
                catalog,
            },
            max_batch: self.max_batch,
            policy: RoomPolicy {
                kinds,
                roles_per_kind,
                max_rooms_per_socket: self.max_rooms_per_socket,
                max_room_len: self.max_room_len,
            },
            auth_grace: self.auth_grace,
            transport: Settings {
                ping_interval: self.ping_interval,
                ping_timeout: self.ping_timeout,
                connect_timeout: self.connect_timeout,
                max_packet: self.max_client_packet_bytes,
                socket_buffer: self.socket_buffer,
                max_replay: self.max_replay as usize,
                compression_min: self.ws_compression.then_some(self.ws_compression_min_bytes),
            },
            history_max_len: self.history_max_len,
            history_ttl: self.history_ttl,
            join_rate: self.join_rate,
            publish_rate: self.publish_rate,
            max_connections: match self.max_connections {
                0 => open_file_limit().saturating_sub(256).max(16),
                n => n,
            },
            drain_delay: self.drain_delay,
            drain_period: self.drain_period,
            cors_origins: match self.cors_origins {
                Some(origins) => origins,
                None if self.dev => AllowedOrigins::Any,
                None => AllowedOrigins::default(),
            },
            dev_tokens,
        };
        Ok((config, dev))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            20000                20000                files     \n";
        assert_eq!(super::soft_open_files(limits), Some(20000));
        assert_eq!(
            super::soft_open_files("Max open files unlimited unlimited files"),
            Some(usize::MAX)
        );
        assert_eq!(super::soft_open_files("nothing"), None);
        assert!(super::open_file_limit() >= 16);
    }

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(extra: &[&str]) -> Result<(Config, DevSecrets), ConfigError> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(extra);
        T::try_parse_from(argv).unwrap().args.into_config()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn errors_name_the_setting() {
        let secret = "0123456789abcdef0123456789abcdef";
        assert!(parse(&["--jwt-secret", secret]).is_ok());
        let e = parse(&[]).unwrap_err();
        assert!(e.to_string().contains("JWT_SECRET"), "{e}");
        let e = parse(&["--jwt-secret", "short"]).unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
        let e = parse(&["--jwt-secret", secret, "--publish-api-keys", "abc"]).unwrap_err();
        assert!(e.to_string().contains("PUBLISH_API_KEYS"), "{e}");
        let e = parse(&["--jwt-secret", secret, "--room-roles", "exam"]).unwrap_err();
        assert!(e.to_string().contains("GATEWAY_ROOM_ROLES"), "{e}");
        let e = parse(&["--jwt-secret", secret, "--room-kinds", "user"]).unwrap_err();
        assert!(e.to_string().contains("GATEWAY_ROOM_KINDS"), "{e}");
        let e = parse(&["--jwt-secret", secret, "--redis-url", "http://x"]).unwrap_err();
        assert!(e.to_string().contains("REDIS_URL"), "{e}");
    }

    #[test]
    fn redis_cluster_nodes_replace_the_url() {
        let secret = "0123456789abcdef0123456789abcdef";
        let (config, _) = parse(&[
            "--jwt-secret",
            secret,
            "--redis-cluster-nodes",
            "redis://127.0.0.1:7001, redis://127.0.0.1:7002",
        ])
        .unwrap();
        let redis = config.redis.expect("redis settings");
        assert!(redis.is_cluster());
        assert_eq!(redis.cluster_nodes.len(), 2);
        assert_eq!(redis.url, "redis://127.0.0.1:7001");
        let both = parse(&[
            "--jwt-secret",
            secret,
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--redis-cluster-nodes",
            "redis://127.0.0.1:7001",
        ])
        .unwrap_err();
        assert!(both.to_string().contains("REDIS_CLUSTER_NODES"), "{both}");
        let bad = parse(&[
            "--jwt-secret",
            secret,
            "--redis-cluster-nodes",
            "127.0.0.1:7001",
        ])
        .unwrap_err();
        assert!(bad.to_string().contains("REDIS_CLUSTER_NODES"), "{bad}");
    }

    #[test]
    fn bad_numbers_and_durations_are_refused_by_the_parser_naming_their_flag() {
        for (flag, value) in [
            ("--max-replay", "0"),
            ("--max-batch", "none"),
            ("--max-room-len", "8"),
            ("--max-client-packet-bytes", "100"),
            ("--join-rate", "0"),
            ("--auth-grace", "0s"),
            ("--ping-timeout", "0"),
        ] {
            let e = T::try_parse_from(["t", flag, value]).err().expect(flag);
            assert!(e.to_string().contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn presence_settings_name_the_setting() {
        let secret = "0123456789abcdef0123456789abcdef";
        let (config, _) = parse(&["--jwt-secret", secret]).unwrap();
        assert!(config.presence.kinds.contains("exam") && !config.presence.lifecycle);
        for (args, setting) in [
            (&["--presence-kinds", "user"][..], "GATEWAY_PRESENCE_KINDS"),
            (
                &["--presence-events", "course"][..],
                "GATEWAY_PRESENCE_EVENTS",
            ),
            (
                &["--presence-max-members", "0"][..],
                "GATEWAY_PRESENCE_MAX_MEMBERS",
            ),
            (&["--presence-lease", "100ms"][..], "GATEWAY_PRESENCE_LEASE"),
            (&["--lifecycle", "on"][..], "GATEWAY_LIFECYCLE"),
            (&["--gateway-name", "a b"][..], "GATEWAY_NAME"),
        ] {
            let mut argv = vec!["--jwt-secret", secret];
            argv.extend_from_slice(args);
            let e = parse(&argv).unwrap_err();
            assert!(e.to_string().contains(setting), "{args:?}: {e}");
        }
        let (config, _) = parse(&[
            "--jwt-secret",
            secret,
            "--redis-url",
            "redis://127.0.0.1:1",
            "--lifecycle",
            "on",
            "--presence-events",
            "exam",
        ])
        .unwrap();
        assert!(config.presence.lifecycle && config.presence.events.contains("exam"));
    }

    #[test]
    fn dev_mode_generates_secrets() {
        let (config, dev) = parse(&["--dev"]).unwrap();
        assert!(dev.jwt_secret.is_some());
        assert_eq!(config.publish_keys.len(), 1);
        assert!(config.dev_tokens.is_some());
    }

    #[test]
    fn browser_origins_default_to_none_and_to_any_under_dev() {
        let secret = "0123456789abcdef0123456789abcdef";
        let (config, _) = parse(&["--jwt-secret", secret]).unwrap();
        assert_eq!(config.cors_origins, AllowedOrigins::default());
        assert!(config.dev_tokens.is_none());
        let (config, _) = parse(&["--dev", "--jwt-secret", secret]).unwrap();
        assert_eq!(config.cors_origins, AllowedOrigins::Any);
        assert!(config.dev_tokens.is_some(), "signed with the given secret");
        let (config, _) = parse(&["--dev", "--cors-origins", "http://localhost:5173"]).unwrap();
        assert_eq!(
            config.cors_origins,
            AllowedOrigins::Listed(vec!["http://localhost:5173".into()])
        );
        let (config, _) = parse(&["--dev", "--cors-origins", ""]).unwrap();
        assert!(
            !config.cors_origins.is_open(),
            "an explicit empty list stays empty"
        );
    }
}
