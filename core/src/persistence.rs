//! Argo's `persistence:` settings (workflow-controller ConfigMap), read for one purpose: finding
//! the node status Argo offloaded to its database (`status.offloadNodeStatusVersion`). artgc
//! only ever reads that table.
//!
//! Read as Argo reads them (`config/config.go`, `util/sqldb`, `persist/sqldb`): PostgreSQL wins
//! when both databases are set; `tableName` must be set; `clusterName` defaults to `default`;
//! the credentials are Secrets in the controller's namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::SecretKeySelector;

/// Which database server, with what it needs to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Engine {
    Postgres {
        ssl_mode: SslMode,
    },
    /// `options` as Argo passes them to the MySQL driver (`tls` among them).
    MySql {
        tls: SslMode,
    },
}

impl Engine {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgresql",
            Self::MySql { .. } => "mysql",
        }
    }
}

/// TLS to the database, in PostgreSQL's words (MySQL's `tls` option maps onto them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Argo's database for offloaded node status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Persistence {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// A plain or schema-qualified SQL identifier (checked: it is spliced into the query).
    pub table: String,
    pub cluster_name: String,
    /// Secrets in the controller's namespace.
    pub user_secret: SecretKeySelector,
    pub password_secret: SecretKeySelector,
    /// Whether Argo offloads now (`nodeStatusOffLoad`). Versions offloaded earlier stay
    /// readable while the database is configured, so artgc reads them either way.
    pub offloading: bool,
    pub pool: PoolSettings,
}

/// Connection pool bounds (`connectionPool`), capped: artgc reads one row a pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub max_open: u32,
    pub max_idle: u32,
    pub max_lifetime: Option<Duration>,
}

/// Connections artgc opens to one database at most, whatever Argo's pool allows.
pub const MAX_OPEN: u32 = 8;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPersistence {
    #[serde(default, rename = "nodeStatusOffLoad")]
    node_status_offload: bool,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    postgresql: Option<RawDatabase>,
    #[serde(default)]
    mysql: Option<RawDatabase>,
    #[serde(default)]
    connection_pool: Option<RawPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDatabase {
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    database: String,
    #[serde(default)]
    table_name: String,
    #[serde(default)]
    user_name_secret: Option<SecretKeySelector>,
    #[serde(default)]
    password_secret: Option<SecretKeySelector>,
    #[serde(default)]
    ssl: bool,
    #[serde(default)]
    ssl_mode: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPool {
    #[serde(default)]
    max_idle_conns: Option<i64>,
    #[serde(default)]
    max_open_conns: Option<i64>,
    #[serde(default)]
    conn_max_lifetime: Option<String>,
}

/// Reads `persistence:` (YAML text, as the ConfigMap holds it). `Ok(None)`: no database is
/// configured. Errors name the field.
pub fn parse(text: &str) -> Result<Option<Persistence>, String> {
    let raw: RawPersistence = serde_saphyr::from_str(text)
        .map_err(|e| format!("persistence: {}", crate::yaml::unparsed(&e)))?;
    from_raw(raw)
}

fn from_raw(raw: RawPersistence) -> Result<Option<Persistence>, String> {
    // Argo: PostgreSQL first, then MySQL.
    let (db, field, engine) = match (raw.postgresql, raw.mysql) {
        (Some(db), _) => {
            let mode = postgres_ssl(db.ssl, db.ssl_mode.as_deref())?;
            (
                db,
                "persistence.postgresql",
                Engine::Postgres { ssl_mode: mode },
            )
        }
        (None, Some(db)) => {
            let tls = mysql_tls(db.options.get("tls").map(String::as_str))?;
            (db, "persistence.mysql", Engine::MySql { tls })
        }
        (None, None) => return Ok(None),
    };
    let need = |v: &str, name: &str| match v.trim().is_empty() {
        true => Err(format!("{field}.{name} is empty")),
        false => Ok(v.trim().to_string()),
    };
    let secret = |s: Option<SecretKeySelector>, name: &str| match s {
        Some(s) if !s.name.is_empty() && !s.key.is_empty() => Ok(s),
        _ => Err(format!("{field}.{name} needs a Secret name and key")),
    };
    let table = need(&db.table_name, "tableName")?;
    check_table(&table).map_err(|e| format!("{field}.tableName {table:?}: {e}"))?;
    let port = match (db.port, &engine) {
        (Some(0) | None, Engine::Postgres { .. }) => 5432,
        (Some(0) | None, Engine::MySql { .. }) => 3306,
        (Some(p), _) => p,
    };
    Ok(Some(Persistence {
        host: need(&db.host, "host")?,
        port,
        database: need(&db.database, "database")?,
        table,
        cluster_name: raw
            .cluster_name
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "default".into()),
        user_secret: secret(db.user_name_secret, "userNameSecret")?,
        password_secret: secret(db.password_secret, "passwordSecret")?,
        offloading: raw.node_status_offload,
        pool: pool(raw.connection_pool.unwrap_or_default())?,
        engine,
    }))
}

/// Argo passes `sslmode` only with `ssl: true`; without it the driver's default applies.
fn postgres_ssl(ssl: bool, mode: Option<&str>) -> Result<SslMode, String> {
    match (ssl, mode.unwrap_or("")) {
        (false, _) => Ok(SslMode::Prefer),
        (true, "") | (true, "require") => Ok(SslMode::Require),
        (true, "disable") => Ok(SslMode::Disable),
        (true, "prefer" | "allow") => Ok(SslMode::Prefer),
        (true, "verify-ca") => Ok(SslMode::VerifyCa),
        (true, "verify-full") => Ok(SslMode::VerifyFull),
        (true, other) => Err(format!(
            "persistence.postgresql.sslMode {other:?}: disable, allow, prefer, require, verify-ca or verify-full"
        )),
    }
}

/// go-sql-driver/mysql's `tls` option: absent or `false` is plain, `true` verifies,
/// `skip-verify` encrypts without verifying, `preferred` tries.
fn mysql_tls(tls: Option<&str>) -> Result<SslMode, String> {
    match tls.unwrap_or("false") {
        "false" => Ok(SslMode::Disable),
        "preferred" => Ok(SslMode::Prefer),
        "skip-verify" => Ok(SslMode::Require),
        "true" => Ok(SslMode::VerifyFull),
        other => Err(format!(
            "persistence.mysql.options.tls {other:?}: artgc supports false, preferred, skip-verify and true (a registered TLS config name is the driver's own)"
        )),
    }
}

fn pool(raw: RawPool) -> Result<PoolSettings, String> {
    let cap = |v: Option<i64>| match v {
        Some(n) if n > 0 => (n as u64).min(MAX_OPEN as u64) as u32,
        _ => MAX_OPEN,
    };
    let max_lifetime = match raw.conn_max_lifetime.as_deref() {
        None | Some("") | Some("0") => None,
        Some(ttl) => Some(parse_ttl(ttl).ok_or_else(|| {
            format!("persistence.connectionPool.connMaxLifetime {ttl:?}: a duration like 30s, 5m, 1h or 1d")
        })?),
    };
    let max_open = cap(raw.max_open_conns);
    Ok(PoolSettings {
        max_open,
        max_idle: cap(raw.max_idle_conns).min(max_open),
        max_lifetime,
    })
}

/// Argo's TTL: a Go duration of one unit (`30s`, `5m`, `1h`) or days (`1d`).
fn parse_ttl(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The table name is spliced into SQL, so only identifiers pass: `name` or `schema.name`,
/// letters, digits and `_`, not starting with a digit, 63 characters each at most.
fn check_table(table: &str) -> Result<(), String> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 {
        return Err("at most schema.table".into());
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.len() <= 63
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err("not a plain SQL identifier (letters, digits, _)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(yaml: &str) -> Result<Option<Persistence>, String> {
        parse(yaml)
    }

    const PG: &str = "
nodeStatusOffLoad: true
clusterName: east
connectionPool: {maxIdleConns: 100, maxOpenConns: 0, connMaxLifetime: 5m}
postgresql:
  host: postgres
  port: 5433
  database: argo
  tableName: argo_workflows
  userNameSecret: {name: argo-postgres-config, key: username}
  passwordSecret: {name: argo-postgres-config, key: password}
  ssl: true
  sslMode: verify-full
";

    #[test]
    fn postgres_settings_are_read_as_argo_reads_them() {
        let p = parsed(PG).unwrap().unwrap();
        assert_eq!(
            p,
            Persistence {
                engine: Engine::Postgres {
                    ssl_mode: SslMode::VerifyFull
                },
                host: "postgres".into(),
                port: 5433,
                database: "argo".into(),
                table: "argo_workflows".into(),
                cluster_name: "east".into(),
                user_secret: SecretKeySelector {
                    name: "argo-postgres-config".into(),
                    key: "username".into()
                },
                password_secret: SecretKeySelector {
                    name: "argo-postgres-config".into(),
                    key: "password".into()
                },
                offloading: true,
                pool: PoolSettings {
                    max_open: MAX_OPEN,
                    max_idle: MAX_OPEN,
                    max_lifetime: Some(Duration::from_secs(300)),
                },
            }
        );
    }

    #[test]
    fn settings_table() {
        let secrets = "userNameSecret: {name: s, key: u}\n  passwordSecret: {name: s, key: p}";
        let my = |extra: &str| {
            format!("mysql:\n  host: db\n  database: argo\n  tableName: wf\n  {secrets}\n{extra}")
        };
        let pg = |extra: &str| {
            format!(
                "postgresql:\n  host: db\n  database: argo\n  tableName: wf\n  {secrets}\n{extra}"
            )
        };
        // (yaml, engine, port, cluster, max_open) or the error's start
        type Read<'a> = (Engine, u16, &'a str, u32);
        let cases: Vec<(String, Result<Read, &str>)> = vec![
            (
                my(""),
                Ok((
                    Engine::MySql {
                        tls: SslMode::Disable,
                    },
                    3306,
                    "default",
                    MAX_OPEN,
                )),
            ),
            (
                my("  options: {tls: skip-verify}\nconnectionPool: {maxOpenConns: 2}"),
                Ok((
                    Engine::MySql {
                        tls: SslMode::Require,
                    },
                    3306,
                    "default",
                    2,
                )),
            ),
            (
                pg(""),
                Ok((
                    Engine::Postgres {
                        ssl_mode: SslMode::Prefer,
                    },
                    5432,
                    "default",
                    MAX_OPEN,
                )),
            ),
            (
                pg("  ssl: true\nclusterName: \"\""),
                Ok((
                    Engine::Postgres {
                        ssl_mode: SslMode::Require,
                    },
                    5432,
                    "default",
                    MAX_OPEN,
                )),
            ),
            // Both: PostgreSQL, as Argo.
            (
                format!("{}{}", pg(""), my("")),
                Ok((
                    Engine::Postgres {
                        ssl_mode: SslMode::Prefer,
                    },
                    5432,
                    "default",
                    MAX_OPEN,
                )),
            ),
            (
                pg("").replace("tableName: wf", "tableName: \"\""),
                Err("persistence.postgresql.tableName is empty"),
            ),
            (
                pg("").replace("tableName: wf", "tableName: \"wf; drop table x\""),
                Err("persistence.postgresql.tableName"),
            ),
            (
                pg("").replace("host: db", "host: \"\""),
                Err("persistence.postgresql.host is empty"),
            ),
            (
                pg("").replace("{name: s, key: p}", "{name: s}"),
                Err("persistence.postgresql.passwordSecret"),
            ),
            (
                pg("  ssl: true\n  sslMode: sometimes"),
                Err("persistence.postgresql.sslMode"),
            ),
            (
                my("  options: {tls: custom}"),
                Err("persistence.mysql.options.tls"),
            ),
            (
                pg("connectionPool: {connMaxLifetime: forever}"),
                Err("persistence.connectionPool.connMaxLifetime"),
            ),
        ];
        for (yaml, want) in cases {
            let got = parsed(&yaml);
            match want {
                Ok((engine, port, cluster, max_open)) => {
                    let p = got.unwrap_or_else(|e| panic!("{yaml}: {e}")).unwrap();
                    assert_eq!(
                        (p.engine, p.port, p.cluster_name.as_str(), p.pool.max_open),
                        (engine, port, cluster, max_open),
                        "{yaml}"
                    );
                }
                Err(start) => {
                    let e = got.expect_err(&yaml);
                    assert!(e.starts_with(start), "{yaml}: {e}");
                }
            }
        }
        assert_eq!(parsed("nodeStatusOffLoad: true").unwrap(), None);
        assert_eq!(parsed("archive: true\n").unwrap(), None);
    }

    #[test]
    fn table_names_are_identifiers() {
        for ok in ["argo_workflows", "argo.argo_workflows", "_t1"] {
            assert!(check_table(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1t",
            "a.b.c",
            "t-1",
            "t;",
            "t x",
            "\"t\"",
            &"t".repeat(64),
        ] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("1h30m"), None);
        assert_eq!(parse_ttl("h"), None);
    }
}
