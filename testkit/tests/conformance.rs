//! The project's Kubernetes API test server held against the real kube-apiserver: each test
//! here runs twice, `test_server::NAME` against `KubeApiServer` and `real_api_server::NAME`
//! against the server `.ci/kube.sh` starts (ignored unless asked for, and failing without it
//! when asked), so the test server is checked against something other than itself. They cover
//! what artgc relies on: CRUD on a custom resource with resourceVersion and generation, label
//! selectors, JSON patch `test`, finalizer-aware DELETE, paged lists, name rules, namespaces
//! that must exist. The test server's own faults and tools are in `kube_api.rs`.

use artgc_testkit::{KubeApiServer, RealKube};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// A server and two namespaces to write into.
struct Env {
    client: kube::Client,
    ns: String,
    other: String,
    _server: Option<KubeApiServer>,
}

impl Env {
    async fn test_server() -> Self {
        let server = KubeApiServer::start().await;
        for ns in ["ns", "other"] {
            server.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        Self {
            client: server.client(),
            ns: "ns".into(),
            other: "other".into(),
            _server: Some(server),
        }
    }

    async fn real() -> Self {
        let kube = RealKube::from_env().await.expect("the real API server");
        let (a, b) = (kube.namespace("conf").await, kube.namespace("conf").await);
        Self {
            client: kube.admin(),
            ns: a.ns,
            other: b.ns,
            _server: None,
        }
    }

    fn workflows(&self, ns: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "workflows");
        Api::namespaced_with(self.client.clone(), ns, &ar)
    }
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

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod test_server {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Env::test_server().await).await
                }
            )*
        }
        mod real_api_server {
            $(
                #[tokio::test]
                #[ignore = "needs the real API server: eval \"$(.ci/kube.sh start DIR)\", then cargo test -- --include-ignored (.ci/run does both)"]
                async fn $name() {
                    super::$name(super::Env::real().await).await
                }
            )*
        }
    };
}

on_both!(
    crud_on_a_custom_resource,
    list_kinds_resource_versions_and_label_selectors,
    json_patch_test_op_and_finalizer_rules,
    lists_are_paged_with_limit_and_continue,
    names_are_checked_as_the_real_server_checks_them,
    objects_go_only_into_namespaces_that_exist,
);

async fn crud_on_a_custom_resource(e: Env) {
    let api = e.workflows(&e.ns);
    let created = api
        .create(&PostParams::default(), &wf("a", json!({"x": "1"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_ref(), Some(&e.ns));

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

async fn list_kinds_resource_versions_and_label_selectors(e: Env) {
    let api = e.workflows(&e.ns);
    for (n, labels) in [
        ("a", json!({"tier": "web", "env": "prod"})),
        ("b", json!({"tier": "db", "env": "prod"})),
        ("c", json!({"tier": "web"})),
    ] {
        api.create(&PostParams::default(), &wf(n, labels))
            .await
            .unwrap();
    }
    e.workflows(&e.other)
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
        e.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
            "workflows",
        ),
    );
    // Across namespaces (the real server may hold other tests' Workflows too).
    let list = all.list(&ListParams::default()).await.unwrap();
    let ours = list
        .items
        .iter()
        .filter(|o| [&e.ns, &e.other].contains(&o.metadata.namespace.as_ref().unwrap()))
        .count();
    assert_eq!(ours, 4);
    assert!(
        list.metadata
            .resource_version
            .is_some_and(|v| !v.is_empty())
    );
}

async fn json_patch_test_op_and_finalizer_rules(e: Env) {
    let api = e.workflows(&e.ns);
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

async fn lists_are_paged_with_limit_and_continue(e: Env) {
    let api = e.workflows(&e.ns);
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
    // The last page has no token to go on with: the real server says so with an empty one.
    assert_eq!(third.metadata.continue_.as_deref().unwrap_or(""), "");
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
    assert_eq!(rest.metadata.continue_.as_deref().unwrap_or(""), "");
    assert!(
        api.list(&ListParams::default().continue_token("garbage"))
            .await
            .is_err()
    );
}

/// Names as the real API server checks them (found running the controller tests on both): a
/// Namespace's name is a DNS label of 63 characters at most, other names DNS subdomains.
async fn names_are_checked_as_the_real_server_checks_them(e: Env) {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: Api<Namespace> = Api::all(e.client.clone());
    let ns = |name: &str| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    let pp = PostParams::default();
    // 63 characters, unique (the real server keeps every test's namespaces).
    let longest = format!("{}{:08x}", "a".repeat(55), rand::random::<u32>());
    namespaces.create(&pp, &ns(&longest)).await.unwrap();
    for bad in [
        "a".repeat(64),
        "has.dot".into(),
        "Upper".into(),
        "-edge".into(),
    ] {
        let err = namespaces.create(&pp, &ns(&bad)).await.unwrap_err();
        assert_eq!(api_err(err), (422, "Invalid".into()), "{bad}");
    }
    let wfs = e.workflows(&e.ns);
    wfs.create(&pp, &wf("with.dots-and-1", json!({})))
        .await
        .unwrap();
    for bad in ["UPPER", "under_score", "trailing-", &"a".repeat(254)] {
        let err = wfs.create(&pp, &wf(bad, json!({}))).await.unwrap_err();
        assert_eq!(api_err(err), (422, "Invalid".into()), "{bad}");
    }
}

/// As on the real server, an object goes only into a namespace that exists.
async fn objects_go_only_into_namespaces_that_exist(e: Env) {
    let pp = PostParams::default();
    let missing = format!("missing-{:08x}", rand::random::<u32>());
    let err = e
        .workflows(&missing)
        .create(&pp, &wf("w", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_err(err), (404, "NotFound".into()));
}
