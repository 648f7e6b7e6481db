//! A hostile tenant's Workflows, over HTTP: whatever a Workflow says (its author writes all of
//! it, status included), artgc deletes nothing its namespace's own GC pod could not have deleted
//! in Argo, contacts no endpoint that is not configured for it, and acts as no other identity.
//! Every rule of the README's Security model has a test here; a second "sink" endpoint counts
//! the connections it receives, which must be none.

mod common;
#[path = "../core/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use artgc::controller::{ControllerConfig, ControllerHandle};
use artgc::execute::{Execution, Run, execute};
use artgc::identity::StsSettings;
use artgc::store::{ObjectStore, StoreOptions};
use artgc_core::plan::{Decision, GcPlan, KeepReason, StrategyFilter};
use artgc_core::policy::Policy;
use artgc_testkit::{KubeApiServer, S3Server, Sink, StsRole, StsServer};
use common::until;
use serde_json::{Value, json};
use support::*;

const COMPLETION: &str = "OnWorkflowCompletion";

/// The operator's policy `text`, with loopback allowed: the test stores listen there.
fn policy(text: &str) -> std::sync::Arc<Policy> {
    let mut p = Policy::parse(text).expect("policy");
    p.allow_loopback = true;
    std::sync::Arc::new(p)
}

/// The namespace's `artifact-repositories` ConfigMap: what configures a store for it.
fn repositories(ns: &str, repo: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "artifact-repositories", "namespace": ns,
                        "annotations": {"workflows.argoproj.io/default-artifact-repository": "default"}},
           "data": {"default": serde_json::to_string(repo).unwrap()}})
}

fn server_repo(srv: &S3Server, bucket: &str, secret: Option<&str>) -> Value {
    let mut r = json!({"s3": {"endpoint": srv.endpoint, "bucket": bucket, "insecure": true,
                              "region": srv.region}});
    if let Some(s) = secret {
        r["s3"]["accessKeySecret"] = json!({"name": s, "key": "accesskey"});
        r["s3"]["secretKeySecret"] = json!({"name": s, "key": "secretkey"});
    }
    r
}

/// Namespace `ns`'s Secret `s3` with the server's keys.
fn creds(srv: &S3Server) -> Vec<Value> {
    vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)]
}

async fn run(plan: &GcPlan) -> Execution {
    let opts = StoreOptions {
        max_attempts: 2,
        ..Default::default()
    };
    execute(plan, &ObjectStore::new(opts), Run::DELETE).await
}

fn decision<'a>(plan: &'a GcPlan, wf: &str, art: &str) -> &'a Decision {
    &plan
        .artifacts()
        .find(|(w, a)| w.name == wf && a.name == art)
        .unwrap_or_else(|| panic!("no {wf}/{art}"))
        .1
        .decision
}

fn category(plan: &GcPlan, wf: &str, art: &str) -> &'static str {
    decision(plan, wf, art).category()
}

/// The block reads addresses, not text: every numeric spelling a resolver accepts for a
/// metadata or link-local address is refused, and loopback (artgc's own admin server, its
/// sidecars) is contacted only where the operator allows it, even when the tenant's own
/// ConfigMap configures it. A name is checked again at connect time, on the addresses it
/// resolves to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_spellings_of_forbidden_addresses_and_loopback_receive_nothing() {
    let admin = Sink::start().await;
    let port = admin.endpoint.rsplit_once(':').unwrap().1.to_string();
    let creds = secret("tenant-a", "s3", "AK", "SK");
    let repo = json!({"s3": {"endpoint": admin.endpoint, "bucket": "b", "insecure": true,
                                  "accessKeySecret": {"name": "s3", "key": "accesskey"},
                                  "secretKeySecret": {"name": "s3", "key": "secretkey"}}});
    let own_repo = repositories("tenant-a", &repo);
    let spellings = [
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "[::ffff:100.100.100.200]",
        "0",
        "0x0",
        "0.0",
        "[fd00:ec2::23]",
        "metadata",
        "metadata.goog",
        "instance-data",
    ];
    let loopback = [
        admin.endpoint.clone(),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
        format!("127.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::1]:{port}"),
        format!("localhost:{port}"),
    ];
    let arts: Vec<Value> = spellings
        .iter()
        .map(|e| e.to_string())
        .chain(loopback.iter().cloned())
        .enumerate()
        .map(|(i, e)| {
            let mut a = full(&format!("a{i}"), &e, "b", &format!("k/{i}"), "s3");
            a["s3"]["insecure"] = json!(true);
            with_strategy(a, COMPLETION)
        })
        .collect();
    let n = arts.len();
    let w = || workflow("tenant-a", "w").node("n1", "t", arts.clone());
    let plan = plan_with_policy(
        vec![w()],
        vec![creds.clone(), own_repo.clone()],
        StrategyFilter::Due,
        Default::default(),
    );
    for i in 0..n {
        assert_eq!(
            category(&plan, "w", &format!("a{i}")),
            "endpoint_not_allowed",
            "a{i}: {:?}",
            decision(&plan, "w", &format!("a{i}"))
        );
    }
    run(&plan).await;
    assert_eq!(admin.connections(), 0, "a loopback address was contacted");

    // The operator may allow loopback (a port-forwarded store): then it is contacted, and
    // the metadata spellings are still refused.
    let plan = plan_with_policy(
        vec![w()],
        vec![creds, own_repo],
        StrategyFilter::Due,
        policy("allowLoopback: true\n"),
    );
    for i in 0..spellings.len() {
        assert_eq!(
            category(&plan, "w", &format!("a{i}")),
            "endpoint_not_allowed"
        );
    }
    assert_eq!(
        decision(&plan, "w", &format!("a{}", spellings.len())),
        &Decision::Delete
    );

    // artgc's own pod address (the downward API's podIPs), configured by the tenant: refused,
    // unless the operator names it in a grant.
    let pod = "10.1.2.3:9000";
    let mut own = artgc_core::policy::Policy {
        own_addresses: vec!["10.1.2.3".parse().unwrap()],
        ..Default::default()
    };
    let own_repo_at_pod = {
        let mut r = repo.clone();
        r["s3"]["endpoint"] = json!(pod);
        repositories("tenant-a", &r)
    };
    let at_pod = || {
        let mut a = full("pod", pod, "b", "k/pod", "s3");
        a["s3"]["insecure"] = json!(true);
        workflow("tenant-a", "w").node("n1", "t", vec![with_strategy(a, COMPLETION)])
    };
    let creds = secret("tenant-a", "s3", "AK", "SK");
    let plan = plan_with_policy(
        vec![at_pod()],
        vec![creds.clone(), own_repo_at_pod.clone()],
        StrategyFilter::Due,
        std::sync::Arc::new(own.clone()),
    );
    assert_eq!(category(&plan, "w", "pod"), "endpoint_not_allowed");
    own.defaults.endpoints = vec![pod.into()];
    let plan = plan_with_policy(
        vec![at_pod()],
        vec![creds, own_repo_at_pod],
        StrategyFilter::Due,
        std::sync::Arc::new(own),
    );
    assert_eq!(decision(&plan, "w", "pod"), &Decision::Delete);

    // At connect time: a name (not an address) that resolves to loopback is refused unless the
    // connection allows loopback.
    let store = ObjectStore::new(StoreOptions {
        max_attempts: 1,
        ..Default::default()
    });
    let conn = |loopback| artgc_core::location::S3Connection {
        url: format!("http://localhost:{port}"),
        region: "us-east-1".into(),
        discover_region: false,
        path_style: true,
        credentials: artgc_core::location::Credentials::Static {
            secret: "s3".into(),
            access_key: "AK".into(),
            secret_key: "SK".into(),
            session_token: None,
        },
        ca_pem: None,
        loopback,
        own_addresses: Vec::new(),
    };
    let client = store.client(&conn(false)).await.expect("a client");
    let err = store.check_bucket(&client, "b").await.expect_err("refused");
    assert!(
        format!("{err:?}").contains("loopback"),
        "the refusal says why: {err:?}"
    );
    assert_eq!(admin.connections(), 0, "refused before connecting");
    let client = store.client(&conn(true)).await.expect("a client");
    let _ = store.check_bucket(&client, "b").await;
    assert!(admin.connections() > 0, "allowed, it connects");
}

/// tenant-a names tenant-b's bucket with a complete location and no Secret refs (or a
/// `roleARN`): in Argo its GC pod would have had no credentials for it. artgc does not lend it
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_without_secrets_never_gets_artgcs_own_identity() {
    let srv = S3Server::start().await;
    let b = srv.bucket("tenant-b").await;
    srv.put(&b, "prod/data.csv", "b's data").await;
    let mut bare = full("steal", &srv.endpoint, &b, "prod/", "unused");
    bare["s3"]
        .as_object_mut()
        .unwrap()
        .remove("accessKeySecret");
    bare["s3"]
        .as_object_mut()
        .unwrap()
        .remove("secretKeySecret");
    let mut role = bare.clone();
    role["name"] = json!("role");
    role["s3"]["roleARN"] = json!("arn:aws:iam::1:role/tenant-b-admin");
    let mut sdk = bare.clone();
    sdk["name"] = json!("sdk");
    sdk["s3"]["useSDKCreds"] = json!(true);
    let w = workflow("tenant-a", "w").node(
        "n1",
        "t",
        vec![
            with_strategy(bare, COMPLETION),
            with_strategy(role, COMPLETION),
            with_strategy(sdk, COMPLETION),
        ],
    );
    let plan = plan_due(vec![w], vec![]);
    for art in ["steal", "role", "sdk"] {
        assert_eq!(category(&plan, "w", art), "identity", "{art}");
    }
    run(&plan).await;
    assert_eq!(srv.keys(&b).await, ["prod/data.csv"]);

    // Only an operator's grant lets a namespace use artgc's own identity.
    let w = workflow("ops", "w").node(
        "n1",
        "t",
        vec![with_strategy(
            full("own", "s3.amazonaws.com", "ops-bucket", "x/y", "unused"),
            COMPLETION,
        )],
    );
    let mut w = w;
    let loc = &mut w.0["status"]["nodes"]["n1"]["outputs"]["artifacts"][0]["s3"];
    loc.as_object_mut().unwrap().remove("accessKeySecret");
    loc.as_object_mut().unwrap().remove("secretKeySecret");
    let granted = policy(
        "rules:\n  - namespaces: [ops]\n    identities: [controller]\n    endpoints: [s3.amazonaws.com]\n",
    );
    let plan = plan_with_policy(vec![w], vec![], StrategyFilter::Due, granted);
    assert_eq!(decision(&plan, "w", "own"), &Decision::Delete);
}

/// Requests go only to endpoints configured for the workflow's namespace (its repositories,
/// Argo's controller repository, the policy); never to a metadata or link-local address; and the
/// namespace's Secret values never reach another endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_endpoints_receive_nothing() {
    let srv = S3Server::start().await;
    let sink = Sink::start().await;
    let b = srv.bucket("ssrf").await;
    let creds = secret("tenant-a", "s3", &srv.access_key, &srv.secret_key);
    let other_ns_repo = repositories("tenant-b", &server_repo(&srv, &b, None));
    let own_repo = repositories("tenant-a", &server_repo(&srv, &b, Some("s3")));
    let arts = vec![
        with_strategy(full("sink", &sink.endpoint, &b, "k/a", "s3"), COMPLETION),
        with_strategy(full("imds", "169.254.169.254", &b, "k/b", "s3"), COMPLETION),
        with_strategy(
            full("imds-http", "http://169.254.169.254:80/", &b, "k/c", "s3"),
            COMPLETION,
        ),
        with_strategy(
            full("gcp", "metadata.google.internal", &b, "k/d", "s3"),
            COMPLETION,
        ),
        on_server(&srv.region, &srv.endpoint, "ok", &b, "k/ok", "s3"),
        // The configured store over another scheme is another endpoint.
        with_strategy(
            full(
                "https",
                &format!("https://{}", srv.endpoint),
                &b,
                "k/g",
                "s3",
            ),
            COMPLETION,
        ),
    ];
    srv.put(&b, "k/ok", "x").await;
    // The status names the sink as the repository it "froze": status is the tenant's to write.
    let mut sink_repo = server_repo(&srv, &b, Some("s3"));
    sink_repo["s3"]["endpoint"] = json!(sink.endpoint);
    let keyonly = workflow("tenant-a", "frozen").status_repo(sink_repo).node(
        "n1",
        "t",
        vec![with_strategy(key_only("frozen", "k/e"), COMPLETION)],
    );
    // tenant-b's configured store is not tenant-a's.
    let other = workflow("tenant-c", "other").node(
        "n1",
        "t",
        vec![with_strategy(
            full("elsewhere", &srv.endpoint, &b, "k/f", "s3"),
            COMPLETION,
        )],
    );
    let plan = plan_with_policy(
        vec![
            workflow("tenant-a", "w").node("n1", "t", arts),
            keyonly,
            other,
        ],
        vec![
            creds,
            secret("tenant-c", "s3", &srv.access_key, &srv.secret_key),
            other_ns_repo,
            own_repo,
        ],
        StrategyFilter::Due,
        common::loopback_policy(),
    );
    for (wf, art) in [
        ("w", "sink"),
        ("w", "imds"),
        ("w", "imds-http"),
        ("w", "gcp"),
        ("frozen", "frozen"),
        ("other", "elsewhere"),
        ("w", "https"),
    ] {
        assert_eq!(
            category(&plan, wf, art),
            "endpoint_not_allowed",
            "{wf}/{art}"
        );
    }
    assert_eq!(decision(&plan, "w", "ok"), &Decision::Delete);
    let exec = run(&plan).await;
    assert_eq!(sink.connections(), 0, "the sink was contacted");
    assert!(
        srv.keys(&b).await.is_empty(),
        "the configured store is used"
    );
    assert_eq!(exec.outcomes.len(), 1);

    // Even the operator's policy cannot open a metadata address.
    let open = policy("defaults:\n  endpoints: [\"169.254.169.254\"]\n");
    let w = workflow("tenant-a", "w").node(
        "n1",
        "t",
        vec![with_strategy(
            full("imds", "169.254.169.254", &b, "k/b", "s3"),
            COMPLETION,
        )],
    );
    let creds = secret("tenant-a", "s3", &srv.access_key, &srv.secret_key);
    let plan = plan_with_policy(vec![w], vec![creds], StrategyFilter::Due, open);
    assert_eq!(category(&plan, "w", "imds"), "endpoint_not_allowed");
}

/// The policy confines a namespace to its buckets and key prefixes.
#[test]
fn the_policy_confines_buckets_and_prefixes() {
    let p = policy(
        "defaults:\n  endpoints: [\"minio:9000\"]\nrules:\n  - namespaces: [team-a]\n    endpoints: [\"minio:9000\"]\n    buckets: [team-a]\n    keyPrefixes: [runs/]\n",
    );
    let creds = secret("team-a", "s3", "AK", "SK");
    let w = workflow("team-a", "w").node(
        "n1",
        "t",
        vec![
            with_strategy(
                full("ok", "minio:9000", "team-a", "runs/x", "s3"),
                COMPLETION,
            ),
            with_strategy(
                full("bucket", "minio:9000", "team-b", "runs/x", "s3"),
                COMPLETION,
            ),
            with_strategy(
                full("prefix", "minio:9000", "team-a", "other/x", "s3"),
                COMPLETION,
            ),
        ],
    );
    let plan = plan_with_policy(vec![w], vec![creds], StrategyFilter::Due, p);
    assert_eq!(decision(&plan, "w", "ok"), &Decision::Delete);
    assert_eq!(category(&plan, "w", "bucket"), "bucket_not_allowed");
    assert_eq!(category(&plan, "w", "prefix"), "bucket_not_allowed");
}

/// A memoization cache hit carries the producer's keys: the consumer never deletes them, and
/// while the consumer exists its use keeps the producer's own pass from deleting them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memoized_outputs_belong_to_their_producer() {
    let srv = S3Server::start().await;
    let b = srv.bucket("memo").await;
    srv.put(&b, "producer/p-1/out.tgz", "cached").await;
    let hit = json!({"id": "c-1", "name": "c-1", "type": "Pod", "phase": "Succeeded",
        "templateName": "t", "memoizationStatus": {"hit": true, "key": "k", "cacheName": "c"},
        "outputs": {"artifacts": [on_server(&srv.region, &srv.endpoint, "out", &b, "producer/p-1/out.tgz", "s3")]}});
    let consumer = workflow("ns", "consumer").set(&["status", "nodes", "c-1"], hit);
    let creds = secret("ns", "s3", &srv.access_key, &srv.secret_key);
    let plan = plan_due(vec![consumer.clone()], vec![creds.clone()]);
    assert_eq!(
        decision(&plan, "consumer", "out"),
        &Decision::Keep(KeepReason::Memoized)
    );
    run(&plan).await;
    assert_eq!(srv.keys(&b).await, ["producer/p-1/out.tgz"]);

    // The producer's own pass, with the consumer still there.
    let producer = workflow("ns", "producer").node(
        "p-1",
        "t",
        vec![on_server(
            &srv.region,
            &srv.endpoint,
            "out",
            &b,
            "producer/p-1/out.tgz",
            "s3",
        )],
    );
    let plan = plan_due(vec![producer, consumer], vec![creds]);
    let Decision::Keep(KeepReason::Shared(by)) = decision(&plan, "producer", "out") else {
        panic!("{:?}", decision(&plan, "producer", "out"))
    };
    assert!(by.contains("ns/consumer"), "{by}");
}

/// A key without a trailing `/` is widened to `key/` only with positive evidence: `archive:
/// none`, a HEAD that answered "no such object", and no earlier pass that found a file there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_pass_never_deletes_more_than_the_first() {
    let srv = S3Server::start().await;
    let b = srv.bucket("widen").await;
    srv.put(&b, "w/out", "the file").await;
    srv.put(&b, "w/tgz/unrelated", "someone else's").await;
    let art = |name: &str, key: &str| on_server(&srv.region, &srv.endpoint, name, &b, key, "s3");
    let wf = || {
        workflow("ns", "w").node(
            "n1",
            "t",
            vec![archive_none(art("out", "w/out")), art("tgz", "w/tgz")],
        )
    };
    // First pass: the file is found and deleted; it is recorded as a file before deleting.
    let plan = plan_due(vec![wf()], creds(&srv));
    let probed =
        artgc::execute::probe(&plan, &ObjectStore::new(Default::default()), Run::DELETE).await;
    let marks = probed.files_to_mark();
    assert_eq!(
        marks.len(),
        1,
        "the archive-none file is marked before it is deleted"
    );
    artgc::execute::delete(
        &plan,
        probed,
        &ObjectStore::new(Default::default()),
        Run::DELETE,
    )
    .await;
    assert_eq!(srv.keys(&b).await, ["w/tgz/unrelated"]);
    // Someone else writes under the gone file's name as a folder.
    srv.put(&b, "w/out/unrelated", "someone else's").await;

    // The record was lost (crash, 409): a repeat pass sees the mark and does not widen. An
    // artifact that is not `archive: none` is never widened at all.
    let marked = wf().set(
        &[
            "metadata",
            "annotations",
            artgc_core::model::ANNOTATION_PROBED_FILES,
        ],
        json!("n1/out"),
    );
    let plan = plan_due(vec![marked], creds(&srv));
    let exec = run(&plan).await;
    assert!(
        exec.outcomes
            .values()
            .all(|o| o.error.is_none() && o.objects == 0)
    );
    assert_eq!(srv.keys(&b).await, ["w/out/unrelated", "w/tgz/unrelated"]);

    // The mark is what holds it back: without it, `archive: none` and no object at the key
    // would be evidence of a directory, and a dry run lists what would then go.
    let plan = plan_due(vec![wf()], creds(&srv));
    let store = ObjectStore::new(Default::default());
    let exec = execute(&plan, &store, Run::DRY_RUN).await;
    let widened: u64 = exec.outcomes.values().map(|o| o.objects).sum();
    assert_eq!(widened, 1);
}

/// A failed HEAD (5xx, 403) is no evidence that a key names a directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_never_widens() {
    use artgc_testkit::{FaultProxy, FaultRule};
    let srv = S3Server::start().await;
    let b = srv.bucket("headfail").await;
    srv.put(&b, "w/dir/a", "x").await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    proxy.add_rule(FaultRule::status("HEAD", 500, "InternalError", usize::MAX));
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![archive_none(on_server(
            &srv.region,
            &proxy.endpoint,
            "dir",
            &b,
            "w/dir",
            "s3",
        ))],
    );
    let plan = plan_due(vec![w], creds(&srv));
    let exec = run(&plan).await;
    let out = exec.outcomes.values().next().unwrap();
    assert!(out.error.is_some(), "the HEAD error stands");
    assert_eq!(srv.keys(&b).await, ["w/dir/a"]);
}

/// `.`/`..` segments and control characters are refused before anything is sent: a
/// path-resolving store would reach outside the artifact. (A leading `/` and `//` are part of
/// the object's name and deleted as written: `tests/versioned.rs`, on a literal store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_could_escape_are_refused() {
    let srv = S3Server::start().await;
    let b = srv.bucket("dots").await;
    srv.put(&b, "other/secret.csv", "x").await;
    let arts: Vec<Value> = [
        ("dotdot", "w/../other/secret.csv"),
        ("dot", "./other/secret.csv"),
        ("ctl", "w/\u{1b}[2Jx"),
    ]
    .iter()
    .map(|(n, k)| on_server(&srv.region, &srv.endpoint, n, &b, k, "s3"))
    .collect();
    let plan = plan_due(vec![workflow("ns", "w").node("n1", "t", arts)], creds(&srv));
    for art in ["dotdot", "dot", "ctl"] {
        assert_eq!(category(&plan, "w", art), "unsafe_key", "{art}");
    }
    run(&plan).await;
    assert_eq!(srv.keys(&b).await, ["other/secret.csv"]);
}

/// Argo uploads a directory under `path.Join(key, file)` and lists `Clean(key) + "/"`: a
/// directory key with empty or `.` segments names the cleaned folder, which is what is deleted
/// (listing the raw key would find nothing and report the artifact deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_keys_that_are_not_path_clean_reach_what_argo_wrote() {
    let srv = S3Server::start().await;
    let b = srv.bucket("clean").await;
    for k in [
        "w/run-7/a.csv",
        "w/run-7/b.csv",
        "w/run-70/c.csv",
        "w/d/e.csv",
    ] {
        srv.put(&b, k, "x").await;
    }
    let arts = vec![
        on_server(&srv.region, &srv.endpoint, "double", &b, "w//run-7/", "s3"),
        on_server(&srv.region, &srv.endpoint, "dot", &b, "w/./d/", "s3"),
    ];
    let plan = plan_due(vec![workflow("ns", "w").node("n1", "t", arts)], creds(&srv));
    assert_eq!(
        art(&plan, "w", "double").target.as_ref().unwrap().key,
        "w/run-7/"
    );
    assert_eq!(art(&plan, "w", "dot").target.as_ref().unwrap().key, "w/d/");
    run(&plan).await;
    assert_eq!(srv.keys(&b).await, ["w/run-70/c.csv"]);
}

/// One store spelt two ways (`minio:9000` and its FQDN) is one store for the shared-key check;
/// a use of a whole bucket makes no key of it shared.
#[test]
fn shared_keys_across_spellings_and_no_pins_from_a_bucket_root() {
    let creds = secret("ns", "s3", "AK", "SK");
    let live = workflow("ns", "runner").running().template(json!({"name": "t",
        "outputs": {"artifacts": [full("k", "minio.ns.svc.cluster.local:9000", "b", "fixed/k", "s3")]}}));
    let done = workflow("ns", "done").node(
        "n1",
        "t",
        vec![with_strategy(
            full("k", "minio:9000", "b", "fixed/k", "s3"),
            COMPLETION,
        )],
    );
    let plan = plan_due(vec![done, live], vec![creds.clone()]);
    assert!(
        matches!(
            decision(&plan, "done", "k"),
            Decision::Keep(KeepReason::Shared(_))
        ),
        "{:?}",
        decision(&plan, "done", "k")
    );

    let root = workflow("ns", "root").node(
        "n1",
        "t",
        vec![
            with_strategy(full("all", "minio:9000", "b", "/", "s3"), "Never"),
            with_strategy(full("empty", "minio:9000", "b", "", "s3"), "Never"),
        ],
    );
    let other = workflow("ns", "other").node(
        "n1",
        "t",
        vec![with_strategy(
            full("k", "minio:9000", "b", "other/k", "s3"),
            COMPLETION,
        )],
    );
    let plan = plan_due(vec![other, root], vec![creds]);
    assert_eq!(decision(&plan, "other", "k"), &Decision::Delete);
}

/// An object last modified after the workflow finished (plus the skew) is another run's: a fixed
/// key overwritten by a later run whose Workflow is already gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_after_the_workflow_are_kept() {
    let srv = S3Server::start().await;
    let b = srv.bucket("later").await;
    srv.put(&b, "fixed/report.csv", "next run's").await;
    srv.put(&b, "w/dir/old", "ours").await;
    let an_hour_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)).to_string();
    let w = workflow("ns", "w")
        .set(&["status", "finishedAt"], json!(an_hour_ago))
        .node(
            "n1",
            "t",
            vec![
                on_server(
                    &srv.region,
                    &srv.endpoint,
                    "fixed",
                    &b,
                    "fixed/report.csv",
                    "s3",
                ),
                on_server(&srv.region, &srv.endpoint, "dir", &b, "w/dir/", "s3"),
            ],
        );
    let plan = plan_due(vec![w], creds(&srv));
    let exec = run(&plan).await;
    let written_after: u64 = exec.outcomes.values().map(|o| o.written_after).sum();
    assert_eq!(written_after, 2);
    assert_eq!(srv.keys(&b).await, ["fixed/report.csv", "w/dir/old"]);
    // The report says what was kept and why, not just "deleted 0 object(s)".
    let report = artgc::report::Report::new(&plan, Some(&exec), false);
    let reasons: Vec<String> = report.workflows[0]
        .artifacts
        .iter()
        .map(|a| a.reason.clone())
        .collect();
    for r in &reasons {
        assert!(
            r.contains("kept 1 object(s) written after the workflow finished"),
            "{r}"
        );
    }
    let ctx = artgc_core::outcome::PassContext {
        budget: 5,
        ..completed_pass()
    };
    let outcome = artgc_core::outcome::assess(&plan.workflows[0], 0, Some(&exec), &ctx);
    assert_eq!(
        outcome.kept,
        [artgc_core::outcome::KeptReason::WrittenAfterWorkflow; 2]
    );
}

/// `--max-objects-per-artifact` holds per artifact even when one listing answers for several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_bound_holds_per_artifact_in_a_shared_listing() {
    let srv = S3Server::start().await;
    let b = srv.bucket("bound").await;
    for k in ["w/a/1", "w/a/2", "w/a/3", "w/b/1"] {
        srv.put(&b, k, "x").await;
    }
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            on_server(&srv.region, &srv.endpoint, "a", &b, "w/a/", "s3"),
            on_server(&srv.region, &srv.endpoint, "b", &b, "w/b/", "s3"),
        ],
    );
    let plan = plan_due(vec![w], creds(&srv));
    let opts = StoreOptions {
        max_objects_per_artifact: 2,
        ..Default::default()
    };
    let exec = execute(&plan, &ObjectStore::new(opts), Run::DELETE).await;
    let errors: Vec<_> = exec
        .outcomes
        .values()
        .filter_map(|o| o.error.as_ref().map(|e| e.category()))
        .collect();
    assert_eq!(errors, ["too_many_objects"]);
    assert_eq!(srv.keys(&b).await, ["w/a/1", "w/a/2", "w/a/3"]);
}

/// A record is preconditioned on the Workflow's uid: one deleted and created again under the
/// same name never receives the first one's marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_workflow_never_receives_anothers_record() {
    let kube = KubeApiServer::start().await;
    let first = kube.seed(
        workflow("ns", "w")
            .node(
                "n1",
                "t",
                vec![with_strategy(key_only("a", "w/a"), COMPLETION)],
            )
            .0,
    );
    let api = artgc::kube_api::workflows(&kube.client(), Some("ns"));
    api.delete("w", &Default::default()).await.unwrap();
    kube.seed(
        workflow("ns", "w")
            .node(
                "n1",
                "t",
                vec![with_strategy(key_only("a", "w/a"), COMPLETION)],
            )
            .0,
    );
    let mut update = artgc_core::outcome::StatusUpdate::none();
    update.deleted.push(artgc_core::outcome::DeletedArtifact {
        node: "n1".into(),
        index: 0,
        name: "a".into(),
    });
    update
        .processed
        .push(artgc_core::plan::Strategy::OnWorkflowCompletion);
    let limit = artgc_core::nodes::DEFAULT_MAX_DECOMPRESSED;
    artgc::record::apply(&api, first.clone(), &update, "f", "artgc", None, limit)
        .await
        .unwrap();
    let now = kube
        .get("argoproj.io/v1alpha1", "Workflow", Some("ns"), "w")
        .unwrap();
    assert_ne!(now["metadata"]["uid"], first["metadata"]["uid"]);
    assert!(now["status"]["artifactGCStatus"].is_null(), "{now}");
    assert!(now["status"]["nodes"]["n1"]["outputs"]["artifacts"][0]["deleted"].is_null());
}

// ---- acting as the workflow's GC service account ----

const NS_A: &str = "team-a";
const ROLE_A: &str = "arn:aws:iam::111:role/team-a-gc";
const ROLE_B: &str = "arn:aws:iam::111:role/team-a-reports";

struct IdentityEnv {
    kube: KubeApiServer,
    s3: S3Server,
    sts: StsServer,
    bucket: String,
}

/// team-a's `gc` account may take ROLE_A (its trust policy names it), which may take ROLE_B;
/// team-b's `gc` claims ROLE_A in its annotation, which does not trust it; team-c's `gc` has
/// no role. Every namespace's repository has no Secrets: artifacts go through the account.
async fn identity_env() -> IdentityEnv {
    let keys = [
        ("AKROLEA".to_string(), "secret-role-a".to_string()),
        ("AKROLEB".to_string(), "secret-role-b".to_string()),
    ];
    let s3 = S3Server::start_local_with_keys(&keys).await;
    let sts = StsServer::start(
        "sts.amazonaws.com",
        vec![
            StsRole {
                arn: ROLE_A.into(),
                access_key: keys[0].0.clone(),
                secret_key: keys[0].1.clone(),
                trusted_subjects: vec![format!("system:serviceaccount:{NS_A}:gc")],
                trusted_roles: vec![],
            },
            StsRole {
                arn: ROLE_B.into(),
                access_key: keys[1].0.clone(),
                secret_key: keys[1].1.clone(),
                trusted_subjects: vec![],
                trusted_roles: vec![ROLE_A.into()],
            },
        ],
    )
    .await;
    let kube = KubeApiServer::start().await;
    let bucket = s3.bucket("irsa").await;
    for (ns, role) in [
        ("team-a", Some(ROLE_A)),
        ("team-b", Some(ROLE_A)),
        ("team-c", None),
    ] {
        kube.seed(repositories(ns, &server_repo(&s3, &bucket, None)));
        let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "gc", "namespace": ns}});
        if let Some(r) = role {
            sa["metadata"]["annotations"] = json!({"eks.amazonaws.com/role-arn": r});
        }
        kube.seed(sa);
    }
    IdentityEnv {
        kube,
        s3,
        sts,
        bucket,
    }
}

impl IdentityEnv {
    fn workflow(&self, ns: &str, arts: Vec<Value>) -> Wf {
        let now = jiff::Timestamp::now().to_string();
        workflow(ns, "w")
            .status_repo(server_repo(&self.s3, &self.bucket, None))
            .set(&["spec", "artifactGC", "serviceAccountName"], json!("gc"))
            .set(&["status", "finishedAt"], json!(now))
            .node("w-1", "main", arts)
    }

    async fn start(&self, policy_text: &str) -> ControllerHandle {
        let config = ControllerConfig {
            admin_addr: ([127, 0, 0, 1], 0).into(),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            policy: policy(policy_text),
            sts: StsSettings {
                endpoint: Some(self.sts.url.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        artgc::controller::start(self.kube.client(), config)
            .await
            .expect("controller starts")
    }

    fn get(&self, ns: &str) -> Value {
        self.kube
            .get("argoproj.io/v1alpha1", "Workflow", Some(ns), "w")
            .expect("workflow")
    }
}

/// The right account deletes (through its role, and a `roleARN` assumed with it); an account
/// whose role does not trust it, or that has no role, is refused; nothing acts as artgc itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_gc_service_account_deletes_and_no_other() {
    let e = identity_env().await;
    for k in [
        "team-a/out.tgz",
        "team-a/report.csv",
        "team-b/out.tgz",
        "team-c/out.tgz",
    ] {
        e.s3.put(&e.bucket, k, "x").await;
    }
    let mut with_role = full(
        "report",
        &e.s3.endpoint,
        &e.bucket,
        "team-a/report.csv",
        "x",
    );
    let loc = with_role["s3"].as_object_mut().unwrap();
    loc.remove("accessKeySecret");
    loc.remove("secretKeySecret");
    loc.insert("roleARN".into(), json!(ROLE_B));
    loc.insert("region".into(), json!(e.s3.region));
    e.kube.seed(
        e.workflow(
            "team-a",
            vec![
                with_strategy(key_only("out", "team-a/out.tgz"), COMPLETION),
                with_strategy(with_role, COMPLETION),
            ],
        )
        .0,
    );
    for ns in ["team-b", "team-c"] {
        let key = format!("{ns}/out.tgz");
        e.kube.seed(
            e.workflow(ns, vec![with_strategy(key_only("out", &key), COMPLETION)])
                .0,
        );
    }
    let ctl = e
        .start("defaults:\n  identities: [secret, serviceAccount]\n")
        .await;
    until("team-a collected", async || {
        processed(&e.get("team-a"), COMPLETION)
    })
    .await;
    until("team-b and team-c report", async || {
        gc_condition(&e.get("team-b")).is_some() && gc_condition(&e.get("team-c")).is_some()
    })
    .await;
    ctl.shutdown().await;
    assert_eq!(
        e.s3.keys(&e.bucket).await,
        ["team-b/out.tgz", "team-c/out.tgz"]
    );
    let b = gc_condition(&e.get("team-b")).unwrap();
    assert!(
        b.contains("(credentials)") && b.contains("AssumeRoleWithWebIdentity"),
        "{b}"
    );
    let c = gc_condition(&e.get("team-c")).unwrap();
    assert!(
        c.contains("(identity)") && c.contains("eks.amazonaws.com/role-arn"),
        "{c}"
    );
    let calls = e.sts.calls();
    let granted: Vec<_> = calls
        .iter()
        .filter(|c| c.granted)
        .map(|c| (c.action.as_str(), c.role.as_str(), c.caller.as_str()))
        .collect();
    assert!(granted.contains(&(
        "AssumeRoleWithWebIdentity",
        ROLE_A,
        "system:serviceaccount:team-a:gc"
    )));
    assert!(granted.contains(&("AssumeRole", ROLE_B, ROLE_A)));
    assert!(
        calls
            .iter()
            .all(|c| c.granted || c.caller == "system:serviceaccount:team-b:gc"),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.caller.contains("team-c")),
        "no token is exchanged for an account without a role"
    );
}

/// Without the operator's grant, no namespace acts as its service account: nothing is minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_are_used_only_where_the_policy_enables_them() {
    let e = identity_env().await;
    e.s3.put(&e.bucket, "team-a/out.tgz", "x").await;
    e.kube.seed(
        e.workflow(
            "team-a",
            vec![with_strategy(key_only("out", "team-a/out.tgz"), COMPLETION)],
        )
        .0,
    );
    let ctl = e.start("defaults:\n  identities: [secret]\n").await;
    until("team-a reports", async || {
        gc_condition(&e.get("team-a")).is_some()
    })
    .await;
    ctl.shutdown().await;
    let c = gc_condition(&e.get("team-a")).unwrap();
    assert!(c.contains("(identity)"), "{c}");
    assert!(e.sts.calls().is_empty());
    let tokens = e
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/token"))
        .count();
    assert_eq!(tokens, 0, "no token minted");
    assert_eq!(e.s3.keys(&e.bucket).await, ["team-a/out.tgz"]);
}

/// Every deletion request leaves one audit record per workflow: who, where, what, as whom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delete_request_is_audited() {
    let srv = S3Server::start().await;
    let b = srv.bucket("audit").await;
    for k in ["w/a.tgz", "w/dir/1", "w/dir/2"] {
        srv.put(&b, k, "12345").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            on_server(&srv.region, &srv.endpoint, "file", &b, "w/a.tgz", "s3"),
            on_server(&srv.region, &srv.endpoint, "dir", &b, "w/dir/", "s3"),
        ],
    );
    let items = vec![
        w.0,
        secret("ns", "s3", &srv.access_key, &srv.secret_key),
        repositories("ns", &server_repo(&srv, &b, Some("s3"))),
    ];
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .unwrap();
    std::fs::write(dir.path().join("objects.json"), text).unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_artgc"))
            .env("ARTGC_ALLOW_LOOPBACK", "true")
            .args([
                "purge",
                "-f",
                &path,
                "--yes",
                "--log-format",
                "json",
                "--log-level",
                "artgc::audit=info",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "artgc::audit")
        .collect();
    assert_eq!(records.len(), 1, "one request, one workflow: {records:?}");
    let f = &records[0]["fields"];
    assert_eq!(f["namespace"], "ns");
    assert_eq!(f["workflow"], "w");
    assert_eq!(f["uid"], "uid-w");
    assert_eq!(f["bucket"], b.as_str());
    assert_eq!(f["keys"], 3);
    assert_eq!(f["bytes"], 15);
    assert_eq!(f["first_key"], "w/a.tgz");
    assert_eq!(f["last_key"], "w/dir/2");
    assert_eq!(f["failed"], 0);
    let arts = f["artifacts"].as_str().unwrap();
    assert!(
        arts.contains("n1/file") && arts.contains("n1/dir"),
        "{arts}"
    );
    let identity = f["identity"].as_str().unwrap();
    assert!(identity.starts_with("secret s3 (key id "), "{identity}");
    assert!(
        !identity.contains(&srv.secret_key),
        "no secret in the audit trail"
    );
    assert!(f["endpoint"].as_str().unwrap().contains(&srv.endpoint));
}

/// Keys print escaped: a key cannot drive the terminal of whoever reads the table.
#[test]
fn tables_print_keys_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![with_strategy(
            full("a", "minio:9000", "b", "w/\u{1b}[2Jx", "s3"),
            COMPLETION,
        )],
    );
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": [w.0]}))
        .unwrap();
    std::fs::write(dir.path().join("w.json"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_artgc"))
        .args(["plan", "-f", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.stdout.contains(&0x1b), "raw escape in the table");
    assert!(String::from_utf8_lossy(&out.stdout).contains("w/\\u{1b}[2Jx"));
}
