//! Versioned buckets against a real S3 implementation with versioning and Object Lock over
//! HTTP: moto's server (PyPI `moto[server]`, `ARTGC_MOTO_SERVER`; `.ci/run` installs it; s3s-fs
//! and garage have no versioning). By default a delete leaves a delete marker and artgc reports
//! the bytes as hidden; reclaiming deletes exactly the versions the workflow wrote under its
//! artifacts' keys (not a neighbouring key's, not an earlier or later run's version of a fixed
//! key); a version Object Lock protects is kept and reported.

#[path = "../core/tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use artgc::execute::{ArtifactOutcome, Execution, Run, execute};
use artgc::report::Report;
use artgc::store::{ObjectStore, StoreOptions, Versioning};
use artgc_core::plan::{ArtifactRef, GcPlan, ObjectKind};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectLockLegalHoldStatus, ObjectLockMode, VersioningConfiguration,
};
use serde_json::json;
use support::*;

struct Moto {
    child: Child,
    endpoint: String,
    client: Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(key, version id, size)` of every version, delete markers apart, in key order.
type Versions = (Vec<(String, String, i64)>, Vec<String>);

impl Moto {
    async fn start() -> Option<Moto> {
        let bin = artgc_testkit::needed_var(
            "ARTGC_MOTO_SERVER",
            "moto's server: pip install 'moto[server]' (.ci/run does)",
        )?;
        let port = artgc_testkit::free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "moto", "moto", None, None, "test",
            ))
            .build();
        Some(Moto {
            child,
            endpoint,
            client: Client::from_conf(config),
        })
    }

    async fn bucket(&self, name: &str, versioning: Option<BucketVersioningStatus>) {
        self.client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap();
        if let Some(status) = versioning {
            self.client
                .put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(VersioningConfiguration::builder().status(status).build())
                .send()
                .await
                .unwrap();
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: &str) {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }

    async fn versions(&self, bucket: &str) -> Versions {
        let out = self
            .client
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        let mut versions: Vec<_> = out
            .versions()
            .iter()
            .map(|v| {
                (
                    v.key().unwrap().to_string(),
                    v.version_id().unwrap().to_string(),
                    v.size().unwrap_or(0),
                )
            })
            .collect();
        versions.sort();
        let mut markers: Vec<String> = out
            .delete_markers()
            .iter()
            .map(|m| m.key().unwrap().to_string())
            .collect();
        markers.sort();
        (versions, markers)
    }

    /// Keys with a current object.
    async fn visible(&self, bucket: &str) -> Vec<String> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect()
    }
}

/// The current second, as S3 stamps objects (second resolution).
fn second() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap()
}

/// Sleeps into a later second than `t`, by at least `secs` whole seconds.
async fn after(t: jiff::Timestamp, secs: i64) {
    while jiff::Timestamp::now().as_second() < t.as_second() + secs {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn plan(
    moto: &Moto,
    bucket: &str,
    arts: &[(&str, &str)],
    run: (jiff::Timestamp, jiff::Timestamp),
) -> GcPlan {
    let arts = arts
        .iter()
        .map(|(name, key)| on_server("us-east-1", &moto.endpoint, name, bucket, key, "s3"))
        .collect();
    let w = workflow("ns", "w")
        .node("n1", "t", arts)
        .set(&["status", "startedAt"], json!(run.0.to_string()))
        .set(&["status", "finishedAt"], json!(run.1.to_string()));
    plan_due(vec![w], vec![secret("ns", "s3", "moto", "moto")])
}

async fn run(plan: &GcPlan, dry_run: bool, reclaim: bool) -> Execution {
    let opts = StoreOptions {
        max_attempts: 2,
        // moto's clock is this machine's: the run's window is exact.
        clock_skew: Duration::ZERO,
        reclaim_versions: reclaim,
        ..Default::default()
    };
    let run = if dry_run { Run::DRY_RUN } else { Run::DELETE };
    execute(plan, &ObjectStore::new(opts), run).await
}

fn outcome<'a>(plan: &GcPlan, exec: &'a Execution, name: &str) -> &'a ArtifactOutcome {
    let a = plan.workflows[0]
        .artifacts
        .iter()
        .position(|a| a.name == name)
        .unwrap();
    let o = exec.get(ArtifactRef::new(0, a)).unwrap();
    assert!(o.error.is_none(), "{name}: {:?}", o.error);
    o
}

/// An earlier run's version of the fixed key, the run's writes (a key written twice, a
/// directory, the fixed key, a neighbouring key no artifact names), then a later run's version
/// of the fixed key. Returns the run's (start, finish).
async fn history(moto: &Moto, b: &str) -> (jiff::Timestamp, jiff::Timestamp) {
    moto.put(b, "shared/latest.csv", "earlier run").await;
    let before = second();
    after(before, 2).await;
    let started = second();
    moto.put(b, "runs/w/out.tgz", "first attempt").await;
    moto.put(b, "runs/w/out.tgz", "second attempt!").await;
    moto.put(b, "runs/w/dir/a", "aaaa").await;
    moto.put(b, "runs/w/dir/b", "bbbbbb").await;
    moto.put(b, "runs/w/out.tgz.bak", "neighbour").await;
    moto.put(b, "shared/latest.csv", "this run").await;
    let finished = second() + jiff::SignedDuration::from_secs(1);
    after(finished, 2).await;
    moto.put(b, "shared/latest.csv", "a later run").await;
    (started, finished)
}

const ARTS: [(&str, &str); 3] = [
    ("file", "runs/w/out.tgz"),
    ("dir", "runs/w/dir/"),
    ("fixed", "shared/latest.csv"),
];

#[ignore = "needs moto's S3 server: ARTGC_MOTO_SERVER (.ci/run installs it), then cargo test -- --include-ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_versioned_bucket_hides_bytes_and_reports_them() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let b = "hide";
    moto.bucket(b, Some(BucketVersioningStatus::Enabled)).await;
    let run_window = history(&moto, b).await;
    let before = moto.versions(b).await;
    let p = plan(&moto, b, &ARTS, run_window);
    let exec = run(&p, false, false).await;

    let file = outcome(&p, &exec, "file");
    assert_eq!(file.versioning, Some(Versioning::Enabled));
    assert_eq!((file.objects, file.bytes, file.hidden_bytes), (1, 0, 15));
    let dir = outcome(&p, &exec, "dir");
    assert_eq!(
        (dir.kind, dir.objects, dir.bytes, dir.hidden_bytes),
        (Some(ObjectKind::Directory), 2, 0, 10)
    );
    // The fixed key's current version is the later run's: kept, nothing hidden.
    let fixed = outcome(&p, &exec, "fixed");
    assert_eq!(
        (fixed.written_after, fixed.objects, fixed.hidden_bytes),
        (1, 0, 0)
    );
    // Every version is still there; the deleted keys got delete markers.
    let (versions, markers) = moto.versions(b).await;
    assert_eq!(versions, before.0);
    assert_eq!(markers, ["runs/w/dir/a", "runs/w/dir/b", "runs/w/out.tgz"]);
    assert_eq!(
        moto.visible(b).await,
        ["runs/w/out.tgz.bak", "shared/latest.csv"]
    );

    let report = Report::new(&p, Some(&exec), false);
    assert_eq!(report.totals.bytes_reclaimed, Some(0));
    assert_eq!(report.totals.bytes_hidden, Some(25));
    let place = format!("{}/{b} (enabled)", moto.endpoint);
    assert_eq!(
        report.totals.versioned_buckets,
        std::slice::from_ref(&place)
    );
    let mut table = Vec::new();
    report.write_table(&mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("HIDDEN"), "{table}");
    assert!(
        table.contains(&format!(
            "25 B hidden behind delete markers, still stored: versioned bucket(s) {place}"
        )),
        "{table}"
    );

    // An unversioned bucket (never enabled): freed, as before.
    let plain = "plain";
    moto.bucket(plain, None).await;
    moto.put(plain, "runs/w/out.tgz", "gone for good").await;
    let p = plan(
        &moto,
        plain,
        &ARTS[..1],
        (
            second() - jiff::SignedDuration::from_secs(5),
            second() + jiff::SignedDuration::from_secs(1),
        ),
    );
    let exec = run(&p, false, false).await;
    let file = outcome(&p, &exec, "file");
    assert_eq!(file.versioning, Some(Versioning::Off));
    assert_eq!((file.bytes, file.hidden_bytes), (13, 0));
}

/// A Workflow's author writes its status: one claiming it ran from 2000 to 2099 must not get
/// every version of its fixed key (an earlier run's, a later run's current one) deleted. The
/// window is bounded by the object's creation (the API server's) and artgc's record of when it
/// saw the workflow finished; times that contradict them refuse reclaim, and the report says
/// so; the later run's current version is kept as written after the workflow.
#[ignore = "needs moto's S3 server: ARTGC_MOTO_SERVER (.ci/run installs it), then cargo test -- --include-ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn author_written_run_times_never_widen_version_reclaim() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let b = "forged";
    moto.bucket(b, Some(BucketVersioningStatus::Enabled)).await;
    let (created, seen) = history(&moto, b).await;
    let (before, _) = moto.versions(b).await;
    let arts = ARTS
        .iter()
        .map(|(name, key)| on_server("us-east-1", &moto.endpoint, name, b, key, "s3"))
        .collect();
    let w = workflow("ns", "w")
        .node("n1", "t", arts)
        .set(
            &["metadata", "creationTimestamp"],
            json!(created.to_string()),
        )
        .set(
            &["metadata", "annotations"],
            json!({"artgc.io/finished-seen": seen.to_string()}),
        )
        .set(&["status", "startedAt"], json!("2000-01-01T00:00:00Z"))
        .set(&["status", "finishedAt"], json!("2099-01-01T00:00:00Z"));
    let p = plan_due(vec![w], vec![secret("ns", "s3", "moto", "moto")]);
    let exec = run(&p, false, true).await;
    for (name, _) in ARTS {
        let o = outcome(&p, &exec, name);
        assert_eq!(o.versions_deleted, 0, "{name}: no version reclaimed");
        assert!(
            o.reclaim_refused
                .as_deref()
                .is_some_and(|r| r.contains("before the Workflow was created")),
            "{name}: {:?}",
            o.reclaim_refused
        );
    }
    let fixed = outcome(&p, &exec, "fixed");
    assert_eq!(
        (fixed.written_after, fixed.objects),
        (1, 0),
        "the later run's current version is kept: finishedAt is bounded by the record"
    );
    let (after, _) = moto.versions(b).await;
    assert_eq!(after, before, "every version stays");
    assert!(
        moto.visible(b)
            .await
            .contains(&"shared/latest.csv".to_string())
    );
    let report = Report::new(&p, Some(&exec), false);
    let fixed_row = &report.workflows[0].artifacts[2];
    assert!(
        fixed_row.reason.contains("versions not reclaimed"),
        "{}",
        fixed_row.reason
    );
}

/// S3 keys are literal: Argo writes keys with a leading `/` (a `keyFormat` starting with `/`)
/// or `//` and deletes them as written. artgc deletes exactly those objects (once refused as
/// `unsafe_key`, holding the finalizer for good), never the slash-less neighbours, and a
/// repeat pass deletes nothing more. moto keeps object names literally (s3s-fs maps keys onto
/// paths, so it cannot tell `/a` from `a`).
#[ignore = "needs moto's S3 server: ARTGC_MOTO_SERVER (.ci/run installs it), then cargo test -- --include-ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_a_leading_or_double_slash_are_deleted_as_written() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let b = "slashes";
    moto.bucket(b, None).await;
    for k in [
        "/runs/w/out.tgz",
        "runs/w/out.tgz",
        "runs//w/x.tgz",
        "runs/w/x.tgz",
        "/runs/w/dir/a",
        "runs/w/dir/a",
    ] {
        moto.put(b, k, "x").await;
    }
    let window = (
        second() - jiff::SignedDuration::from_secs(5),
        second() + jiff::SignedDuration::from_secs(2),
    );
    let arts = [
        ("lead", "/runs/w/out.tgz"),
        ("double", "runs//w/x.tgz"),
        ("dir", "/runs/w/dir/"),
    ];
    let p = plan(&moto, b, &arts, window);
    for (name, _) in arts {
        let a = p.workflows[0]
            .artifacts
            .iter()
            .find(|a| a.name == name)
            .unwrap();
        assert_eq!(a.decision.category(), "due", "{name}: {:?}", a.decision);
    }
    let exec = run(&p, false, false).await;
    for (name, _) in arts {
        assert_eq!(outcome(&p, &exec, name).objects, 1, "{name}");
    }
    let mut left = moto.visible(b).await;
    left.sort();
    assert_eq!(left, ["runs/w/dir/a", "runs/w/out.tgz", "runs/w/x.tgz"]);
    let again = run(&p, false, false).await;
    for (name, _) in arts {
        assert_eq!(
            outcome(&p, &again, name).objects,
            0,
            "{name}: a repeat deletes nothing"
        );
    }
    assert_eq!(moto.visible(b).await.len(), 3);
}

#[ignore = "needs moto's S3 server: ARTGC_MOTO_SERVER (.ci/run installs it), then cargo test -- --include-ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaiming_deletes_exactly_the_versions_the_workflow_wrote() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let b = "reclaim";
    moto.bucket(b, Some(BucketVersioningStatus::Enabled)).await;
    let run_window = history(&moto, b).await;
    let before = moto.versions(b).await.0;
    let p = plan(&moto, b, &ARTS, run_window);

    // A dry run says what would go and deletes nothing.
    let dry = run(&p, true, true).await;
    let file = outcome(&p, &dry, "file");
    assert_eq!(
        (file.versions_deleted, file.bytes, file.hidden_bytes),
        (2, 28, 0)
    );
    assert_eq!(moto.versions(b).await.0, before);
    assert!(moto.versions(b).await.1.is_empty());

    let exec = run(&p, false, true).await;
    let file = outcome(&p, &exec, "file");
    assert_eq!(
        (
            file.objects,
            file.versions_deleted,
            file.bytes,
            file.hidden_bytes
        ),
        (1, 2, 28, 0)
    );
    // The report says which facts bounded the run's window (here the status's times only: the
    // objects were written from files, with no creationTimestamp and no record of artgc's).
    let report = Report::new(&p, Some(&exec), false);
    assert!(
        report.workflows[0].artifacts[0]
            .reason
            .contains("run window: the status's startedAt and finishedAt only"),
        "{}",
        report.workflows[0].artifacts[0].reason
    );
    let dir = outcome(&p, &exec, "dir");
    assert_eq!(
        (dir.versions_deleted, dir.bytes, dir.hidden_bytes),
        (2, 10, 0)
    );
    let fixed = outcome(&p, &exec, "fixed");
    assert_eq!(
        (fixed.written_after, fixed.versions_deleted, fixed.bytes),
        (1, 1, 8)
    );

    let (versions, markers) = moto.versions(b).await;
    let left: Vec<(&str, i64)> = versions.iter().map(|(k, _, s)| (k.as_str(), *s)).collect();
    assert_eq!(
        left,
        [
            ("runs/w/out.tgz.bak", 9),
            ("shared/latest.csv", 11),
            ("shared/latest.csv", 11)
        ],
        "the neighbour's version and the earlier and later runs' versions of the fixed key stay"
    );
    let fixed_sizes: Vec<i64> = before
        .iter()
        .filter(|(k, _, _)| k == "shared/latest.csv")
        .map(|(_, _, s)| *s)
        .collect();
    assert_eq!(fixed_sizes.len(), 3);
    // The run's keys stay deleted (their markers), the later run's version is current.
    assert_eq!(markers, ["runs/w/dir/a", "runs/w/dir/b", "runs/w/out.tgz"]);
    assert_eq!(
        moto.visible(b).await,
        ["runs/w/out.tgz.bak", "shared/latest.csv"]
    );
    let current = moto
        .client
        .get_object()
        .bucket(b)
        .key("shared/latest.csv")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&current[..], b"a later run");

    // A repeat pass deletes nothing more.
    let again = run(&p, false, true).await;
    for name in ["file", "dir", "fixed"] {
        let o = outcome(&p, &again, name);
        assert_eq!(
            (o.objects, o.versions_deleted, o.bytes),
            (0, 0, 0),
            "{name}"
        );
    }
    assert_eq!(moto.versions(b).await.0, versions);
}

#[ignore = "needs moto's S3 server: ARTGC_MOTO_SERVER (.ci/run installs it), then cargo test -- --include-ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_version_is_kept_and_reported_never_bypassed() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let b = "locked";
    moto.client
        .create_bucket()
        .bucket(b)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let started = second();
    let until = aws_sdk_s3::primitives::DateTime::from_secs(started.as_second() + 86_400);
    moto.client
        .put_object()
        .bucket(b)
        .key("runs/w/retained.tgz")
        .body(b"governance".to_vec().into())
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(until)
        .send()
        .await
        .unwrap();
    moto.client
        .put_object()
        .bucket(b)
        .key("runs/w/held.tgz")
        .body(b"legal hold".to_vec().into())
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap();
    moto.put(b, "runs/w/free.tgz", "free").await;
    let finished = second() + jiff::SignedDuration::from_secs(1);
    let p = plan(
        &moto,
        b,
        &[
            ("retained", "runs/w/retained.tgz"),
            ("held", "runs/w/held.tgz"),
            ("free", "runs/w/free.tgz"),
        ],
        (started, finished),
    );
    after(finished, 1).await;
    let exec = run(&p, false, true).await;
    for name in ["retained", "held"] {
        let o = outcome(&p, &exec, name);
        assert_eq!(
            (
                o.objects,
                o.locked,
                o.versions_deleted,
                o.bytes,
                o.hidden_bytes
            ),
            (1, 1, 0, 0, 10),
            "{name}"
        );
    }
    let free = outcome(&p, &exec, "free");
    assert_eq!((free.locked, free.versions_deleted, free.bytes), (0, 1, 4));
    let (versions, markers) = moto.versions(b).await;
    let keys: Vec<&str> = versions.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["runs/w/held.tgz", "runs/w/retained.tgz"],
        "locked versions stay"
    );
    assert_eq!(
        markers,
        ["runs/w/free.tgz", "runs/w/held.tgz", "runs/w/retained.tgz"]
    );
    assert!(moto.visible(b).await.is_empty());
    let report = Report::new(&p, Some(&exec), false);
    let mut table = Vec::new();
    report.write_table(&mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("1 version(s) locked (Object Lock), kept"),
        "{table}"
    );
}
