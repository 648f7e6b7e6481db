//! The watch driver: one watch stream per watched namespace (or one for all), whose events only
//! record what changed in the backlog; indexers beside it read each changed Workflow, reduce it
//! to its key uses (the shared-key index) and decide whether to queue it. Readiness waits until
//! every stream listed and every listed workflow is indexed: a pass must see every other
//! workflow's keys.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::kube_api::WatchedWorkflow;
use artgc_core::inventory::WorkflowInput;
use artgc_core::model::{LABEL_INSTANCE_ID, Workflow};
use artgc_core::outcome::wants_pass;
use artgc_core::plan::plan_alone;

use super::backlog::{Backlog, Change};
use super::worker::panic_message;
use super::{ControllerState, is_big};
use artgc_core::keys::WorkflowKey;

/// Workflows per list page of the watch.
const WATCH_PAGE_SIZE: u32 = 100;

fn label_selector(instance_id: Option<&str>) -> String {
    match instance_id {
        Some(id) => format!("{LABEL_INSTANCE_ID}={id}"),
        None => format!("!{LABEL_INSTANCE_ID}"),
    }
}

fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

pub(super) async fn watch_workflows(shared: Arc<ControllerState>, stop: CancellationToken) {
    let admin_state = shared.admin_state.clone();
    let _running = admin_state.watch();
    // Small pages: a list page of Workflows is held in memory whole while it is indexed.
    let cfg = watcher::Config::default()
        .labels(&label_selector(shared.config.instance_id.as_deref()))
        .page_size(WATCH_PAGE_SIZE)
        .timeout(
            u32::try_from(shared.config.watch_timeout.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        );
    let apis: Vec<Api<WatchedWorkflow>> = if shared.config.namespaces.is_empty() {
        vec![Api::all(shared.watch_client.clone())]
    } else {
        shared
            .config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(shared.watch_client.clone(), ns))
            .collect()
    };
    // Each event tagged with its stream, so a re-list prunes only its own namespace.
    let streams = apis.into_iter().enumerate().map(|(i, api)| {
        watcher::watcher(api, cfg.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    // The watch only records what changed; reading ConfigMaps, decompressing and planning
    // happen in indexers beside it, so a slow API server or a heavy Workflow never stalls the
    // stream, and a Workflow patched many times while waiting is read once.
    let backlog = Backlog::new(INDEX_BACKLOG_BYTES);
    let mut watch = WatchState {
        shared: &shared,
        backlog: &backlog,
        waiting_for: shared.config.namespaces.len().max(1),
        synced_streams: HashSet::new(),
        relist: HashMap::new(),
    };
    let forward = async {
        while let Some((stream, ev)) = events.next().await {
            admin_state.watch_result(ev.is_ok());
            match ev {
                Ok(ev) => watch.handle(stream, ev).await,
                Err(e) => warn!(error = %e, "workflow watch (retrying)"),
            }
        }
    };
    let indexers =
        futures::future::join_all((0..=INDEXERS).map(|i| index(&shared, &backlog, i == INDEXERS)));
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = forward => {}
        _ = indexers => {}
    }
}

/// Bytes of Workflow text waiting for the indexers before the watch waits.
const INDEX_BACKLOG_BYTES: usize = 64 << 20;
/// Indexers reading Workflows at once, besides the one for big Workflows.
const INDEXERS: usize = 2;

/// Keeps readiness and the re-list bookkeeping in step with the watch, in event order.
struct WatchState<'a> {
    shared: &'a ControllerState,
    backlog: &'a Backlog,
    /// Streams (one per watched namespace, or one for all) to list before collecting.
    waiting_for: usize,
    synced_streams: HashSet<usize>,
    /// Keys seen during each stream's (re-)list, to drop those that vanished meanwhile.
    relist: HashMap<usize, HashSet<WorkflowKey>>,
}

/// A big Workflow's text is not kept waiting: it is read again when its turn comes.
fn applied(wf: WatchedWorkflow) -> Change {
    if is_big(wf.raw.get()) {
        Change::Reread
    } else {
        Change::Apply(Box::new(wf))
    }
}

/// The watched object's key; `None` for an object without a namespace or name, which the API
/// server never sends for a Workflow (it is left alone, and said so).
fn watched_key(wf: &WatchedWorkflow) -> Option<WorkflowKey> {
    match (&wf.metadata.namespace, &wf.metadata.name) {
        (Some(ns), Some(name)) => Some(WorkflowKey::new(ns, name)),
        _ => {
            warn!("a watched Workflow without a namespace or name; left alone");
            None
        }
    }
}

impl WatchState<'_> {
    async fn handle(&mut self, stream: usize, ev: Event<WatchedWorkflow>) {
        let shared = self.shared;
        match ev {
            Event::Init => {
                self.relist.insert(stream, HashSet::new());
            }
            Event::InitApply(wf) => {
                let Some(key) = watched_key(&wf) else { return };
                if let Some(seen) = self.relist.get_mut(&stream) {
                    seen.insert(key.clone());
                }
                self.backlog.push(key, applied(wf)).await;
            }
            Event::InitDone => {
                if let Some(seen) = self.relist.remove(&stream) {
                    // Workflows deleted while the watch was down never sent their DELETED.
                    let prefix = shared
                        .config
                        .namespaces
                        .get(stream)
                        .map(|ns| format!("{ns}/"));
                    let mine = |k: &str| prefix.as_deref().is_none_or(|p| k.starts_with(p));
                    let keep = |k: &str| !mine(k) || seen.contains(k);
                    self.backlog.discard(keep);
                    shared.index.reset(keep).await;
                }
                self.synced_streams.insert(stream);
                if self.synced_streams.len() >= self.waiting_for
                    && !shared.admin_state.ready.load(Ordering::Relaxed)
                {
                    // Every listed workflow's keys are indexed before any pass runs: a pass
                    // must see every other workflow's keys.
                    self.backlog.idle().await;
                    shared.admin_state.ready.store(true, Ordering::Relaxed);
                    shared.synced.send_replace(true);
                    info!("watch synced and indexed; ready");
                }
            }
            Event::Apply(wf) => {
                let Some(key) = watched_key(&wf) else { return };
                self.backlog.push(key, applied(wf)).await;
            }
            Event::Delete(wf) => {
                let Some(key) = watched_key(&wf) else { return };
                self.backlog.push(key, Change::Delete).await;
            }
        }
    }
}

/// Reads what the watch recorded, one workflow at a time: `big` indexers read the Workflows
/// too big to wait in the backlog, the others the rest.
async fn index(shared: &ControllerState, backlog: &Backlog, big: bool) {
    loop {
        let (key, change) = backlog.take(usize::from(big)).await;
        let read = match change {
            Change::Apply(wf) => Some(*wf),
            Change::Reread => {
                match Api::<WatchedWorkflow>::namespaced(shared.client.clone(), key.namespace())
                    .get_opt(key.name())
                    .await
                {
                    Ok(Some(wf)) => Some(wf),
                    Ok(None) => {
                        forget_workflow(shared, &key).await;
                        None
                    }
                    Err(e) => {
                        // Read again on its next change, and passed as if changed meanwhile.
                        warn!(workflow = %key, error = %e, "reading a big Workflow to index it");
                        shared
                            .queue
                            .add(key.clone(), Instant::now() + shared.config.backoff_base);
                        None
                    }
                }
            }
            Change::Delete => {
                forget_workflow(shared, &key).await;
                None
            }
        };
        if let Some(wf) = read {
            let observed = AssertUnwindSafe(observe(shared, wf)).catch_unwind().await;
            if let Err(panic) = observed {
                error!(workflow = %key, panic = %panic_message(&*panic), "indexing panicked; the indexer goes on");
            }
        }
        backlog.done(&key);
    }
}

/// A workflow that is gone: out of the index and the queue (with its failure count).
async fn forget_workflow(shared: &ControllerState, key: &WorkflowKey) {
    shared.index.delete(key).await;
    shared.queue.forget(key);
}

/// Reduces one watched Workflow to its key uses and a decision to queue it.
async fn observe(shared: &ControllerState, wf: WatchedWorkflow) {
    let Some(key) = watched_key(&wf) else { return };
    let ns = key.namespace().to_string();
    shared.metrics().namespace_seen(&ns);
    let holds = has_finalizer(&wf.metadata, &shared.config.finalizer);
    let waiting = match (&wf.metadata.deletion_timestamp, holds) {
        (Some(t), true) => Some(t.0),
        _ => None,
    };
    let seen = Seen {
        key: &key,
        holds,
        waiting,
        deleting: wf.metadata.deletion_timestamp.is_some(),
    };
    let big = is_big(wf.raw.get());
    let _big = shared.big_turn(big).await;
    let WatchedWorkflow { metadata, raw } = wf;
    let limit = shared.config.max_node_status_bytes;
    let input = shared
        .cpu(big, move || {
            WorkflowInput::from_json(raw.get(), &ns).unpacked(limit)
        })
        .await;
    let queue = match input {
        // Offloaded nodes: read from Argo's database, running or not, so that the keys such a
        // workflow uses are in the shared-key index too.
        WorkflowInput::Valid(mut w) if artgc_core::nodes::is_offloaded(&w) => {
            let read =
                crate::offload::hydrate_from_cluster(&shared.offload, &shared.reader, &mut w).await;
            match read {
                Ok(_) => index_readable(shared, &seen, w, big).await,
                // Unreadable now: its old entries stay, and it is passed once due.
                Err(e) => {
                    warn!(workflow = %key, error = %e, category = e.category(), "reading offloaded nodes to index them");
                    shared.index.apply_unreadable(&key, waiting);
                    artgc_core::outcome::wants_pass_nodes_unread(w.is_finished(), seen.deleting)
                }
            }
        }
        WorkflowInput::Valid(w) => index_readable(shared, &seen, w, big).await,
        // Unreadable: reported (condition, event) once it finished or is being deleted with our
        // finalizer (the force rule applies); it keeps its old index entries, to be safe.
        WorkflowInput::Invalid { .. } => {
            let completed = metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(artgc_core::model::LABEL_COMPLETED))
                .is_some_and(|v| v == "true");
            shared.index.apply_unreadable(&key, waiting);
            artgc_core::outcome::wants_pass_unreadable(completed, seen.deleting, holds)
        }
    };
    if queue {
        debug!(workflow = %key, "queued");
        shared.queue.add(key, Instant::now());
    }
}

/// What the watch saw of a Workflow besides its body.
struct Seen<'a> {
    key: &'a WorkflowKey,
    /// artgc's finalizer is on it.
    holds: bool,
    /// Its deletionTimestamp, while it is deleted and held by artgc's finalizer.
    waiting: Option<jiff::Timestamp>,
    deleting: bool,
}

/// Indexes a readable workflow's key uses; returns whether it wants a pass. A failed read of
/// its ConfigMaps keeps its earlier uses and queues it after a backoff instead.
async fn index_readable(
    shared: &ControllerState,
    seen: &Seen<'_>,
    w: Box<Workflow>,
    big: bool,
) -> bool {
    let state = match shared.reader.state_for(&w, None).await {
        Ok(s) => s,
        Err(e) => {
            warn!(workflow = %seen.key, error = %e, "reading repository ConfigMaps");
            // Its earlier key uses stay; its wait on the finalizer shows.
            shared.index.apply_unreadable(seen.key, seen.waiting);
            shared.queue.add(
                seen.key.clone(),
                Instant::now() + shared.config.backoff_base,
            );
            return false;
        }
    };
    // The workflow and its plan are also dropped there: freeing a big tree takes a while.
    let (reclaims_everywhere, holds) = (shared.config.store.reclaim_versions, seen.holds);
    let (wants, uses) = shared
        .cpu(big, move || {
            let (mut wp, uses) = plan_alone(&w, &state);
            wp.may_reclaim |= reclaims_everywhere;
            (wants_pass(&w, &wp, holds), uses)
        })
        .await;
    shared.index.apply(seen.key, uses, seen.waiting).await;
    wants
}
