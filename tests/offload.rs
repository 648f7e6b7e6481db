//! Reading node status Argo offloaded to its database, against real PostgreSQL and MariaDB
//! servers (`.ci/db.sh`), each with a table made by our own DDL after Argo's migrations
//! (`persist/sqldb/migrate.go`: the `argo_workflows` table as it stands after the last one).
//!
//! Needs `ARTGC_TEST_POSTGRES` and `ARTGC_TEST_MYSQL` (`eval "$(.ci/db.sh start DIR)"`):
//! without them a test is ignored (not run), and fails when asked for (`--include-ignored`).

use artgc::offload::{Credentials, OffloadError, OffloadReader};
use artgc_core::model::SecretKeySelector;
use artgc_core::persistence::{Engine, Persistence, PoolSettings, SslMode};
use artgc_testkit::needed_var;
use sqlx::Connection;

/// A server from `.ci/db.sh`: `host:port:user:password`.
struct Server {
    engine: Engine,
    host: String,
    port: u16,
    user: String,
    password: String,
}

fn server(var: &str, engine: Engine) -> Option<Server> {
    let v = needed_var(var, "the databases: eval \"$(.ci/db.sh start DIR)\"")?;
    let parts: Vec<&str> = v.splitn(4, ':').collect();
    Some(Server {
        engine,
        host: parts[0].into(),
        port: parts[1].parse().expect("port"),
        user: parts[2].into(),
        password: parts[3].into(),
    })
}

fn postgres() -> Option<Server> {
    server(
        "ARTGC_TEST_POSTGRES",
        Engine::Postgres {
            ssl_mode: SslMode::Prefer,
        },
    )
}

fn mysql() -> Option<Server> {
    server(
        "ARTGC_TEST_MYSQL",
        Engine::MySql {
            tls: SslMode::Disable,
        },
    )
}

/// Argo's `argo_workflows` after its last migration; the same text on both servers.
const TABLE: &str = "create table argo_workflows (
    clustername varchar(64) not null,
    uid varchar(128) not null,
    version varchar(64) not null,
    namespace varchar(256) not null,
    nodes text not null,
    updatedat timestamp not null default current_timestamp,
    primary key (clustername, uid, version))";

/// Executes `sql` on `database` (the server's own when `None`).
async fn exec(s: &Server, database: Option<&str>, sql: &[String]) {
    match s.engine {
        Engine::Postgres { .. } => {
            let db = database.unwrap_or("postgres");
            let url = format!(
                "postgres://{}:{}@{}:{}/{db}",
                s.user, s.password, s.host, s.port
            );
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            for q in sql {
                sqlx::raw_sql(sqlx::AssertSqlSafe(q.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
            }
        }
        Engine::MySql { .. } => {
            let db = database.unwrap_or("mysql");
            let url = format!(
                "mysql://{}:{}@{}:{}/{db}",
                s.user, s.password, s.host, s.port
            );
            let mut c = sqlx::MySqlConnection::connect(&url).await.expect("connect");
            for q in sql {
                sqlx::raw_sql(sqlx::AssertSqlSafe(q.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
            }
        }
    }
}

/// A database of its own with Argo's table and `rows` (cluster, uid, version, namespace,
/// nodes); the `persistence` that reaches it.
async fn argo_database(s: &Server, rows: &[(&str, &str, &str, &str, &str)]) -> Persistence {
    let db = format!(
        "argo_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000_000
    );
    exec(s, None, &[format!("create database {db}")]).await;
    let mut sql = vec![TABLE.to_string()];
    for (cluster, uid, version, ns, nodes) in rows {
        let nodes = nodes.replace('\'', "''");
        sql.push(format!(
            "insert into argo_workflows (clustername, uid, version, namespace, nodes) values ('{cluster}', '{uid}', '{version}', '{ns}', '{nodes}')"
        ));
    }
    exec(s, Some(&db), &sql).await;
    Persistence {
        database: db,
        ..persistence_stub(s)
    }
}

const NODES: &str = r#"{"wf-1":{"id":"wf-1","name":"wf","type":"Pod","phase":"Succeeded","outputs":{"artifacts":[{"name":"out","s3":{"key":"wf/wf-1/out.tgz"}}]}}}"#;

/// Every answer the reader gives, on one server.
async fn reads_exactly_the_recorded_version(s: Server) {
    let p = argo_database(
        &s,
        &[
            ("default", "u1", "fnv:1", "ns", NODES),
            ("default", "u1", "fnv:2", "ns", "{}"),
            ("other", "u2", "fnv:1", "ns", "{}"),
        ],
    )
    .await;
    let creds = Credentials {
        user: s.user.clone(),
        password: s.password.clone(),
    };
    let reader = OffloadReader::default();
    assert_eq!(
        reader.nodes(&p, &creds, "ns", "u1", "fnv:1").await.unwrap(),
        NODES
    );
    assert_eq!(
        reader.nodes(&p, &creds, "ns", "u1", "fnv:2").await.unwrap(),
        "{}"
    );
    let category = |r: Result<String, OffloadError>| match r {
        Ok(v) => panic!("read {v}"),
        Err(e) => {
            eprintln!("{e}");
            e.category()
        }
    };
    // A version Argo's offload GC removed, another cluster's row, another namespace's.
    for (ns, uid, version) in [
        ("ns", "u1", "fnv:3"),
        ("ns", "u2", "fnv:1"),
        ("other", "u1", "fnv:1"),
    ] {
        assert_eq!(
            category(reader.nodes(&p, &creds, ns, uid, version).await),
            "offload_missing",
            "{ns} {uid} {version}"
        );
    }
    let wrong = Credentials {
        user: s.user.clone(),
        password: "wrong".into(),
    };
    assert_eq!(
        category(reader.nodes(&p, &wrong, "ns", "u1", "fnv:1").await),
        "offload_credentials"
    );
    let no_table = Persistence {
        table: "argo_workflows_missing".into(),
        ..p.clone()
    };
    assert_eq!(
        category(reader.nodes(&no_table, &creds, "ns", "u1", "fnv:1").await),
        "offload_query"
    );
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = Persistence { port, ..p.clone() };
    assert_eq!(
        category(reader.nodes(&down, &creds, "ns", "u1", "fnv:1").await),
        "offload_unreachable"
    );
    // The right credentials again: a fresh pool, the row as before.
    assert_eq!(
        reader.nodes(&p, &creds, "ns", "u1", "fnv:1").await.unwrap(),
        NODES
    );
}

mod common;
#[path = "../core/tests/support/mod.rs"]
mod support;

use artgc_testkit::{KubeApiServer, S3Server};
use common::{quick_config, until};
use serde_json::{Value, json};
use support::{key_only, processed, s3_repo, with_strategy, workflow};

/// `wf` as Argo leaves it when it offloads: the nodes go to the database (returned, as the
/// `nodes` column holds them), the object keeps only `offloadNodeStatusVersion`.
fn offload(mut wf: Value, version: &str) -> (Value, String) {
    let nodes = wf["status"]
        .as_object_mut()
        .unwrap()
        .remove("nodes")
        .unwrap();
    wf["status"]["offloadNodeStatusVersion"] = json!(version);
    (wf, serde_json::to_string(&nodes).unwrap())
}

/// The controller on the test server, over one database: an offloaded workflow is collected
/// and its deletions recorded in the annotation (status untouched); one whose recorded version
/// Argo's offload GC already removed is reported (`offload_missing`) and not held.
async fn the_controller_collects_offloaded_workflows(s: Server) {
    let team = Team::new("offload").await;
    let (kube, s3, bucket, repo, ns) = (&team.kube, &team.s3, &team.bucket, &team.repo, TEAM);
    for k in ["off/1/a.tgz", "off/2/a.tgz", "gone/a.tgz"] {
        s3.put(bucket, k, "x").await;
    }
    let wf = |name: &str, key: &str| {
        workflow(ns, name)
            .set(
                &["status", "artifactRepositoryRef"],
                json!({"artifactRepository": repo}),
            )
            .set(
                &["spec", "artifactGC", "strategy"],
                json!("OnWorkflowCompletion"),
            )
            .node(
                &format!("{name}-1"),
                "main",
                vec![with_strategy(key_only("a", key), "OnWorkflowCompletion")],
            )
    };
    let (off, off_nodes) = offload(
        wf("off", "off/1/a.tgz")
            .node("off-2", "main", vec![key_only("a", "off/2/a.tgz")])
            .0,
        "fnv:11",
    );
    let (gone, _) = offload(
        wf("gone", "gone/a.tgz")
            .set(
                &["metadata", "finalizers"],
                json!(["workflows.argoproj.io/artifact-gc"]),
            )
            .0,
        "fnv:12",
    );
    // The server gives each its uid: Argo keys the row by it.
    let uid = kube.seed(off)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    kube.seed(gone);
    // Deleted (held by the finalizer) before artgc starts.
    artgc::kube_api::workflows(&kube.client(), Some(ns))
        .delete("gone", &Default::default())
        .await
        .expect("delete");
    let p = argo_database(&s, &[("default", &uid, "fnv:11", ns, &off_nodes)]).await;
    seed_argo_config(kube, repo, &persistence_of(&p), &s);
    let config = artgc::controller::ControllerConfig {
        namespaces: vec![ns.into()],
        ..quick_config()
    };
    let ctl = artgc::controller::start(kube.client(), config)
        .await
        .expect("controller starts");
    let get = |name: &str| kube.get("argoproj.io/v1alpha1", "Workflow", Some(ns), name);
    until("the offloaded workflow is collected", async || {
        get("off").is_some_and(|w| processed(&w, "OnWorkflowCompletion"))
    })
    .await;
    let w = get("off").unwrap();
    assert_eq!(
        w["metadata"]["annotations"]["artgc.io/offloaded-deleted"],
        "off-1/a\noff-2/a"
    );
    assert!(
        w["status"]["nodes"].is_null(),
        "no nodes written: {}",
        w["status"]
    );
    assert_eq!(w["status"]["offloadNodeStatusVersion"], "fnv:11");
    until("the workflow whose version is gone is let go", async || {
        get("gone").is_none()
    })
    .await;
    // The Event follows the record.
    until("a Warning says why", async || {
        kube.list("events.k8s.io/v1", "Event").iter().any(|e| {
            e["regarding"]["name"] == "gone"
                && e["type"] == "Warning"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("offload_missing"))
        })
    })
    .await;
    assert_eq!(s3.keys(bucket).await, ["gone/a.tgz"]);

    // A repeat pass deletes nothing more: the same key written again, the Workflow changed (a
    // watch event, a pass wanted only if something were left to delete). The annotation's
    // marks settle it; without them it would be deleted again.
    s3.put(bucket, "off/1/a.tgz", "a later run's").await;
    artgc::kube_api::workflows(&kube.client(), Some(ns))
        .patch(
            "off",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
        )
        .await
        .expect("touch");

    // Offloaded while running (version fnv:31, one output so far), then finished under a new
    // version (fnv:32, two outputs): artgc reads the version the object records when it
    // reconciles, not one it saw earlier.
    for k in ["moved/1/a.tgz", "moved/2/a.tgz"] {
        s3.put(bucket, k, "x").await;
    }
    let one = wf("moved", "moved/1/a.tgz");
    let (early, early_nodes) = offload(one.clone().running().0, "fnv:31");
    let (_, late_nodes) = offload(
        one.node("moved-2", "main", vec![key_only("a", "moved/2/a.tgz")])
            .0,
        "fnv:32",
    );
    let uid = kube.seed(early)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let rows = [
        format!(
            "insert into {} (clustername, uid, version, namespace, nodes) values ('default', '{uid}', 'fnv:31', '{ns}', '{}')",
            p.table, early_nodes
        ),
        format!(
            "insert into {} (clustername, uid, version, namespace, nodes) values ('default', '{uid}', 'fnv:32', '{ns}', '{}')",
            p.table, late_nodes
        ),
    ];
    exec(&s, Some(&p.database), &rows).await;
    artgc::kube_api::workflows(&kube.client(), Some(ns))
        .patch(
            "moved",
            &Default::default(),
            &kube::api::Patch::Merge(json!({
                "metadata": {"labels": {"workflows.argoproj.io/completed": "true"}},
                "status": {"phase": "Succeeded", "offloadNodeStatusVersion": "fnv:32"},
            })),
        )
        .await
        .expect("finish");
    until("the finished version is collected", async || {
        get("moved").is_some_and(|w| {
            w["metadata"]["annotations"]["artgc.io/offloaded-deleted"] == "moved-1/a\nmoved-2/a"
        })
    })
    .await;
    assert_eq!(s3.keys(bucket).await, ["gone/a.tgz", "off/1/a.tgz"]);
    ctl.shutdown().await;
}

/// `artgc purge -f` over manifest files: the workflow-controller ConfigMap and the database
/// Secret among them reach the database they name; the offloaded workflow is collected, and
/// one whose version is gone is reported with its category.
async fn purge_reads_the_database_the_files_name(s: Server) {
    let s3 = S3Server::start().await;
    let bucket = s3.bucket("offload-cli").await;
    for k in ["cli/1/a.tgz", "cli/2/a.tgz"] {
        s3.put(&bucket, k, "xy").await;
    }
    let mut repo = s3_repo(&s3.endpoint, &bucket, "s3-creds");
    repo["s3"]["region"] = json!(s3.region);
    let wf = |name: &str, key: &str| {
        workflow("team", name)
            .set(
                &["status", "artifactRepositoryRef"],
                json!({"artifactRepository": repo}),
            )
            .set(
                &["spec", "artifactGC", "strategy"],
                json!("OnWorkflowCompletion"),
            )
            .node(&format!("{name}-1"), "main", vec![key_only("a", key)])
            .0
    };
    let (cli, cli_nodes) = offload(wf("cli", "cli/1/a.tgz"), "fnv:21");
    let (lost, _) = offload(wf("lost", "cli/2/a.tgz"), "fnv:22");
    let (garbled, _) = offload(wf("garbled", "cli/2/a.tgz"), "fnv:23");
    let p = argo_database(
        &s,
        &[
            ("default", "uid-cli", "fnv:21", "team", &cli_nodes),
            (
                "default",
                "uid-garbled",
                "fnv:23",
                "team",
                "{\"n\": [not json",
            ),
        ],
    )
    .await;
    let persistence = persistence_of(&p);
    let dir = tempfile::tempdir().unwrap();
    let objects = [
        cli,
        lost,
        garbled,
        support::secret("team", "s3-creds", &s3.access_key, &s3.secret_key),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "workflow-controller-configmap", "namespace": "argo"},
               "data": {"artifactRepository": serde_json::to_string(&repo).unwrap(),
                        "persistence": serde_json::to_string(&persistence).unwrap()}}),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "argo-db", "namespace": "argo"},
               "stringData": {"username": s.user, "password": s.password}}),
    ];
    for (i, o) in objects.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.json")), o.to_string()).unwrap();
    }
    let path = dir.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_artgc"))
            .env("ARTGC_ALLOW_LOOPBACK", "true")
            .args(["purge", "-f", &path, "--yes", "-o", "json"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run artgc")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(doc["totals"]["objects_deleted"], 1, "{doc}");
    assert_eq!(s3.keys(&bucket).await, ["cli/2/a.tgz"]);
    let lost = doc["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "lost")
        .expect("lost is reported");
    assert_eq!(lost["error_category"], "offload_missing", "{lost}");
    let garbled = doc["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "garbled")
        .expect("garbled is reported");
    assert_eq!(garbled["error_category"], "invalid_field", "{garbled}");
    assert!(
        garbled["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a node map")),
        "{garbled}"
    );
}

/// Argo's database down: each pass fails `offload_unreachable` and is retried; a deleted
/// Workflow with `forceFinalizerRemoval` is let go once the retry budget is spent, and says so.
async fn an_unreachable_database_counts_toward_forced_release(s: Server) {
    let team = Team::new("offload-down").await;
    let (kube, repo, ns) = (&team.kube, &team.repo, TEAM);
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down_db = Persistence {
        host: "127.0.0.1".into(),
        port,
        database: "argo".into(),
        table: "argo_workflows".into(),
        ..persistence_stub(&s)
    };
    seed_argo_config(kube, repo, &persistence_of(&down_db), &s);
    let (down, _) = offload(
        workflow(ns, "down")
            .set(
                &["status", "artifactRepositoryRef"],
                json!({"artifactRepository": repo}),
            )
            .set(
                &["spec", "artifactGC"],
                json!({"strategy": "OnWorkflowDeletion", "forceFinalizerRemoval": true}),
            )
            .set(
                &["metadata", "finalizers"],
                json!(["workflows.argoproj.io/artifact-gc"]),
            )
            .node("down-1", "main", vec![key_only("a", "down/a.tgz")])
            .0,
        "fnv:41",
    );
    kube.seed(down);
    artgc::kube_api::workflows(&kube.client(), Some(ns))
        .delete("down", &Default::default())
        .await
        .expect("delete");
    let config = artgc::controller::ControllerConfig {
        namespaces: vec![ns.into()],
        retry_budget: 2,
        ..quick_config()
    };
    let ctl = artgc::controller::start(kube.client(), config)
        .await
        .expect("controller starts");
    until("released by force after the budget", async || {
        kube.get("argoproj.io/v1alpha1", "Workflow", Some(ns), "down")
            .is_none()
    })
    .await;
    until(
        "the forced release and its cause are reported",
        async || {
            let events = kube.list("events.k8s.io/v1", "Event");
            let said = |reason: &str, what: &str| {
                events.iter().any(|e| {
                    e["regarding"]["name"] == "down"
                        && e["reason"] == reason
                        && e["note"].as_str().is_some_and(|n| n.contains(what))
                })
            };
            said("ArtifactGCFinalizerForced", "") && said("ArtifactGCFailed", "offload_unreachable")
        },
    )
    .await;
    ctl.shutdown().await;
}

/// Argo's `persistence` settings that reach `p`, its credentials in Secret `argo/argo-db`.
fn persistence_of(p: &Persistence) -> Value {
    let engine = match p.engine {
        Engine::Postgres { .. } => "postgresql",
        Engine::MySql { .. } => "mysql",
    };
    json!({"nodeStatusOffLoad": true, engine: {
        "host": p.host, "port": p.port, "database": p.database, "tableName": p.table,
        "userNameSecret": {"name": "argo-db", "key": "username"},
        "passwordSecret": {"name": "argo-db", "key": "password"}}})
}

/// Settings for server `s` before any database exists on it.
fn persistence_stub(s: &Server) -> Persistence {
    Persistence {
        engine: s.engine.clone(),
        host: s.host.clone(),
        port: s.port,
        database: String::new(),
        table: "argo_workflows".into(),
        cluster_name: "default".into(),
        user_secret: SecretKeySelector::default(),
        password_secret: SecretKeySelector::default(),
        offloading: true,
        pool: PoolSettings {
            max_open: 2,
            max_idle: 1,
            max_lifetime: None,
        },
    }
}

/// Argo's ConfigMap (`argo/workflow-controller-configmap`: `repo` and `persistence`) and the
/// database Secret, on the test server.
fn seed_argo_config(kube: &KubeApiServer, repo: &Value, persistence: &Value, s: &Server) {
    kube.seed(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "workflow-controller-configmap", "namespace": "argo"},
        "data": {
            "artifactRepository": serde_json::to_string(repo).unwrap(),
            "persistence": serde_json::to_string(persistence).unwrap(),
        },
    }));
    kube.seed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "argo-db", "namespace": "argo"},
        "stringData": {"username": s.user, "password": s.password},
    }));
}

/// The shared-key guard sees a *running* offloaded workflow's keys (read from the database
/// when it is indexed): a finished workflow's output that it reads as an input is kept while
/// it runs, and collected once it finished.
async fn a_running_offloaded_workflows_inputs_are_kept(s: Server) {
    let team = Team::new("offload-shared").await;
    let (kube, s3, bucket, repo, ns) = (&team.kube, &team.s3, &team.bucket, &team.repo, TEAM);
    s3.put(bucket, "made/out.tgz", "x").await;
    let made = workflow(ns, "maker")
        .set(
            &["status", "artifactRepositoryRef"],
            json!({"artifactRepository": repo}),
        )
        .node(
            "maker-1",
            "main",
            vec![with_strategy(
                key_only("out", "made/out.tgz"),
                "OnWorkflowCompletion",
            )],
        );
    // Running, offloaded: its node reads the maker's output.
    let mut reader = workflow(ns, "reader")
        .set(
            &["status", "artifactRepositoryRef"],
            json!({"artifactRepository": repo}),
        )
        .running()
        .0;
    reader["status"]["nodes"]["reader-1"] = json!({
        "id": "reader-1", "name": "reader-1", "type": "Pod", "phase": "Running",
        "templateName": "main",
        "inputs": {"artifacts": [{"name": "in", "s3": {"key": "made/out.tgz"}}]},
    });
    let (reader, reader_nodes) = offload(reader, "fnv:51");
    let uid = kube.seed(reader)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let p = argo_database(&s, &[("default", &uid, "fnv:51", ns, &reader_nodes)]).await;
    seed_argo_config(kube, repo, &persistence_of(&p), &s);
    let config = artgc::controller::ControllerConfig {
        namespaces: vec![ns.into()],
        reader_recheck: std::time::Duration::from_millis(200),
        ..quick_config()
    };
    let ctl = artgc::controller::start(kube.client(), config)
        .await
        .expect("controller starts");
    // Indexed before the maker arrives.
    until("the reader is indexed", async || {
        common::sample(&common::metrics(&ctl).await, "artgc_keys_indexed").is_some_and(|n| n >= 1.0)
    })
    .await;
    let passes = async || {
        let m = common::metrics(&ctl).await;
        m.lines()
            .filter(|l| l.starts_with("artgc_reconcile_duration_seconds_count"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = passes().await;
    kube.seed(made.0);
    until("the maker has had a pass", async || passes().await > before).await;
    assert_eq!(
        s3.keys(bucket).await,
        ["made/out.tgz"],
        "kept while the offloaded reader runs"
    );
    // The reader finishes: the maker's output goes at the next look.
    artgc::kube_api::workflows(&kube.client(), Some(ns))
        .patch(
            "reader",
            &Default::default(),
            &kube::api::Patch::Merge(json!({
                "metadata": {"labels": {"workflows.argoproj.io/completed": "true"}},
                "status": {"phase": "Succeeded"},
            })),
        )
        .await
        .expect("finish the reader");
    until("collected once the reader finished", async || {
        s3.keys(bucket).await.is_empty()
    })
    .await;
    ctl.shutdown().await;
}

/// Each scenario on both servers: `postgres::NAME` and `mariadb::NAME`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[ignore = "needs PostgreSQL and MariaDB: eval \"$(.ci/db.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(s) = super::postgres() {
                        super::$name(s).await;
                    }
                }
            )*
        }
        mod mariadb {
            $(
                #[ignore = "needs PostgreSQL and MariaDB: eval \"$(.ci/db.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(s) = super::mysql() {
                        super::$name(s).await;
                    }
                }
            )*
        }
    };
}

on_both_databases!(
    reads_exactly_the_recorded_version,
    the_controller_collects_offloaded_workflows,
    purge_reads_the_database_the_files_name,
    an_unreachable_database_counts_toward_forced_release,
    a_running_offloaded_workflows_inputs_are_kept,
);

const TEAM: &str = "team";

/// Namespace `team` on a test server of its own, its S3 bucket and credentials Secret, and
/// the repository its workflows froze into their status.
struct Team {
    kube: KubeApiServer,
    s3: S3Server,
    bucket: String,
    repo: Value,
}

impl Team {
    async fn new(bucket_prefix: &str) -> Self {
        let kube = KubeApiServer::start().await;
        let s3 = S3Server::start().await;
        let bucket = s3.bucket(bucket_prefix).await;
        let mut repo = s3_repo(&s3.endpoint, &bucket, "s3-creds");
        repo["s3"]["region"] = json!(s3.region);
        kube.seed(support::secret(
            TEAM,
            "s3-creds",
            &s3.access_key,
            &s3.secret_key,
        ));
        Self {
            kube,
            s3,
            bucket,
            repo,
        }
    }
}
