//! Store failures, injected by a proxy in front of a real S3 server: throttling is retried,
//! permanent errors are not, and a store without DeleteObjects gets single deletes.

#[path = "../core/tests/support/mod.rs"]
mod support;

use artgc::execute::{Run, execute};
use artgc::store::{ObjectStore, StoreOptions};
use artgc_core::plan::GcPlan;
use artgc_testkit::{FaultProxy, FaultRule, S3Server};
use support::*;

/// Two file artifacts on `bucket`, reached through `endpoint`.
async fn setup(srv: &S3Server, endpoint: &str) -> (String, GcPlan) {
    let b = srv.bucket("faults").await;
    srv.put(&b, "w/a", "aa").await;
    srv.put(&b, "w/b", "bbb").await;
    let art = |name: &str, key: &str| on_server(&srv.region, endpoint, name, &b, key, "s3");
    let w = workflow("ns", "w").node("n1", "t", vec![art("a", "w/a"), art("b", "w/b")]);
    let plan = plan_due(
        vec![w],
        vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)],
    );
    (b, plan)
}

fn store() -> ObjectStore {
    ObjectStore::new(StoreOptions {
        max_attempts: 4,
        ..Default::default()
    })
}

fn batch_deletes(proxy: &FaultProxy) -> Vec<bool> {
    proxy
        .log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path_and_query.contains("delete"))
        .map(|r| r.injected)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_batches_are_retried_until_they_succeed() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule::batch_delete(503, "SlowDown", 2));
    let exec = execute(&plan, &store(), Run::DELETE).await;
    assert!(
        exec.outcomes.values().all(|o| o.error.is_none()),
        "{:?}",
        exec.outcomes
    );
    assert_eq!(batch_deletes(&proxy), vec![true, true, false]);
    assert!(srv.keys(&b).await.is_empty());
}

/// Every batch delete answered with `status`/`code`: both artifacts must fail with `category`,
/// nothing is deleted, and the store sees `attempts` batch requests.
async fn persistent_fault(status: u16, code: &'static str, category: &str, attempts: usize) {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule::batch_delete(status, code, 100));
    let exec = execute(&plan, &store(), Run::DELETE).await;
    assert_eq!(exec.outcomes.len(), 2);
    for o in exec.outcomes.values() {
        assert_eq!(
            o.error.as_ref().map(|e| e.category()),
            Some(category),
            "{o:?}"
        );
        assert_eq!((o.objects, o.bytes), (0, 0));
    }
    assert_eq!(batch_deletes(&proxy).len(), attempts, "{code}");
    assert_eq!(srv.keys(&b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_beyond_the_budget_fail_the_artifacts() {
    // max_attempts (4) bounds the tries.
    persistent_fault(500, "InternalError", "server_error", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_not_retried() {
    persistent_fault(403, "AccessDenied", "access_denied", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_delete_objects_gets_single_deletes() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule::batch_delete(501, "NotImplemented", 100));
    let exec = execute(&plan, &store(), Run::DELETE).await;
    assert!(
        exec.outcomes.values().all(|o| o.error.is_none()),
        "{:?}",
        exec.outcomes
    );
    assert_eq!(exec.outcomes.values().map(|o| o.bytes).sum::<u64>(), 5);
    let singles = proxy
        .log()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(singles, 2);
    assert!(srv.keys(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reported_throttled_inside_the_response_are_retried() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule::per_key_delete("SlowDown", 1));
    let exec = execute(&plan, &store(), Run::DELETE).await;
    assert!(
        exec.outcomes.values().all(|o| o.error.is_none()),
        "{:?}",
        exec.outcomes
    );
    assert_eq!(batch_deletes(&proxy), vec![true, false]);
    assert!(srv.keys(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_denied_inside_the_response_fail_without_retry() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule::per_key_delete("AccessDenied", 100));
    let exec = execute(&plan, &store(), Run::DELETE).await;
    assert_eq!(exec.outcomes.len(), 2);
    for o in exec.outcomes.values() {
        assert_eq!(
            o.error.as_ref().map(|e| e.category()),
            Some("access_denied"),
            "{o:?}"
        );
    }
    assert_eq!(batch_deletes(&proxy), vec![true]);
    assert_eq!(srv.keys(&b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_deletes_carry_the_content_md5_of_their_body() {
    use base64::Engine;
    use md5::Digest;
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (_, plan) = setup(&srv, &proxy.endpoint).await;
    execute(&plan, &store(), Run::DELETE).await;
    let batch = proxy
        .log()
        .into_iter()
        .find(|r| r.method == "POST" && r.path_and_query.contains("delete"))
        .expect("a batch delete");
    let header = batch
        .headers
        .iter()
        .find(|(k, _)| k == "content-md5")
        .map(|(_, v)| v.clone());
    let expected = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&batch.body));
    assert_eq!(header, Some(expected));
}

/// One due directory artifact, reached through a proxy whose listings never end (always
/// "more", never a key).
async fn endless_directory() -> (S3Server, FaultProxy, GcPlan) {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let b = srv.bucket("endless").await;
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![on_server(
            &srv.region,
            &proxy.endpoint,
            "dir",
            &b,
            "w/dir/",
            "s3",
        )],
    );
    let plan = plan_due(
        vec![w],
        vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)],
    );
    proxy.add_rule(FaultRule::endless_listing(usize::MAX));
    (srv, proxy, plan)
}

/// A store whose listing never ends (always "more", never a key) is cut off after a bounded
/// number of pages: the artifact fails, the pass ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_listing_is_cut_off() {
    let (_srv, proxy, plan) = endless_directory().await;
    let opts = StoreOptions {
        max_objects_per_artifact: 5_000,
        ..Default::default()
    };
    let exec = execute(&plan, &ObjectStore::new(opts), Run::DELETE).await;
    let e = exec
        .get(artgc_core::plan::ArtifactRef::new(0, 0))
        .unwrap()
        .error
        .clone()
        .expect("cut off");
    assert_eq!(e.category(), "endless_listing", "{e}");
    let lists = proxy.log().iter().filter(|r| r.method == "GET").count();
    assert_eq!(lists, 5_000 / 1000 + 3, "pages asked for");
}

/// A listing stops at the next page once the pass is told to stop (shutdown, lost leadership):
/// it does not run on to its page bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_listing_stops_at_the_next_page_when_the_pass_is_stopped() {
    struct StopAfter<'a>(&'a FaultProxy, usize);
    impl artgc::execute::Stop for StopAfter<'_> {
        fn stopped(&self) -> bool {
            self.0.log().iter().filter(|r| r.method == "GET").count() >= self.1
        }
    }
    let (_srv, proxy, plan) = endless_directory().await;
    let opts = StoreOptions {
        max_objects_per_artifact: 100_000,
        ..Default::default()
    };
    let exec = execute(
        &plan,
        &ObjectStore::new(opts),
        Run::DELETE.with_stop(&StopAfter(&proxy, 3)),
    )
    .await;
    let e = exec
        .get(artgc_core::plan::ArtifactRef::new(0, 0))
        .unwrap()
        .error
        .clone()
        .expect("stopped");
    assert_eq!(e.category(), "cancelled", "{e}");
    let lists = proxy.log().iter().filter(|r| r.method == "GET").count();
    assert_eq!(lists, 3, "pages asked for before the stop was seen");
}

/// A slow endpoint holds at most its own places: a fast endpoint's pass, sharing the store,
/// is done long before the slow one's first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_hold_the_fast_ones_places() {
    let srv = S3Server::start().await;
    let slow = FaultProxy::start(&srv.endpoint).await;
    let b = srv.bucket("slowfast").await;
    let mut slow_wfs = Vec::new();
    for i in 0..8 {
        let key = format!("slow/{i}");
        srv.put(&b, &key, "x").await;
        slow_wfs.push(workflow("ns", &format!("s{i}")).node(
            "n1",
            "t",
            vec![on_server(&srv.region, &slow.endpoint, "a", &b, &key, "s3")],
        ));
    }
    srv.put(&b, "fast/a", "x").await;
    let fast_wf = workflow("ns", "fast").node(
        "n1",
        "t",
        vec![on_server(
            &srv.region,
            &srv.endpoint,
            "a",
            &b,
            "fast/a",
            "s3",
        )],
    );
    let creds = vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)];
    let slow_plan = plan_due(slow_wfs, creds.clone());
    let fast_plan = plan_due(vec![fast_wf], creds);
    let store = ObjectStore::new(StoreOptions {
        concurrency: 4,
        endpoint_concurrency: 2,
        ..Default::default()
    });
    let delay = std::time::Duration::from_secs(2);
    slow.set_latency(delay);
    let started = std::time::Instant::now();
    let slow_run = execute(&slow_plan, &store, Run::DELETE);
    let fast_run = async {
        // Let the slow pass take every place it can first.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let exec = execute(&fast_plan, &store, Run::DELETE).await;
        (exec, started.elapsed())
    };
    let (slow_exec, (fast_exec, fast_done)) = tokio::join!(slow_run, fast_run);
    assert!(
        fast_exec
            .get(artgc_core::plan::ArtifactRef::new(0, 0))
            .unwrap()
            .error
            .is_none()
    );
    assert!(
        fast_done < delay,
        "the fast endpoint waited behind the slow one: {fast_done:?}"
    );
    assert!(slow_exec.outcomes.values().all(|o| o.error.is_none()));
    assert!(srv.keys(&b).await.is_empty());
}

/// DeleteObjects batches to one endpoint stay within `delete_concurrency`, whatever the other
/// limits allow: a store deletes fastest with a few at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_batches_to_one_endpoint_stay_within_their_own_limit() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    // One batch per bucket: six batches that the request limits alone would send at once.
    let mut wfs = Vec::new();
    let mut buckets = Vec::new();
    for i in 0..6 {
        let b = srv.bucket("delconc").await;
        srv.put(&b, "k/a", "x").await;
        wfs.push(workflow("ns", &format!("w{i}")).node(
            "n1",
            "t",
            vec![on_server(
                &srv.region,
                &proxy.endpoint,
                "a",
                &b,
                "k/a",
                "s3",
            )],
        ));
        buckets.push(b);
    }
    let plan = plan_due(
        wfs,
        vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)],
    );
    let store = ObjectStore::new(StoreOptions {
        concurrency: 16,
        endpoint_concurrency: 8,
        delete_concurrency: 2,
        ..Default::default()
    });
    proxy.set_latency(std::time::Duration::from_millis(300));
    let exec = execute(&plan, &store, Run::DELETE).await;
    assert!(exec.outcomes.values().all(|o| o.error.is_none()));
    for b in &buckets {
        assert!(srv.keys(b).await.is_empty(), "{b} not emptied");
    }
    assert_eq!(proxy.peak_deletes_in_flight(), 2);
}

/// With no `region` set, artgc asks the store where the bucket lives (HEAD bucket,
/// `x-amz-bucket-region`, once per endpoint and bucket) and signs for it: a store that answers
/// S3's `301 PermanentRedirect` to requests signed for any other region is still collected. An
/// explicit region is the user's word and is not second-guessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_in_another_region_is_found_and_collected() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    // The store's own region where it checks it (garage); any other where it does not (s3s-fs).
    let region = match srv.region.as_str() {
        "us-east-1" => "eu-west-2",
        own => own,
    };
    proxy.set_bucket_region(region);
    let b = srv.bucket("regions").await;
    for k in ["w/a", "w/b", "w/c", "v0/a", "v1/a", "v2/a", "v3/a"] {
        srv.put(&b, k, "x").await;
    }
    let art = |name: &str, key: &str, region: Option<&str>| {
        let mut a = on_server(&srv.region, &proxy.endpoint, name, &b, key, "s3");
        match region {
            Some(r) => a["s3"]["region"] = serde_json::json!(r),
            None => {
                a["s3"].as_object_mut().unwrap().remove("region");
            }
        }
        a
    };
    let w = workflow("ns", "w").node(
        "n1",
        "t",
        vec![art("a", "w/a", None), art("b", "w/b", None)],
    );
    let explicit = workflow("ns", "x").node("n1", "t", vec![art("c", "w/c", Some("us-east-1"))]);
    // More workflows of the bucket, probed at once: still one question.
    let more = (0..4).map(|i| {
        workflow("ns", &format!("v{i}")).node("n1", "t", vec![art("a", &format!("v{i}/a"), None)])
    });
    let plan = plan_due(
        [w, explicit].into_iter().chain(more).collect(),
        vec![secret("ns", "s3", &srv.access_key, &srv.secret_key)],
    );
    let exec = execute(&plan, &store(), Run::DELETE).await;
    for (w, a) in [(0, 0), (0, 1)] {
        let o = exec
            .get(artgc_core::plan::ArtifactRef::new(w, a))
            .expect("outcome");
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(o.objects, 1);
    }
    let c = exec
        .get(artgc_core::plan::ArtifactRef::new(1, 0))
        .expect("outcome");
    assert!(c.error.is_some(), "signed for us-east-1 as told: {c:?}");
    assert_eq!(srv.keys(&b).await, ["w/c"]);
    let bucket_heads = proxy
        .log()
        .iter()
        .filter(|r| r.method == "HEAD" && r.path_and_query.trim_end_matches('/') == format!("/{b}"))
        .count();
    assert_eq!(bucket_heads, 1, "the region is asked once");
}
