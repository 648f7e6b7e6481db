//! The test API server through real clients: kube-rs 5 (Api, watcher, finalizer helper,
//! kube-lease-manager) and kubectl.

use std::time::Duration;

use artgc_testkit::{KubeApiServer, KubeFault};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
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

#[ignore = "needs kubectl (Debian's kubernetes-client), then cargo test -- --include-ignored (.ci/run installs it)"]
#[tokio::test]
async fn kubectl_as_an_independent_client() {
    // ARTGC_KUBECTL picks a specific binary (e.g. to check an older client).
    let kubectl = match (std::env::var_os("ARTGC_KUBECTL"), which("kubectl")) {
        (Some(path), _) => std::path::PathBuf::from(path),
        (None, Ok(path)) => path,
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

/// Seeding an object creates its namespace first, as a test setup would.
#[tokio::test]
async fn seeding_creates_the_namespace_first() {
    let server = KubeApiServer::start().await;
    server.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "c", "namespace": "seeded"}}));
    workflows(&server, "seeded")
        .create(&PostParams::default(), &wf("w", json!({})))
        .await
        .unwrap();
}
