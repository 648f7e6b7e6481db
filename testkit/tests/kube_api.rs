//! The test API server through real clients: kube-rs 5 (Api, watcher, finalizer helper,
//! kube-lease-manager) and kubectl.

use std::time::Duration;

use artgc_testkit::{KubeApiServer, KubeFault};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use serde_json::{Value, json};

/// A server with the namespaces these tests write into.
async fn server() -> KubeApiServer {
    let server = KubeApiServer::start().await;
    for ns in ["default", "ns", "other"] {
        server.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    server
}

fn workflows(server: &KubeApiServer, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "workflows");
    Api::namespaced_with(server.client(), ns, &ar)
}

fn wf(name: &str, labels: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": name, "labels": labels},
        "spec": {"entrypoint": "main"},
    }))
    .unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_on_a_custom_resource() {
    let server = server().await;
    let api = workflows(&server, "ns");
    let created = api
        .create(&PostParams::default(), &wf("a", json!({"x": "1"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("ns"));

    let dup = api
        .create(&PostParams::default(), &wf("a", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_err(dup), (409, "AlreadyExists".into()));

    let got = api.get("a").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );

    // Merge patch bumps resourceVersion and, for spec changes, generation.
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"entrypoint": "other"}})),
        )
        .await
        .unwrap();
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(patched.metadata.generation, Some(2));
    let labels_only = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"y": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labels_only.metadata.generation, Some(2));

    // A replace carrying a stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.data["spec"]["entrypoint"] = json!("stale");
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_err(err), (409, "Conflict".into()));
    // ... and so does a merge patch that names one.
    let rv = created.metadata.resource_version.clone().unwrap();
    let err = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": rv}, "spec": {"x": 1}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(err), (409, "Conflict".into()));

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
    let err = api.get("a").await.unwrap_err();
    assert_eq!(api_err(err), (404, "NotFound".into()));
}

#[tokio::test]
async fn list_kinds_resource_versions_and_label_selectors() {
    let server = server().await;
    let api = workflows(&server, "ns");
    for (n, labels) in [
        ("a", json!({"tier": "web", "env": "prod"})),
        ("b", json!({"tier": "db", "env": "prod"})),
        ("c", json!({"tier": "web"})),
    ] {
        api.create(&PostParams::default(), &wf(n, labels))
            .await
            .unwrap();
    }
    workflows(&server, "other")
        .create(&PostParams::default(), &wf("d", json!({"tier": "web"})))
        .await
        .unwrap();
    let names = |sel: &'static str| {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default().labels(sel)).await.unwrap();
            let mut n: Vec<String> = list
                .items
                .into_iter()
                .map(|o| o.metadata.name.unwrap())
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(names("tier=web").await, ["a", "c"]);
    assert_eq!(names("tier==web").await, ["a", "c"]);
    assert_eq!(names("tier!=web").await, ["b"]);
    assert_eq!(names("env").await, ["a", "b"]);
    assert_eq!(names("!env").await, ["c"]);
    assert_eq!(names("tier in (db, web),env").await, ["a", "b"]);
    assert_eq!(names("tier notin (web)").await, ["b"]);
    let all: Api<DynamicObject> = Api::all_with(
        server.client(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
            "workflows",
        ),
    );
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 4);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
}

#[tokio::test]
async fn json_patch_test_op_and_finalizer_rules() {
    let server = server().await;
    let api = workflows(&server, "ns");
    api.create(&PostParams::default(), &wf("a", json!({})))
        .await
        .unwrap();
    // `test` of null on a missing path passes, as in Kubernetes.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]))
    .unwrap();
    let o = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(o.metadata.finalizers, Some(vec!["x/y".to_string()]));
    // A failing test fails the patch.
    let ops: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/spec/entrypoint", "value": "nope"}]),
    )
    .unwrap();
    assert_eq!(
        api_err(
            api.patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
                .await
                .unwrap_err()
        )
        .0,
        422
    );

    // DELETE with a finalizer only marks the object.
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = api.get("a").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    // No new finalizers on a deleting object.
    let err = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["x/y", "new/one"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(err), (422, "Invalid".into()));
    // Removing the last finalizer deletes it.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn watcher_sees_changes_and_recovers_from_drops_and_410() {
    let server = server().await;
    let api = workflows(&server, "ns");
    api.create(&PostParams::default(), &wf("before", json!({})))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    // The watcher reports errors (a 410, a failed request) as items and carries on.
    let mut expired = 0;
    let mut next = async || -> watcher::Event<DynamicObject> {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("event in time")
                .expect("the watcher never ends");
            match item {
                Ok(ev) => return ev,
                Err(watcher::Error::WatchError(s)) if s.code == 410 => expired += 1,
                Err(e) => panic!("unexpected watcher error: {e}"),
            }
        }
    };
    // Initial list.
    let mut seen_init = Vec::new();
    loop {
        match next().await {
            watcher::Event::InitApply(o) => seen_init.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen_init, ["before"]);
    api.create(&PostParams::default(), &wf("x", json!({})))
        .await
        .unwrap();
    assert!(
        matches!(next().await, watcher::Event::Apply(o) if o.metadata.name.as_deref() == Some("x"))
    );
    api.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"a": 1}})),
    )
    .await
    .unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(o) if o.data["spec"]["a"] == 1));
    api.delete("x", &DeleteParams::default()).await.unwrap();
    assert!(
        matches!(next().await, watcher::Event::Delete(o) if o.metadata.name.as_deref() == Some("x"))
    );

    // A dropped stream is resumed.
    server.drop_watches();
    api.create(&PostParams::default(), &wf("after-drop", json!({})))
        .await
        .unwrap();
    let name = loop {
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = next().await {
            break o.metadata.name.unwrap();
        }
    };
    assert_eq!(name, "after-drop");

    // After compaction, resuming gets 410 and the watcher re-lists.
    server.compact();
    server.drop_watches();
    api.create(&PostParams::default(), &wf("after-410", json!({})))
        .await
        .unwrap();
    let mut names = Vec::new();
    while !names.contains(&"after-410".to_string()) {
        if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = next().await {
            names.push(o.metadata.name.unwrap());
        }
    }
    assert_eq!(expired, 1, "the resumed watch was refused with 410 Expired");
}

#[tokio::test]
async fn finalizer_helper_adds_and_removes_through_a_real_delete() {
    use kube::runtime::finalizer::{Event as Fin, finalizer};
    let server = server().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "ns");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let cleaned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = |obj: ConfigMap| {
        let (api, cleaned) = (api.clone(), cleaned.clone());
        async move {
            finalizer(
                &api,
                "artgc.test/cleanup",
                std::sync::Arc::new(obj),
                |ev| async move {
                    if let Fin::Cleanup(_) = ev {
                        cleaned.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok::<_, std::convert::Infallible>(
                        kube::runtime::controller::Action::await_change(),
                    )
                },
            )
            .await
        }
    };
    run(api.get("c").await.unwrap()).await.unwrap();
    let with_fin = api.get("c").await.unwrap();
    assert_eq!(
        with_fin.metadata.finalizers,
        Some(vec!["artgc.test/cleanup".to_string()])
    );
    api.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(
        api.get("c")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    run(api.get("c").await.unwrap()).await.unwrap();
    assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst));
    assert!(api.get_opt("c").await.unwrap().is_none());
}

#[tokio::test]
async fn two_lease_managers_hand_over() {
    use kube_lease_manager::LeaseManagerBuilder;
    let server = server().await;
    let manager = |id: &'static str| {
        LeaseManagerBuilder::new(server.client(), "artgc-leader")
            .with_namespace("ns")
            .with_identity(id)
            .with_duration(3)
            .with_grace(1)
            .build()
    };
    let holder = || {
        server
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("ns"),
                "artgc-leader",
            )
            .unwrap()["spec"]["holderIdentity"]
            .clone()
    };
    let until = async |rx: &mut tokio::sync::watch::Receiver<bool>, want: bool| {
        tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|v| *v == want))
            .await
            .expect("in time")
            .unwrap();
    };
    let (mut a_rx, a_task) = manager("a").await.unwrap().watch().await;
    until(&mut a_rx, true).await;
    let (mut b_rx, b_task) = manager("b").await.unwrap().watch().await;
    // Longer than a whole lease duration: a keeps renewing, b never gets it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!*b_rx.borrow(), "b must not lead while a renews");
    assert_eq!(holder(), "a");
    // a steps down (its receiver dropped): b takes over.
    drop(a_rx);
    a_task.await.unwrap().unwrap();
    until(&mut b_rx, true).await;
    assert_eq!(holder(), "b");
    drop(b_rx);
    b_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn injected_faults_latency_and_the_request_log() {
    let server = server().await;
    let api = workflows(&server, "ns");
    api.create(&PostParams::default(), &wf("a", json!({})))
        .await
        .unwrap();
    server.inject(KubeFault {
        method: "PATCH",
        path: "/workflows/a".into(),
        status: 500,
        times: 1,
    });
    let patch = Patch::Merge(json!({"spec": {"n": 1}}));
    assert_eq!(
        api_err(
            api.patch("a", &PatchParams::default(), &patch)
                .await
                .unwrap_err()
        )
        .0,
        500
    );
    api.patch("a", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let patches: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.status)
        .collect();
    assert_eq!(patches, [500, 200]);
    server.set_latency(Duration::from_millis(200));
    let t = std::time::Instant::now();
    api.get("a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn kubectl_as_an_independent_client() {
    // ARTGC_KUBECTL picks a specific binary (e.g. to check an older client).
    // CI installs kubectl (.ci/run) and must run this; a developer machine may lack it.
    let kubectl = match (std::env::var_os("ARTGC_KUBECTL"), which("kubectl")) {
        (Some(path), _) => std::path::PathBuf::from(path),
        (None, Ok(path)) => path,
        (None, Err(())) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: kubectl not installed (apt-get install kubernetes-client)");
            return;
        }
        (None, Err(())) => {
            panic!("kubectl is not installed; .ci/run installs Debian's kubernetes-client")
        }
    };
    let server = server().await;
    let url = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("wf.yaml");
    std::fs::write(&manifest, "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata:\n  name: k1\n  namespace: ns\n  labels: {team: a}\nspec: {entrypoint: main}\n").unwrap();
    let run = move |args: &[&str]| -> (bool, String) {
        let out = std::process::Command::new(&kubectl)
            .args(["--server", &url, "--insecure-skip-tls-verify=true"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let run = std::sync::Arc::new(run);
    let call = |args: Vec<String>| {
        let run = run.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // No OpenAPI schema is served, so client-side validation is off.
    let (ok, out) = call(s(&[
        "create",
        "--validate=false",
        "-f",
        manifest.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "{out}");
    let (ok, out) = call(s(&[
        "get",
        "workflows",
        "-n",
        "ns",
        "-l",
        "team=a",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]))
    .await;
    assert!(ok && out.trim() == "k1", "{out}");
    let (ok, out) = call(s(&[
        "get",
        "workflows",
        "-n",
        "ns",
        "-l",
        "team!=a",
        "-o",
        "name",
    ]))
    .await;
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out) = call(s(&[
        "patch",
        "workflow",
        "k1",
        "-n",
        "ns",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"entrypoint":"patched"}}"#,
    ]))
    .await;
    assert!(ok, "{out}");
    let stored = server
        .get("argoproj.io/v1alpha1", "Workflow", Some("ns"), "k1")
        .unwrap();
    assert_eq!(stored["spec"]["entrypoint"], "patched");
    let (ok, out) = call(s(&["delete", "workflow", "k1", "-n", "ns", "--wait=false"])).await;
    assert!(ok, "{out}");
    assert!(
        server
            .get("argoproj.io/v1alpha1", "Workflow", Some("ns"), "k1")
            .is_none()
    );
}

fn which(bin: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or(())
}

#[tokio::test]
async fn raw_watch_filters_by_label_bookmarks_and_times_out() {
    use kube::api::WatchParams;
    use kube::core::WatchEvent;
    let server = server().await;
    let api = workflows(&server, "ns");
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().labels("team=a").timeout(1);
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &wf("mine", json!({"team": "a"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &wf("theirs", json!({"team": "b"})))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut added = Vec::new();
    let mut bookmarks = 0;
    // The stream ends by itself after timeoutSeconds.
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("ends in time")
        .unwrap()
    {
        match ev {
            WatchEvent::Added(o) => added.push(o.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => bookmarks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, ["mine"]);
    assert!(bookmarks >= 1);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn lists_are_paged_with_limit_and_continue() {
    let server = server().await;
    let api = workflows(&server, "ns");
    for i in 0..5 {
        let labels = json!({"pick": if i % 2 == 0 { "yes" } else { "no" }});
        api.create(&PostParams::default(), &wf(&format!("w{i}"), labels))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let third = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(third.metadata.continue_, None);
    assert_eq!(
        first.metadata.resource_version,
        third.metadata.resource_version
    );
    let names: Vec<String> = [first, second, third]
        .into_iter()
        .flat_map(|l| l.items)
        .map(|o| o.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["w0", "w1", "w2", "w3", "w4"]);
    // Selectors apply before the limit: exactly two selected, no empty third page.
    let picked = api
        .list(&ListParams::default().labels("pick=yes").limit(2))
        .await
        .unwrap();
    assert_eq!(picked.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .labels("pick=yes")
                .limit(2)
                .continue_token(picked.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.metadata.continue_, None);
    assert!(
        api.list(&ListParams::default().continue_token("garbage"))
            .await
            .is_err()
    );
}

/// Names as the real API server checks them (found running the controller tests on both): a
/// Namespace's name is a DNS label of 63 characters at most, other names DNS subdomains.
#[tokio::test]
async fn names_are_checked_as_the_real_server_checks_them() {
    use k8s_openapi::api::core::v1::Namespace;
    let server = server().await;
    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns = |name: &str| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    let pp = PostParams::default();
    namespaces.create(&pp, &ns(&"a".repeat(63))).await.unwrap();
    for bad in [
        "a".repeat(64),
        "has.dot".into(),
        "Upper".into(),
        "-edge".into(),
    ] {
        let err = namespaces.create(&pp, &ns(&bad)).await.unwrap_err();
        assert_eq!(api_err(err), (422, "Invalid".into()), "{bad}");
    }
    let wfs = workflows(&server, "ns");
    wfs.create(&pp, &wf("with.dots-and-1", json!({})))
        .await
        .unwrap();
    for bad in ["UPPER", "under_score", "trailing-", &"a".repeat(254)] {
        let err = wfs.create(&pp, &wf(bad, json!({}))).await.unwrap_err();
        assert_eq!(api_err(err), (422, "Invalid".into()), "{bad}");
    }
}

/// As on the real server, an object goes only into a namespace that exists; seeding one
/// creates its namespace first, as a test setup would.
#[tokio::test]
async fn objects_go_only_into_namespaces_that_exist() {
    let server = KubeApiServer::start().await;
    let pp = PostParams::default();
    let err = workflows(&server, "missing")
        .create(&pp, &wf("w", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_err(err), (404, "NotFound".into()));
    server.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "c", "namespace": "seeded"}}));
    workflows(&server, "seeded")
        .create(&pp, &wf("w", json!({})))
        .await
        .unwrap();
}
