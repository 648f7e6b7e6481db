//! Store failures, injected by a proxy in front of a real S3 server: throttling is retried,
//! permanent errors are not, and a store without DeleteObjects gets single deletes.

mod support;

use artgc::execute::{Quiet, execute};
use artgc::plan::GcPlan;
use artgc::store::{ObjectStore, StoreOptions};
use artgc_testkit::{FaultProxy, FaultRule, S3Server};
use serde_json::json;
use support::*;

/// Two file artifacts on `bucket`, reached through `endpoint`.
async fn setup(srv: &S3Server, endpoint: &str) -> (String, GcPlan) {
    let b = srv.bucket("faults").await;
    srv.put(&b, "w/a", "aa").await;
    srv.put(&b, "w/b", "bbb").await;
    let art = |name: &str, key: &str| {
        let mut a = full(name, endpoint, &b, key, "s3");
        a["s3"]["region"] = json!(srv.region);
        with_strategy(a, "OnWorkflowCompletion")
    };
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
    proxy.add_rule(FaultRule {
        method: "POST",
        query: "delete",
        status: 503,
        code: "SlowDown",
        times: 2,
    });
    let exec = execute(&plan, &store(), false, &Quiet).await;
    assert!(
        exec.outcomes.values().all(|o| o.error.is_none()),
        "{:?}",
        exec.outcomes
    );
    assert_eq!(batch_deletes(&proxy), vec![true, true, false]);
    assert!(srv.keys(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_beyond_the_budget_fail_the_artifacts() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule {
        method: "POST",
        query: "delete",
        status: 500,
        code: "InternalError",
        times: 100,
    });
    let exec = execute(&plan, &store(), false, &Quiet).await;
    for o in exec.outcomes.values() {
        assert_eq!(
            o.error.as_ref().map(|e| e.category()),
            Some("server_error"),
            "{o:?}"
        );
        assert_eq!((o.objects, o.bytes), (0, 0));
    }
    assert_eq!(
        batch_deletes(&proxy).len(),
        4,
        "max_attempts bounds the tries"
    );
    assert_eq!(srv.keys(&b).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_not_retried() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule {
        method: "POST",
        query: "delete",
        status: 403,
        code: "AccessDenied",
        times: 100,
    });
    let exec = execute(&plan, &store(), false, &Quiet).await;
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
async fn a_store_without_delete_objects_gets_single_deletes() {
    let srv = S3Server::start().await;
    let proxy = FaultProxy::start(&srv.endpoint).await;
    let (b, plan) = setup(&srv, &proxy.endpoint).await;
    proxy.add_rule(FaultRule {
        method: "POST",
        query: "delete",
        status: 501,
        code: "NotImplemented",
        times: 100,
    });
    let exec = execute(&plan, &store(), false, &Quiet).await;
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
