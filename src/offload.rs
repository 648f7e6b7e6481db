//! Node status Argo offloaded to its database: one read-only query for exactly the recorded
//! version (`persist/sqldb/offload_node_status_repo.go` `Get`, plus the namespace), through a
//! small pool per database. artgc never writes Argo's database.
//!
//! sqlx: async PostgreSQL and MySQL/MariaDB drivers in one well-kept crate, pooled, with
//! rustls on aws-lc-rs (the one crypto provider of the process), no compile-time query macros.

use crate::cache::Cache;
use std::time::Duration;

use artgc_core::persistence::{Engine, Persistence, SslMode};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use thiserror::Error;

/// How long a query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long getting a connection may take: a database that refuses or does not answer fails
/// the pass soon (it is retried with backoff).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The database user and password (from the Secrets `persistence` names).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// Reading offloaded nodes failed. Each has a stable category.
#[derive(Debug, Error)]
pub enum OffloadError {
    /// Not answering, refused, TLS failed, or too slow (retried with backoff).
    #[error("Argo's {engine} database at {at} is unreachable: {source}")]
    Unreachable {
        engine: &'static str,
        at: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("Argo's {engine} database at {at} refused the credentials: {source}")]
    Credentials {
        engine: &'static str,
        at: String,
        #[source]
        source: sqlx::Error,
    },
    /// Argo's offload GC deletes old versions after its TTL.
    #[error(
        "offloaded nodes version {version} of workflow uid {uid} (cluster {cluster}) are not in table {table}: Argo's offload GC may have removed them"
    )]
    Missing {
        uid: String,
        version: String,
        cluster: String,
        table: String,
    },
    #[error("offloaded nodes version {version} of workflow uid {uid}: not a node map: {reason}")]
    Unparsable {
        uid: String,
        version: String,
        reason: String,
    },
    /// The query itself failed (no such table, no permission on it, ...).
    #[error("Argo's {engine} database at {at}, table {table}: {source}")]
    Query {
        engine: &'static str,
        at: String,
        table: String,
        #[source]
        source: sqlx::Error,
    },
}

impl OffloadError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "offload_unreachable",
            Self::Credentials { .. } => "offload_credentials",
            Self::Missing { .. } => "offload_missing",
            Self::Unparsable { .. } => "offload_parse",
            Self::Query { .. } => "offload_query",
        }
    }
}

enum DbPool {
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Databases kept open at once (a cluster has one, or a few across its Argo installs).
const MAX_POOLS: usize = 32;

/// One pool per database and credentials, made on first use; connections open lazily.
pub struct OffloadReader {
    pools: Cache<(Persistence, Credentials), std::sync::Arc<DbPool>>,
    /// The most node status read per workflow (`--max-node-status-bytes`).
    max_node_status_bytes: u64,
}

impl Default for OffloadReader {
    fn default() -> Self {
        Self::new(artgc_core::nodes::DEFAULT_MAX_DECOMPRESSED)
    }
}

impl OffloadReader {
    pub fn new(max_node_status_bytes: u64) -> Self {
        Self {
            pools: Cache::new(MAX_POOLS),
            max_node_status_bytes,
        }
    }

    /// The nodes (Argo's JSON map by node id) offloaded for workflow `uid` in `namespace` at
    /// `version`: exactly that row, or [`OffloadError::Missing`].
    pub async fn nodes(
        &self,
        p: &Persistence,
        creds: &Credentials,
        namespace: &str,
        uid: &str,
        version: &str,
    ) -> Result<String, OffloadError> {
        let pool = self.pool(p, creds);
        let at = format!("{}:{}/{}", p.host, p.port, p.database);
        let engine = p.engine.as_str();
        // The table name is a checked identifier (artgc_core::persistence).
        let row: Result<Option<String>, sqlx::Error> = match &*pool {
            DbPool::Postgres(pool) => {
                let sql = format!(
                    "SELECT nodes::text FROM {} WHERE clustername = $1 AND uid = $2 AND version = $3 AND namespace = $4",
                    p.table
                );
                timed(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(&p.cluster_name)
                        .bind(uid)
                        .bind(version)
                        .bind(namespace)
                        .fetch_optional(pool),
                )
                .await
            }
            DbPool::MySql(pool) => {
                let sql = format!(
                    "SELECT CAST(nodes AS CHAR) FROM {} WHERE clustername = ? AND uid = ? AND version = ? AND namespace = ?",
                    p.table
                );
                timed(
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(&p.cluster_name)
                        .bind(uid)
                        .bind(version)
                        .bind(namespace)
                        .fetch_optional(pool),
                )
                .await
            }
        };
        match row {
            Ok(Some(nodes)) => Ok(nodes),
            Ok(None) => Err(OffloadError::Missing {
                uid: uid.into(),
                version: version.into(),
                cluster: p.cluster_name.clone(),
                table: p.table.clone(),
            }),
            Err(e) => Err(classify(e, engine, at, &p.table)),
        }
    }

    fn pool(&self, p: &Persistence, creds: &Credentials) -> std::sync::Arc<DbPool> {
        let key = (p.clone(), creds.clone());
        if let Some(pool) = self.pools.get(&key) {
            return pool;
        }
        // Credentials rotate: a pool for older ones of the same database goes.
        self.pools.retain(|(q, _), _| q != p);
        self.pools
            .get_or_insert_with(&key, || std::sync::Arc::new(connect_lazy(p, creds)))
    }
}

async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

fn connect_lazy(p: &Persistence, creds: &Credentials) -> DbPool {
    let max_idle = p.pool.max_idle.min(p.pool.max_open);
    match &p.engine {
        Engine::Postgres { ssl_mode } => {
            let options = PgConnectOptions::new()
                .host(&p.host)
                .port(p.port)
                .database(&p.database)
                .username(&creds.user)
                .password(&creds.password)
                .ssl_mode(match ssl_mode {
                    SslMode::Disable => PgSslMode::Disable,
                    SslMode::Prefer => PgSslMode::Prefer,
                    SslMode::Require => PgSslMode::Require,
                    SslMode::VerifyCa => PgSslMode::VerifyCa,
                    SslMode::VerifyFull => PgSslMode::VerifyFull,
                })
                .application_name("artgc")
                .options([("statement_timeout", "10s")]);
            DbPool::Postgres(
                PgPoolOptions::new()
                    .max_connections(p.pool.max_open)
                    .min_connections(0)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .max_lifetime(p.pool.max_lifetime)
                    .idle_timeout(idle_timeout(max_idle))
                    .connect_lazy_with(options),
            )
        }
        Engine::MySql { tls } => {
            let options = MySqlConnectOptions::new()
                .host(&p.host)
                .port(p.port)
                .database(&p.database)
                .username(&creds.user)
                .password(&creds.password)
                .charset("utf8mb4")
                .ssl_mode(match tls {
                    SslMode::Disable => MySqlSslMode::Disabled,
                    SslMode::Prefer => MySqlSslMode::Preferred,
                    SslMode::Require => MySqlSslMode::Required,
                    SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                    SslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
                });
            DbPool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(p.pool.max_open)
                    .min_connections(0)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .max_lifetime(p.pool.max_lifetime)
                    .idle_timeout(idle_timeout(max_idle))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // The server-side statement timeout: MariaDB's (seconds), else
                            // MySQL's (milliseconds, SELECTs only). Each server refuses the
                            // other's variable; the client-side timeout holds either way.
                            let mariadb = sqlx::raw_sql("SET SESSION max_statement_time = 10")
                                .execute(&mut *conn)
                                .await;
                            if mariadb.is_err() {
                                let _ = sqlx::raw_sql("SET SESSION max_execution_time = 10000")
                                    .execute(&mut *conn)
                                    .await;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options),
            )
        }
    }
}

/// No idle connections allowed: close them at once; else keep them a while.
fn idle_timeout(max_idle: u32) -> Option<Duration> {
    match max_idle {
        0 => Some(Duration::from_secs(1)),
        _ => Some(Duration::from_secs(300)),
    }
}

fn classify(e: sqlx::Error, engine: &'static str, at: String, table: &str) -> OffloadError {
    let auth = match &e {
        // PostgreSQL: 28P01 invalid_password, 28000 invalid_authorization_specification;
        // MySQL/MariaDB: SQLSTATE 28000 (1045 access denied).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c == "28P01" || c == "28000"),
        _ => false,
    };
    match e {
        _ if auth => OffloadError::Credentials {
            engine,
            at,
            source: e,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => OffloadError::Unreachable {
            engine,
            at,
            source: e,
        },
        e => OffloadError::Query {
            engine,
            at,
            table: table.into(),
            source: e,
        },
    }
}

/// Puts back the nodes of `wf` when Argo offloaded them, reading `state` (the controller
/// ConfigMap's `persistence` and its Secrets) and the database. `Ok(false)`: not offloaded, or
/// no database configured (the plan then says the workflow is offloaded). Errors carry the
/// reader's category.
pub async fn hydrate(
    reader: &OffloadReader,
    state: &artgc_core::cluster::ClusterState,
    wf: &mut artgc_core::model::Workflow,
) -> Result<bool, artgc_core::error::InputError> {
    use artgc_core::error::InputError;
    if !artgc_core::nodes::is_offloaded(wf) {
        return Ok(false);
    }
    let config = |e: String| InputError::Config {
        setting: "persistence (workflow-controller ConfigMap)".into(),
        source: std::sync::Arc::new(std::io::Error::other(e)),
    };
    let Some(p) = state.persistence().map_err(config)? else {
        return Ok(false);
    };
    let cns = &state.controller_config.namespace;
    let secret = |s: &artgc_core::model::SecretKeySelector, field: &str| {
        state
            .secret_value(cns, s, field)
            .map_err(|e| config(e.to_string()))
            .and_then(|v| String::from_utf8(v).map_err(|e| config(format!("{field}: {e}"))))
    };
    let creds = Credentials {
        user: secret(&p.user_secret, "persistence userNameSecret")?,
        password: secret(&p.password_secret, "persistence passwordSecret")?,
    };
    let version = wf
        .status
        .offload_node_status_version
        .clone()
        .unwrap_or_default();
    let uid = wf.metadata.uid.clone().unwrap_or_default();
    let nodes = reader
        .nodes(&p, &creds, wf.namespace(), &uid, &version)
        .await
        .map_err(|e| InputError::Offload {
            category: e.category(),
            permanent: matches!(e, OffloadError::Missing { .. }),
            source: std::sync::Arc::new(e),
        })?;
    artgc_core::nodes::hydrate(wf, &nodes, reader.max_node_status_bytes)?;
    Ok(true)
}

/// [`hydrate`] over a run's workflows (the CLI's): each offloaded one gets its nodes back, or
/// becomes unplannable with the reason.
pub async fn hydrate_all(
    state: &artgc_core::cluster::ClusterState,
    workflows: &mut [artgc_core::inventory::WorkflowInput],
    max_node_status_bytes: u64,
) {
    use artgc_core::inventory::WorkflowInput;
    let reader = OffloadReader::new(max_node_status_bytes);
    for w in workflows.iter_mut() {
        let WorkflowInput::Valid(wf) = w else {
            continue;
        };
        if !artgc_core::nodes::is_offloaded(wf) {
            continue;
        }
        if let Err(error) = hydrate(&reader, state, wf).await {
            *w = WorkflowInput::Invalid {
                namespace: wf.namespace().to_string(),
                name: wf.name().to_string(),
                error,
            };
        }
    }
}

/// [`hydrate`] for the controller: the settings and Secrets read through `cluster` (cached).
pub async fn hydrate_from_cluster(
    reader: &OffloadReader,
    cluster: &crate::kube_api::ClusterReader,
    wf: &mut artgc_core::model::Workflow,
) -> Result<bool, artgc_core::error::InputError> {
    let state =
        cluster
            .persistence_state()
            .await
            .map_err(|e| artgc_core::error::InputError::Cluster {
                what: "Argo's persistence settings and their Secrets".into(),
                source: std::sync::Arc::new(e),
            })?;
    hydrate(reader, &state, wf).await
}
