//! Deleting for real: plans executed against a real S3 server over HTTP (s3s-fs in this process
//! with SigV4 checks, or the store named by ARTGC_TEST_S3_ENDPOINT, garage in CI).

#[path = "../core/tests/support/mod.rs"]
mod support;

use artgc::execute::{ArtifactOutcome, Execution, Run, execute};
use artgc::store::{ObjectStore, StoreOptions};
use artgc_core::plan::{Decision, GcPlan, ObjectKind};
use artgc_testkit::S3Server;
use serde_json::Value;
use support::*;

/// An artifact with its own complete location on the test server.
fn on(srv: &S3Server, name: &str, bucket: &str, key: &str, secret: &str) -> Value {
    on_server(&srv.region, &srv.endpoint, name, bucket, key, secret)
}

fn good_secret(srv: &S3Server) -> Value {
    secret("ns", "s3", &srv.access_key, &srv.secret_key)
}

async fn run(plan: &GcPlan, dry_run: bool) -> Execution {
    run_with(plan, dry_run, StoreOptions::default()).await
}

async fn run_with(plan: &GcPlan, dry_run: bool, opts: StoreOptions) -> Execution {
    let opts = StoreOptions {
        max_attempts: 2,
        ..opts
    };
    let run = if dry_run { Run::DRY_RUN } else { Run::DELETE };
    execute(plan, &ObjectStore::new(opts), run).await
}

fn outcome<'a>(plan: &GcPlan, exec: &'a Execution, wf: &str, name: &str) -> &'a ArtifactOutcome {
    let w = plan.workflows.iter().position(|w| w.name == wf).unwrap();
    let a = plan.workflows[w]
        .artifacts
        .iter()
        .position(|a| a.name == name)
        .unwrap();
    exec.get(artgc_core::plan::ArtifactRef::new(w, a))
        .unwrap_or_else(|| panic!("no outcome for {wf}/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_are_deleted_within_their_prefix() {
    let srv = S3Server::start().await;
    let b = srv.bucket("files").await;
    for (k, body) in [
        ("w/a.tgz", "0123456789"),
        ("w/a.tgz.bak", "sibling"),
        ("w/dir/1", "11111"),
        ("w/dir/sub/2", "22222"),
        ("w/dir2/x", "neighbour"),
        ("w/nodir/f1", "abc"),
        ("w/nodir/f2", "de"),
        ("w/nodirx", "neighbour"),
        ("solo/nodir/f", "xyz"),
    ] {
        srv.put(&b, k, body).await;
    }
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            on(&srv, "file", &b, "w/a.tgz", "s3"),
            on(&srv, "dir", &b, "w/dir/", "s3"),
            // A directory uploaded with `archive: none` whose key lacks the trailing slash (Argo
            // leaves these behind).
            archive_none(on(&srv, "nodir", &b, "w/nodir", "s3")),
        ],
    );
    // Alone in its workflow, the artifact is probed by itself rather than by a shared listing.
    let solo = workflow("ns", "solo").node(
        "n1",
        "t",
        vec![archive_none(on(&srv, "nodir", &b, "solo/nodir", "s3"))],
    );
    let plan = plan_due(vec![w, solo], vec![good_secret(&srv)]);
    let exec = run(&plan, false).await;

    let solo = outcome(&plan, &exec, "solo", "nodir");
    if srv.kind == "s3s-fs" {
        // s3s-fs answers HEAD on a folder with a 500: a failed probe is no evidence of a
        // directory, so nothing is listed or deleted and the error stands.
        let e = solo.error.as_ref().expect("HEAD fails on s3s-fs");
        assert_eq!(e.category(), "server_error", "{e}");
    } else {
        assert_eq!(
            (solo.kind, solo.objects, solo.bytes),
            (Some(ObjectKind::Directory), 1, 3),
            "{:?}",
            solo.error
        );
    }
    let file = outcome(&plan, &exec, "w", "file");
    assert!(file.error.is_none(), "{:?}", file.error);
    assert_eq!(
        (file.kind, file.objects, file.bytes),
        (Some(ObjectKind::File), 1, 10)
    );
    let dir = outcome(&plan, &exec, "w", "dir");
    assert_eq!(
        (dir.kind, dir.objects, dir.bytes),
        (Some(ObjectKind::Directory), 2, 10)
    );
    let nodir = outcome(&plan, &exec, "w", "nodir");
    assert!(nodir.error.is_none(), "{:?}", nodir.error);
    assert_eq!(
        (nodir.kind, nodir.objects, nodir.bytes),
        (Some(ObjectKind::Directory), 2, 5)
    );
    let mut left = vec!["w/a.tgz.bak", "w/dir2/x", "w/nodirx"];
    if srv.kind == "s3s-fs" {
        left.insert(0, "solo/nodir/f");
    }
    assert_eq!(srv.keys(&b).await, left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_more_than_a_thousand_objects() {
    let srv = S3Server::start().await;
    let b = srv.bucket("big").await;
    let objects: Vec<_> = (0..2500)
        .map(|i| (format!("big/out/{i:05}"), vec![b'x'; 3]))
        .collect();
    srv.put_many(&b, objects, 32).await;
    srv.put(&b, "big/keep", "k").await;
    let w = workflow("ns", "w").node("n1", "t", vec![on(&srv, "out", &b, "big/out/", "s3")]);
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let exec = run(&plan, false).await;
    let out = outcome(&plan, &exec, "w", "out");
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!((out.objects, out.bytes), (2500, 7500));
    assert_eq!(srv.keys(&b).await, vec!["big/keep"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_one_bucket_and_the_other_is_still_cleaned() {
    let srv = S3Server::start().await;
    let (good_b, bad_b) = (srv.bucket("good").await, srv.bucket("denied").await);
    srv.put(&good_b, "w/a", "a").await;
    srv.put(&bad_b, "w/b", "b").await;
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            on(&srv, "good", &good_b, "w/a", "s3"),
            on(&srv, "bad", &bad_b, "w/b", "wrong"),
        ],
    );
    let wrong = secret("ns", "wrong", &srv.access_key, "not-the-secret");
    let plan = plan_due(vec![w], vec![good_secret(&srv), wrong]);
    let exec = run(&plan, false).await;
    let bad = outcome(&plan, &exec, "w", "bad");
    let err = bad.error.as_ref().expect("403 must fail the artifact");
    assert_eq!(err.category(), "access_denied", "{err}");
    assert_eq!(bad.objects, 0);
    assert!(outcome(&plan, &exec, "w", "good").error.is_none());
    assert_eq!(srv.keys(&good_b).await, Vec::<String>::new());
    assert_eq!(srv.keys(&bad_b).await, vec!["w/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_with_its_own_category() {
    let srv = S3Server::start().await;
    let name = artgc_testkit::unique_bucket("absent");
    let w = workflow("ns", "w").node("n1", "t", vec![on(&srv, "a", &name, "w/a", "s3")]);
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let exec = run(&plan, false).await;
    let err = outcome(&plan, &exec, "w", "a")
        .error
        .clone()
        .expect("must fail");
    assert_eq!(err.category(), "no_such_bucket", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_count_as_deleted() {
    let srv = S3Server::start().await;
    let b = srv.bucket("gone").await;
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            on(&srv, "file", &b, "w/never-written.tgz", "s3"),
            on(&srv, "dir", &b, "w/empty/", "s3"),
        ],
    );
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let exec = run(&plan, false).await;
    for name in ["file", "dir"] {
        let o = outcome(&plan, &exec, "w", name);
        assert!(
            o.error.is_none() && o.absent && o.objects == 0,
            "{name}: {o:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_and_deletes_nothing() {
    let srv = S3Server::start().await;
    let b = srv.bucket("dry").await;
    srv.put(&b, "w/d/1", "1234").await;
    srv.put(&b, "w/d/2", "5678").await;
    let w = workflow("ns", "w").node("n1", "t", vec![on(&srv, "d", &b, "w/d/", "s3")]);
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let exec = run(&plan, true).await;
    let o = outcome(&plan, &exec, "w", "d");
    assert_eq!((o.objects, o.bytes), (2, 8));
    assert_eq!(srv.keys(&b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_artifact_object_bound_fails_before_deleting_anything() {
    let srv = S3Server::start().await;
    let b = srv.bucket("bound").await;
    for i in 0..5 {
        srv.put(&b, &format!("w/d/{i}"), "x").await;
    }
    let w = workflow("ns", "w").node("n1", "t", vec![on(&srv, "d", &b, "w/d/", "s3")]);
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let opts = StoreOptions {
        max_objects_per_artifact: 3,
        ..Default::default()
    };
    let exec = run_with(&plan, false, opts).await;
    let err = outcome(&plan, &exec, "w", "d")
        .error
        .clone()
        .expect("bound must fail it");
    assert_eq!(err.category(), "too_many_objects");
    assert_eq!(srv.keys(&b).await.len(), 5);
}

/// A store answers a listing page far larger than any honest one: the body is bounded before
/// the SDK reads it whole, the artifact fails with the
/// reason, and nothing is deleted. Under the bound the same listing works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_over_the_bound_is_never_read_whole() {
    let srv = S3Server::start().await;
    let b = srv.bucket("huge").await;
    for i in 0..40 {
        srv.put(&b, &format!("w/d/{i:03}-{}", "x".repeat(100)), "x")
            .await;
    }
    let w = workflow("ns", "w").node("n1", "t", vec![on(&srv, "d", &b, "w/d/", "s3")]);
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let small = StoreOptions {
        max_response_bytes: 2048,
        ..Default::default()
    };
    let exec = run_with(&plan, false, small).await;
    let err = outcome(&plan, &exec, "w", "d")
        .error
        .clone()
        .expect("the bound must fail it");
    let chain = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        chain.contains("bound") || chain.contains("length limit"),
        "the reason is given: {chain}"
    );
    assert_eq!(srv.keys(&b).await.len(), 40, "nothing deleted");
    let exec = run(&plan, false).await;
    assert_eq!(outcome(&plan, &exec, "w", "d").objects, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_artifacts_are_never_touched() {
    let srv = S3Server::start().await;
    let b = srv.bucket("keep").await;
    for k in ["a/never", "a/shared", "b/running"] {
        srv.put(&b, k, "x").await;
    }
    let a = workflow("ns", "a").node(
        "n1",
        "t",
        vec![
            with_strategy(full("never", &srv.endpoint, &b, "a/never", "s3"), "Never"),
            on(&srv, "shared", &b, "a/shared", "s3"),
        ],
    );
    let other = workflow("ns", "other").node(
        "n1",
        "t",
        vec![with_strategy(
            full("uses", &srv.endpoint, &b, "a/shared", "s3"),
            "Never",
        )],
    );
    let running =
        workflow("ns", "b")
            .running()
            .node("n1", "t", vec![on(&srv, "r", &b, "b/running", "s3")]);
    let plan = plan_due(vec![a, other, running], vec![good_secret(&srv)]);
    assert!(
        plan.artifacts()
            .all(|(_, a)| a.decision != Decision::Delete)
    );
    let exec = run(&plan, false).await;
    assert!(exec.outcomes.is_empty());
    assert_eq!(srv.keys(&b).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_common_folder_is_split_instead_of_listed_whole() {
    let srv = S3Server::start().await;
    let proxy = artgc_testkit::FaultProxy::start(&srv.endpoint).await;
    let b = srv.bucket("crowd").await;
    // Two artifacts under w/, next to 450 objects that are none of theirs: more than a shared
    // listing may run through for two artifacts.
    let crowd: Vec<_> = (0..450)
        .map(|i| (format!("w/other/{i:04}"), b"o".to_vec()))
        .collect();
    srv.put_many(&b, crowd, 32).await;
    srv.put(&b, "w/a/file.tgz", "abc").await;
    srv.put(&b, "w/b/1", "12").await;
    let art = |name: &str, key: &str| on_server(&srv.region, &proxy.endpoint, name, &b, key, "s3");
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![art("file", "w/a/file.tgz"), art("dir", "w/b/")],
    );
    let plan = plan_due(vec![w], vec![good_secret(&srv)]);
    let exec = run(&plan, false).await;
    let file = outcome(&plan, &exec, "w", "file");
    assert_eq!(
        (file.kind, file.objects, file.bytes),
        (Some(ObjectKind::File), 1, 3),
        "{:?}",
        file.error
    );
    let dir = outcome(&plan, &exec, "w", "dir");
    assert_eq!(
        (dir.kind, dir.objects, dir.bytes),
        (Some(ObjectKind::Directory), 1, 2),
        "{:?}",
        dir.error
    );
    assert_eq!(srv.keys(&b).await.len(), 450);
    let log = proxy.log();
    let seen = |method: &str, needle: &str| {
        log.iter()
            .any(|r| r.method == method && r.path_and_query.contains(needle))
    };
    let listed = |prefix: &str| {
        let param = format!("prefix={prefix}");
        log.iter()
            .any(|r| r.method == "GET" && r.path_and_query.split(['?', '&']).any(|p| p == param))
    };
    assert!(listed("w%2F"), "the shared listing was tried: {log:?}");
    assert!(
        seen("HEAD", "/w/a/file.tgz"),
        "then the file was probed alone: {log:?}"
    );
    assert!(
        listed("w%2Fb%2F"),
        "and the directory listed alone: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_secret_makes_a_private_ca_trusted() {
    let (srv, ca_pem) = S3Server::start_local_tls().await;
    let b = srv.bucket("tls").await;
    srv.put(&b, "w/a", "x").await;
    srv.put(&b, "w/b", "y").await;
    let tls_art = |name: &str, key: &str, ca: bool| {
        let mut a = on(&srv, name, &b, key, "s3");
        a["s3"]["insecure"] = serde_json::json!(false);
        if ca {
            a["s3"]["caSecret"] = serde_json::json!({"name": "ca", "key": "ca.crt"});
        }
        a
    };
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            tls_art("trusted", "w/a", true),
            tls_art("untrusted", "w/b", false),
        ],
    );
    let ca = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ca", "namespace": "ns"}, "stringData": {"ca.crt": ca_pem}});
    let plan = plan_due(vec![w], vec![good_secret(&srv), ca]);
    let exec = run(&plan, false).await;
    let trusted = outcome(&plan, &exec, "w", "trusted");
    assert!(trusted.error.is_none(), "{:?}", trusted.error);
    assert_eq!(trusted.objects, 1);
    let untrusted = outcome(&plan, &exec, "w", "untrusted");
    assert_eq!(
        untrusted.error.as_ref().map(|e| e.category()),
        Some("network"),
        "{untrusted:?}"
    );
    assert_eq!(srv.keys(&b).await, vec!["w/b"]);
}

/// SSE-C (a customer key in `encryptionOptions`): found by listing (HEAD would need the key),
/// deleted without it. Argo's client rules hold first: the key's Secret must exist, TLS is
/// required, and a KMS key cannot be set with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_c_artifacts_are_probed_by_listing_and_argo_s_rules_hold() {
    use artgc_core::plan::Decision;
    use serde_json::json;
    let (srv, ca_pem) = S3Server::start_local_tls().await;
    let b = srv.bucket("ssec").await;
    for k in [
        "w/a.tgz",
        "w/a.tgz.bak",
        "w/d/x.csv",
        "w/d/y.csv",
        "solo/a.tgz",
        "solo/a.tgz.1",
    ] {
        srv.put(&b, k, "x").await;
    }
    let sse = |name: &str, key: &str, enc: serde_json::Value, insecure: bool| {
        let mut a = on(&srv, name, &b, key, "s3");
        a["s3"]["insecure"] = json!(insecure);
        a["s3"]["caSecret"] = json!({"name": "ca", "key": "ca.crt"});
        a["s3"]["encryptionOptions"] = enc;
        a
    };
    let key = json!({"serverSideCustomerKeySecret": {"name": "ssec", "key": "key"}});
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![
            sse("file", "w/a.tgz", key.clone(), false),
            archive_none(sse("dir", "w/d", key.clone(), false)),
            sse("plain-http", "w/e1.tgz", key.clone(), true),
            sse(
                "with-kms",
                "w/e2.tgz",
                json!({"kmsKeyId": "k1", "serverSideCustomerKeySecret": {"name": "ssec", "key": "key"}}),
                false,
            ),
            sse(
                "no-secret",
                "w/e3.tgz",
                json!({"serverSideCustomerKeySecret": {"name": "missing", "key": "key"}}),
                false,
            ),
        ],
    );
    let secret = |name: &str, key: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns"},
               "stringData": {key: value}})
    };
    // Alone in its bucket: probed on its own (a listing from the key, not a HEAD).
    let solo = workflow("ns", "solo").node(
        "n1",
        "t",
        vec![sse("file", "solo/a.tgz", key.clone(), false)],
    );
    let plan = plan_due(
        vec![w, solo],
        vec![
            good_secret(&srv),
            secret("ca", "ca.crt", &ca_pem),
            secret("ssec", "key", "0123456789abcdef0123456789abcdef"),
        ],
    );
    let decision = |name: &str| art(&plan, "w", name).decision.clone();
    let error = |name: &str| match decision(name) {
        Decision::Error(e) => e.to_string(),
        d => panic!("{name}: {d:?}"),
    };
    assert!(error("plain-http").contains("needs TLS"));
    assert!(error("with-kms").contains("cannot be set together"));
    assert!(error("no-secret").contains("serverSideCustomerKeySecret"));
    assert!(art(&plan, "w", "file").customer_key);
    let exec = run(&plan, false).await;
    let file = outcome(&plan, &exec, "w", "file");
    assert!(file.error.is_none(), "{:?}", file.error);
    assert_eq!(file.objects, 1);
    assert_eq!(outcome(&plan, &exec, "w", "dir").objects, 2);
    assert_eq!(outcome(&plan, &exec, "solo", "file").objects, 1);
    assert_eq!(srv.keys(&b).await, ["solo/a.tgz.1", "w/a.tgz.bak"]);
}
