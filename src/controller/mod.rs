//! `artgc controller`: watches Workflows, queues those with GC work, and for each one gathers
//! its inputs, runs the same plan and execution as `artgc purge`, records the outcome on the
//! Workflow, and holds or releases the finalizer.
//!
//! The watch keeps no Workflow objects: each event is reduced to the workflow's S3 key uses (the
//! shared-key index) and a yes/no on queueing it. A reconcile reads the object fresh.

mod backlog;
pub mod low_priority;
mod queue;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use rand::Rng;
use serde_json::Value;
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Health};
use crate::api::{ClusterReader, WatchedWorkflow, workflows};
use crate::execute::{delete, probe};
use crate::identity::WebIdentityConfig;
use crate::metrics::{self, Metrics};
use crate::record::{self, RecordError};
use crate::store::{ObjectStore, StoreOptions};
use artgc_core::cluster::ArgoConfigMapRef;
use artgc_core::inventory::WorkflowInput;
use artgc_core::keys::KeyIndex;
use artgc_core::model::{FINALIZER_ARTIFACT_GC, LABEL_INSTANCE_ID};
use artgc_core::outcome::{FinalizerChange, PassContext, PassOutcome, assess, wants_pass};
use artgc_core::plan::{GcPlan, PlanOptions, Strategy, WorkflowPlan, plan_alone};
use backlog::{Backlog, Change};
use queue::WorkQueue;

/// Leader election with a Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Lease duration, seconds; the holder renews well within it.
    pub duration: u64,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    /// Argo instance id; `None` handles workflows without the instance label.
    pub instance_id: Option<String>,
    pub finalizer: String,
    pub controller_config: ArgoConfigMapRef,
    /// Workflows reconciled at once.
    pub concurrency: usize,
    /// Workflows of one namespace reconciled at once; `None`: half of `concurrency`, or all of
    /// it when one namespace is watched.
    pub namespace_concurrency: Option<usize>,
    /// Attempts of a failing pass before `forceFinalizerRemoval` may release the workflow.
    pub retry_budget: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How soon a workflow whose artifacts wait for running readers is looked at again.
    pub reader_recheck: Duration,
    pub store: StoreOptions,
    pub admin_addr: SocketAddr,
    pub leader_election: Option<LeaderElection>,
    /// Time allowed for in-flight reconciles on shutdown.
    pub shutdown_grace: Duration,
    /// The operator's tenancy policy.
    pub policy: Arc<artgc_core::policy::Policy>,
    /// STS for workflows' GC service accounts.
    pub sts: crate::identity::StsSettings,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            instance_id: None,
            finalizer: FINALIZER_ARTIFACT_GC.into(),
            controller_config: ArgoConfigMapRef::default(),
            concurrency: 16,
            namespace_concurrency: None,
            retry_budget: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            reader_recheck: Duration::from_secs(30),
            store: StoreOptions::default(),
            admin_addr: ([0, 0, 0, 0], 9090).into(),
            leader_election: None,
            shutdown_grace: Duration::from_secs(30),
            policy: Default::default(),
            sts: Default::default(),
        }
    }
}

impl ControllerConfig {
    /// Passes one namespace may have in flight.
    pub fn per_namespace_concurrency(&self) -> usize {
        match self.namespace_concurrency {
            Some(n) => n.clamp(1, self.concurrency.max(1)),
            None if self.namespaces.len() == 1 => self.concurrency.max(1),
            None => (self.concurrency / 2).max(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("starting the big-workflow thread: {0}")]
    Thread(std::io::Error),
}

/// Why a reconcile ended in error; its category labels metrics.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("reading from the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("artifact GC failed ({0})")]
    Gc(&'static str),
    /// A bug: the pass panicked. The worker lives on; the workflow is reported.
    #[error("internal error: {0}")]
    Internal(String),
    /// Stopped, or not the leader (any more): nothing more sent or written.
    #[error("stopped: shutting down or not the leader")]
    Fenced,
}

impl ReconcileError {
    fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Record(e) => e.category(),
            Self::Gc(c) => c,
            Self::Internal(_) => "internal",
            Self::Fenced => "fenced",
        }
    }
}

struct Shared {
    client: Client,
    config: ControllerConfig,
    reader: ClusterReader,
    store: ObjectStore,
    index: AsyncMutex<KeyIndex>,
    attempts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    queue: WorkQueue<String>,
    health: Arc<Health>,
    recorder: Recorder,
    /// True once the watch delivered its first full list: no workflow is collected before
    /// every other workflow's keys are in the index.
    synced: watch::Sender<bool>,
    /// True while this replica leads (as the lease manager says).
    leading: watch::Receiver<bool>,
    /// With leader election: until when the Lease, as last read from the API server, is ours.
    /// The lease manager keeps saying "leader" while it fails to renew, so every request and
    /// record is also checked against this.
    lease_valid_until: std::sync::Mutex<Option<jiff::Timestamp>>,
    /// Cancelled on shutdown: passes stop between batches.
    stopping: CancellationToken,
    /// One big Workflow (see [`is_big`]) is read and planned at a time, by a pass or an
    /// indexer: parsed, one takes tens of times its text in memory, and seconds of CPU.
    big: tokio::sync::Semaphore,
    /// Where a big Workflow's CPU work runs (see [`crate::low_priority`]).
    low: crate::controller::low_priority::LowPriority,
}

/// Workflow text above which reading and planning it is serialized (see `Shared::big`).
const BIG_WORKFLOW_BYTES: usize = 256 << 10;

/// Big: long text, or compressed nodes (small text, up to `--max-node-status-bytes` once
/// decompressed). Parsed, a Workflow takes tens of times its text in memory.
fn is_big(text: &str) -> bool {
    text.len() > BIG_WORKFLOW_BYTES || text.contains("\"compressedNodes\"")
}

impl Shared {
    fn metrics(&self) -> &Metrics {
        &self.health.metrics
    }

    /// CPU work of a pass or an indexer: a big Workflow's on the low-priority thread, any
    /// other's in place.
    async fn cpu<T: Send + 'static>(&self, big: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
        crate::controller::low_priority::run_on(big.then_some(&self.low), f).await
    }

    /// The big-workflow place (see `big`), for a big Workflow; nothing to wait for otherwise.
    async fn big_turn(&self, big: bool) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match big {
            true => Some(self.big.acquire().await.expect("never closed")),
            false => None,
        }
    }
}

/// A running controller.
pub struct ControllerHandle {
    pub admin_addr: SocketAddr,
    pub health: Arc<Health>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl ControllerHandle {
    /// Stops taking work, lets in-flight reconciles finish (within the grace time), steps down.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Stops at once, as a killed process would: in-flight work is abandoned mid-way.
    pub async fn kill(mut self) {
        self.stop.cancel();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Resolves when the controller stopped (by `stop` or on its own).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

fn key_of(ns: &str, name: &str) -> String {
    KeyIndex::workflow_key(ns, name)
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// Starts the controller's tasks: admin server, leader election, watch and workers.
pub async fn start(
    client: Client,
    config: ControllerConfig,
) -> Result<ControllerHandle, ControllerError> {
    let health = Arc::new(Health::new(Metrics::new()));
    let stop = CancellationToken::new();
    let admin_addr = admin::serve(config.admin_addr, health.clone(), stop.clone())
        .await
        .map_err(ControllerError::Admin)?;
    let reporter = Reporter {
        controller: "artgc".into(),
        instance: config.leader_election.as_ref().map(|l| l.identity.clone()),
    };
    let (leader_tx, leader_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        leading: leader_rx.clone(),
        lease_valid_until: std::sync::Mutex::new(None),
        stopping: stop.clone(),
        big: tokio::sync::Semaphore::new(1),
        low: crate::controller::low_priority::LowPriority::start("artgc-big")
            .map_err(ControllerError::Thread)?,
        reader: ClusterReader::new(
            client.clone(),
            config.controller_config.clone(),
            config.policy.clone(),
        ),
        store: ObjectStore::new(config.store.clone()).with_web_identity(WebIdentityConfig {
            client: client.clone(),
            sts: config.sts.clone(),
        }),
        index: AsyncMutex::new(KeyIndex::default()),
        attempts: Default::default(),
        queue: WorkQueue::new(
            |k: &String| split_key(k).0,
            config.per_namespace_concurrency(),
        ),
        health: health.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        synced: watch::channel(false).0,
        client,
        config,
    });
    let mut tasks = JoinSet::new();

    match shared.config.leader_election.clone() {
        None => {
            leader_tx.send_replace(true);
            shared.metrics().leader.set(1);
            let stop = stop.clone();
            tasks.spawn(async move {
                stop.cancelled().await;
                drop(leader_tx);
            });
        }
        Some(le) => {
            let manager = kube_lease_manager::LeaseManagerBuilder::new(
                shared.client.clone(),
                le.lease_name.clone(),
            )
            .with_namespace(le.namespace.clone())
            .with_identity(le.identity.clone())
            .with_duration(le.duration)
            .with_grace(le.duration.div_ceil(3).max(1))
            .build()
            .await
            .map_err(|e| ControllerError::Lease(e.to_string()))?;
            tasks.spawn(guard_lease(shared.clone(), le.clone(), stop.clone()));
            let shared2 = shared.clone();
            let stop2 = stop.clone();
            tasks.spawn(async move {
                let (mut rx, task) = manager.watch().await;
                loop {
                    let leading = *rx.borrow_and_update();
                    leader_tx.send_replace(leading);
                    shared2.metrics().leader.set(i64::from(leading));
                    info!(leading, "leadership");
                    tokio::select! {
                        _ = stop2.cancelled() => break,
                        changed = rx.changed() => if changed.is_err() { break },
                    }
                }
                // On shutdown, passes stop between batches; the lease is released only once
                // the workers are done, so the next leader never runs beside one of ours.
                let deadline = Instant::now() + shared2.config.shutdown_grace;
                while shared2.health.workers_running() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Stepping down releases the lease for the next leader.
                leader_tx.send_replace(false);
                shared2.metrics().leader.set(0);
                drop(rx);
                match task.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "releasing the lease"),
                    Err(e) => warn!(error = %e, "lease task"),
                }
            });
        }
    }

    tasks.spawn(watch_workflows(shared.clone(), stop.clone()));
    for _ in 0..shared.config.concurrency.max(1) {
        tasks.spawn(worker(shared.clone(), leader_rx.clone(), stop.clone()));
    }
    Ok(ControllerHandle {
        admin_addr,
        health,
        stop,
        tasks,
    })
}

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

async fn watch_workflows(shared: Arc<Shared>, stop: CancellationToken) {
    let health = shared.health.clone();
    let _running = health.watch();
    // Small pages: a list page of Workflows is held in memory whole while it is indexed.
    let cfg = watcher::Config::default()
        .labels(&label_selector(shared.config.instance_id.as_deref()))
        .page_size(WATCH_PAGE_SIZE);
    let apis: Vec<Api<WatchedWorkflow>> = if shared.config.namespaces.is_empty() {
        vec![Api::all(shared.client.clone())]
    } else {
        shared
            .config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(shared.client.clone(), ns))
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
            health.watch_result(ev.is_ok());
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
    shared: &'a Shared,
    backlog: &'a Backlog,
    /// Streams (one per watched namespace, or one for all) to list before collecting.
    waiting_for: usize,
    synced_streams: HashSet<usize>,
    /// Keys seen during each stream's (re-)list, to drop those that vanished meanwhile.
    relist: HashMap<usize, HashSet<String>>,
}

/// A big Workflow's text is not kept waiting: it is read again when its turn comes.
fn applied(wf: WatchedWorkflow) -> Change {
    if is_big(wf.raw.get()) {
        Change::Reread
    } else {
        Change::Apply(Box::new(wf))
    }
}

fn watched_key(wf: &WatchedWorkflow) -> String {
    key_of(
        wf.metadata.namespace.as_deref().unwrap_or("default"),
        wf.metadata.name.as_deref().unwrap_or(""),
    )
}

impl WatchState<'_> {
    async fn handle(&mut self, stream: usize, ev: Event<WatchedWorkflow>) {
        let shared = self.shared;
        match ev {
            Event::Init => {
                self.relist.insert(stream, HashSet::new());
            }
            Event::InitApply(wf) => {
                let key = watched_key(&wf);
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
                    let mut index = shared.index.lock().await;
                    index.retain_workflows(keep);
                    index_gauges(shared, &index);
                    drop(index);
                    let mut attempts = shared.attempts.lock().expect("lock");
                    attempts.retain(|k, _| keep(k));
                    shared
                        .metrics()
                        .workflows_watched
                        .set(attempts.len() as i64);
                }
                self.synced_streams.insert(stream);
                if self.synced_streams.len() >= self.waiting_for
                    && !shared.health.ready.load(Ordering::Relaxed)
                {
                    // Every listed workflow's keys are indexed before any pass runs: a pass
                    // must see every other workflow's keys.
                    self.backlog.idle().await;
                    shared.health.ready.store(true, Ordering::Relaxed);
                    shared.synced.send_replace(true);
                    info!("watch synced and indexed; ready");
                }
            }
            Event::Apply(wf) => {
                let key = watched_key(&wf);
                self.backlog.push(key, applied(wf)).await;
            }
            Event::Delete(wf) => {
                let key = watched_key(&wf);
                self.backlog.push(key, Change::Delete).await;
            }
        }
    }
}

/// Reads what the watch recorded, one workflow at a time: `big` indexers read the Workflows
/// too big to wait in the backlog, the others the rest.
async fn index(shared: &Shared, backlog: &Backlog, big: bool) {
    loop {
        let (key, change) = backlog.take(usize::from(big)).await;
        let read = match change {
            Change::Apply(wf) => Some(*wf),
            Change::Reread => {
                let (ns, name) = split_key(&key);
                match Api::<WatchedWorkflow>::namespaced(shared.client.clone(), ns)
                    .get_opt(name)
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
        shared
            .metrics()
            .workflows_pending
            .set(shared.queue.len() as i64);
    }
}

/// A workflow that is gone: out of the index, the queue and the attempt counts.
async fn forget_workflow(shared: &Shared, key: &str) {
    let mut index = shared.index.lock().await;
    index.remove_workflow(key);
    index_gauges(shared, &index);
    drop(index);
    shared.queue.forget(&key.to_string());
    let mut attempts = shared.attempts.lock().expect("lock");
    attempts.remove(key);
    shared
        .metrics()
        .workflows_watched
        .set(attempts.len() as i64);
}

fn index_gauges(shared: &Shared, index: &KeyIndex) {
    shared.metrics().keys_indexed.set(index.len() as i64);
    shared
        .metrics()
        .key_index_bytes
        .set(index.run_bytes() as i64);
}

/// Reduces one watched Workflow to its key uses and a decision to queue it.
async fn observe(shared: &Shared, wf: WatchedWorkflow) {
    let ns = wf
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = wf.metadata.name.clone().unwrap_or_default();
    let key = key_of(&ns, &name);
    let holds = has_finalizer(&wf.metadata, &shared.config.finalizer);
    let big = is_big(wf.raw.get());
    let _big = shared.big_turn(big).await;
    let WatchedWorkflow { metadata, raw } = wf;
    let input = {
        let ns = ns.clone();
        shared
            .cpu(big, move || WorkflowInput::from_json(raw.get(), &ns))
            .await
    };
    let queue = match input {
        WorkflowInput::Valid(w) => {
            let state = match shared.reader.state_for(&w, None).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(workflow = %key, error = %e, "reading repository ConfigMaps");
                    shared
                        .queue
                        .add(key, Instant::now() + shared.config.backoff_base);
                    return;
                }
            };
            // The workflow and its plan are also dropped there: freeing a big tree takes a while.
            let (wants, uses) = shared
                .cpu(big, move || {
                    let (wp, uses) = plan_alone(&w, &state);
                    (wants_pass(&w, &wp, holds), uses)
                })
                .await;
            let mut index = shared.index.lock().await;
            index.set_workflow(&key, uses);
            index_gauges(shared, &index);
            wants
        }
        // Unreadable: reported (condition, event) once it finished or is being deleted with our
        // finalizer (the force rule applies); it keeps its old index entries, to be safe.
        WorkflowInput::Invalid { .. } => {
            let completed = metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(artgc_core::model::LABEL_COMPLETED))
                .is_some_and(|v| v == "true");
            (holds && metadata.deletion_timestamp.is_some()) || completed
        }
    };
    {
        let mut attempts = shared.attempts.lock().expect("lock");
        attempts.entry(key.clone()).or_insert(0);
        shared
            .metrics()
            .workflows_watched
            .set(attempts.len() as i64);
    }
    if queue {
        debug!(workflow = %key, "queued");
        shared.queue.add(key, Instant::now());
    }
}

async fn worker(shared: Arc<Shared>, mut leader: watch::Receiver<bool>, stop: CancellationToken) {
    let health = shared.health.clone();
    let _running = health.worker();
    let mut synced = shared.synced.subscribe();
    tokio::select! {
        _ = stop.cancelled() => return,
        r = synced.wait_for(|s| *s) => if r.is_err() { return },
    }
    loop {
        // Only the leader acts.
        tokio::select! {
            _ = stop.cancelled() => return,
            r = leader.wait_for(|l| *l) => if r.is_err() { return },
        }
        let key = tokio::select! {
            _ = stop.cancelled() => return,
            _ = leader.wait_for(|l| !*l) => continue,
            k = shared.queue.next() => k,
        };
        let started = std::time::Instant::now();
        let work = async {
            match AssertUnwindSafe(reconcile(&shared, &key))
                .catch_unwind()
                .await
            {
                Ok(r) => r,
                Err(panic) => {
                    let what = panic_message(&*panic);
                    error!(workflow = %key, panic = %what, "reconcile panicked; the worker goes on");
                    report_internal(&shared, &key, &what).await;
                    Err(ReconcileError::Internal(what))
                }
            }
        };
        // Shutdown lets the reconcile finish, within the grace time; a kill aborts the task.
        let result = tokio::select! {
            r = work => Some(r),
            _ = async {
                stop.cancelled().await;
                tokio::time::sleep(shared.config.shutdown_grace).await;
            } => None,
        };
        let Some(result) = result else {
            warn!(workflow = %key, "shutdown: reconcile abandoned; the next leader resumes it");
            return;
        };
        let label = metrics::ResultLabel {
            result: if result.is_ok() { "ok" } else { "error" }.into(),
        };
        shared
            .metrics()
            .reconcile_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        let retry = match result {
            Ok(recheck) => {
                if let Some(a) = shared.attempts.lock().expect("lock").get_mut(&key) {
                    *a = 0;
                }
                recheck.map(|d| Instant::now() + d)
            }
            Err(e) => {
                let n = {
                    let mut attempts = shared.attempts.lock().expect("lock");
                    let a = attempts.entry(key.clone()).or_insert(0);
                    *a += 1;
                    *a
                };
                shared
                    .metrics()
                    .reconcile_errors
                    .get_or_create(&metrics::Category {
                        category: e.category().into(),
                    })
                    .inc();
                let delay = backoff(&shared.config, n);
                warn!(workflow = %key, attempt = n, retry_in = ?delay, error = %e, "reconcile failed");
                Some(Instant::now() + delay)
            }
        };
        shared.queue.done(&key, retry);
        shared
            .metrics()
            .workflows_pending
            .set(shared.queue.len() as i64);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// A pass that panicked: the condition and a Warning Event on the workflow, so its owner sees
/// it, as for any other failure.
async fn report_internal(shared: &Shared, key: &str, what: &str) {
    let (ns, name) = split_key(key);
    let api = workflows(&shared.client, Some(ns));
    let Ok(Some(obj)) = api.get_opt(name).await else {
        return;
    };
    let Ok(raw) = serde_json::to_value(&obj) else {
        return;
    };
    let message = artgc_core::outcome::condition_message(&[artgc_core::outcome::Failure {
        what: "workflow".into(),
        category: "internal",
        reason: format!("artgc failed internally ({what}); this is a bug"),
    }]);
    let mut update = artgc_core::outcome::StatusUpdate::none();
    update.condition = artgc_core::outcome::ConditionChange::Set(message.clone());
    let reference = object_ref(&raw);
    if let Err(e) = record::apply(&api, raw, &update, &shared.config.finalizer, "artgc", None).await
    {
        warn!(workflow = %key, error = %e, "recording an internal error");
    }
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: "ArtifactGCFailed".into(),
        note: Some(message),
        action: "Collect".into(),
        secondary: None,
    };
    if let Err(e) = shared.recorder.publish(&ev, &reference).await {
        error!(workflow = %key, error = %e, "publishing an Event");
    }
}

/// Exponential backoff with full jitter, capped.
fn backoff(config: &ControllerConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(config.backoff_max);
    let jitter = rand::rng().random_range(0.5..=1.0);
    exp.mul_f64(jitter)
}

fn object_ref(raw: &Value) -> ObjectReference {
    let m = &raw["metadata"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    ObjectReference {
        api_version: Some("argoproj.io/v1alpha1".into()),
        kind: Some("Workflow".into()),
        name: s(&m["name"]),
        namespace: s(&m["namespace"]),
        uid: s(&m["uid"]),
        resource_version: s(&m["resourceVersion"]),
        ..Default::default()
    }
}

fn parse_time(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

/// Reads the Lease every second and keeps until when it is ours: its `renewTime` plus its
/// duration, less a margin for the time a request takes. A Lease someone else holds, or one that
/// cannot be read, is not ours.
async fn guard_lease(shared: Arc<Shared>, le: LeaderElection, stop: CancellationToken) {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(shared.client.clone(), &le.namespace);
    let margin = jiff::SignedDuration::from_secs(1);
    loop {
        let until = match api.get_opt(&le.lease_name).await {
            Ok(Some(lease)) => lease.spec.and_then(|s| {
                let ours = s.holder_identity.as_deref() == Some(le.identity.as_str());
                let renewed = s.renew_time?.0;
                let secs = i64::from(s.lease_duration_seconds.unwrap_or(le.duration as i32));
                let end = renewed
                    .checked_add(jiff::SignedDuration::from_secs(secs))
                    .ok()?;
                ours.then(|| end.checked_sub(margin).ok()).flatten()
            }),
            _ => None,
        };
        *shared.lease_valid_until.lock().expect("lock") = until;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Fences a pass: nothing more is sent to S3 once the controller stops or loses its leadership,
/// and nothing is written to the Workflow without it.
struct Fence<'a>(&'a Shared);

impl Fence<'_> {
    fn leading(&self) -> bool {
        let elected = self.0.config.leader_election.is_some();
        let valid = || {
            self.0
                .lease_valid_until
                .lock()
                .expect("lock")
                .is_some_and(|t| t > jiff::Timestamp::now())
        };
        *self.0.leading.borrow() && (!elected || valid())
    }

    /// Before every write to a Workflow.
    fn check(&self) -> Result<(), ReconcileError> {
        match self.leading() {
            true => Ok(()),
            false => Err(ReconcileError::Fenced),
        }
    }
}

impl crate::execute::Progress for Fence<'_> {
    fn stopped(&self) -> bool {
        !self.leading() || self.0.stopping.is_cancelled()
    }
}

/// One pass over one workflow; `Ok(Some(d))` asks for another pass after `d` (artifacts kept
/// only for running workflows that read them: deleted once those finish).
#[tracing::instrument(name = "reconcile", skip(shared), fields(workflow = %key))]
async fn reconcile(shared: &Shared, key: &str) -> Result<Option<Duration>, ReconcileError> {
    let (ns, name) = split_key(key);
    let api = workflows(&shared.client, Some(ns));
    let fence = Fence(shared);
    // Read as text: its size decides whether it waits for the big-workflow place, and the
    // typed model is read from the text, not from a second copy of the tree.
    let Some(obj) = Api::<WatchedWorkflow>::namespaced(shared.client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        shared.index.lock().await.remove_workflow(key);
        return Ok(None);
    };
    let big = is_big(obj.raw.get());
    let _big = shared.big_turn(big).await;
    let (raw, input) = shared
        .cpu(big, move || {
            (serde_json::from_str::<Value>(obj.raw.get()), obj.input())
        })
        .await;
    let mut raw = raw.map_err(|e| RecordError::Build(e.to_string()))?;
    let input = Arc::new(input);
    let low = big.then_some(&shared.low);
    let finalizer = shared.config.finalizer.as_str();
    let holds = raw["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f == finalizer));
    let budget = shared.config.retry_budget;

    let (plan, execution, ctx) = match &*input {
        WorkflowInput::Valid(wf) if !wf.is_finished() => {
            // Running, or never started: the finalizer is the only thing to decide.
            let ctx = PassContext::of(wf, &raw, holds, budget);
            let change = artgc_core::outcome::finalizer_change(&ctx, true, false);
            if change != FinalizerChange::Keep {
                let mut update = artgc_core::outcome::StatusUpdate::none();
                update.finalizer = change;
                fence.check()?;
                record::apply(&api, raw, &update, finalizer, "artgc", low).await?;
                debug!(workflow = %key, ?change, "finalizer");
            }
            return Ok(None);
        }
        WorkflowInput::Valid(wf) => {
            let ctx = PassContext::of(wf, &raw, holds, budget);
            let names = {
                let input = input.clone();
                shared
                    .cpu(big, move || match &*input {
                        WorkflowInput::Valid(wf) => crate::api::named_secrets(wf),
                        WorkflowInput::Invalid { .. } => Default::default(),
                    })
                    .await
            };
            let plan = match shared.reader.state_for(wf, Some(names)).await {
                Ok(state) => {
                    // Planning a big workflow takes a while: only the shared-key check holds
                    // the index.
                    let input = input.clone();
                    let draft = shared
                        .cpu(big, move || {
                            artgc_core::plan::draft(
                                std::slice::from_ref(&*input),
                                &state,
                                &PlanOptions::default(),
                            )
                        })
                        .await;
                    draft.check_shared(Some(&*shared.index.lock().await))
                }
                // A failed pass like any other: reported, and counted toward the budget.
                Err(e) => GcPlan {
                    workflows: vec![WorkflowPlan::unplannable(
                        ns,
                        name,
                        artgc_core::error::InputError::Cluster {
                            what: "the workflow's ConfigMaps, Secrets and ServiceAccounts".into(),
                            message: e.to_string(),
                        },
                    )],
                },
            };
            let execution = if plan.artifacts().any(|(_, a)| a.connection.is_some()) {
                let probed = probe(&plan, &shared.store, &fence).await;
                let files: Vec<String> = probed
                    .files_to_mark()
                    .into_iter()
                    .map(|(w, a)| {
                        let ap = &plan.workflows[w].artifacts[a];
                        format!("{}/{}", ap.node, ap.name)
                    })
                    .collect();
                if !files.is_empty() {
                    // Before deleting: a crash after the delete must not let a later pass
                    // mistake the gone file for a directory.
                    fence.check()?;
                    match record::mark_probed_files(&api, raw, &files, "artgc", low).await? {
                        Some(v) => raw = v,
                        None => return Ok(None),
                    }
                }
                Some(delete(&plan, probed, &shared.store, false, &fence).await)
            } else {
                None
            };
            (plan, execution, ctx)
        }
        WorkflowInput::Invalid {
            namespace,
            name,
            error,
        } => {
            let plan = GcPlan {
                workflows: vec![WorkflowPlan::unplannable(namespace, name, error.clone())],
            };
            // Nothing can be read, so nothing can be pending: reported, and any finalizer of
            // ours released.
            let ctx = PassContext {
                finished: true,
                started: true,
                deleting: !raw["metadata"]["deletionTimestamp"].is_null(),
                has_finalizer: holds,
                force_finalizer_removal: false,
                attempt: 1,
                budget,
                may_need_gc: false,
                may_add_finalizer: false,
                processed: Default::default(),
                has_condition: artgc_core::outcome::has_gc_condition(&raw),
            };
            (plan, None, ctx)
        }
    };
    let wp = &plan.workflows[0];
    let outcome = assess(wp, 0, execution.as_ref(), &ctx);
    let reference = object_ref(&raw);
    let finished_at = parse_time(&raw["status"]["finishedAt"]);
    let deleted_at = parse_time(&raw["metadata"]["deletionTimestamp"]);
    fence.check()?;
    record::apply(&api, raw, &outcome.update, finalizer, "artgc", low).await?;
    report(
        shared,
        ns,
        key,
        &outcome,
        &reference,
        finished_at,
        deleted_at,
    )
    .await;
    match outcome.failures.first() {
        Some(f) => Err(ReconcileError::Gc(f.category)),
        None if outcome.pending && execution_stopped(execution.as_ref()) => {
            Err(ReconcileError::Fenced)
        }
        None if outcome.waiting_on_readers => Ok(Some(shared.config.reader_recheck)),
        None => Ok(None),
    }
}

/// Some artifact was not tried because the pass was stopped: the pass must run again.
fn execution_stopped(execution: Option<&crate::execute::Execution>) -> bool {
    execution.is_some_and(|e| {
        e.outcomes
            .values()
            .any(|o| o.error.as_ref().is_some_and(|e| e.is_cancelled()))
    })
}

/// Metrics, Events and logs for one recorded pass.
async fn report(
    shared: &Shared,
    ns: &str,
    key: &str,
    outcome: &PassOutcome,
    reference: &ObjectReference,
    finished_at: Option<jiff::Timestamp>,
    deleted_at: Option<jiff::Timestamp>,
) {
    let m = shared.metrics();
    for (strategy, r) in &outcome.reclaimed {
        let l = metrics::NamespaceStrategy {
            namespace: ns.into(),
            strategy: strategy.as_str().into(),
        };
        m.artifacts_deleted.get_or_create(&l).inc_by(r.artifacts);
        m.objects_deleted.get_or_create(&l).inc_by(r.objects);
        m.bytes_reclaimed.get_or_create(&l).inc_by(r.bytes);
    }
    for f in &outcome.failures {
        m.artifacts_failed
            .get_or_create(&metrics::Category {
                category: f.category.into(),
            })
            .inc();
    }
    for reason in &outcome.kept {
        m.artifacts_kept
            .get_or_create(&metrics::Reason {
                reason: (*reason).into(),
            })
            .inc();
    }
    let now = jiff::Timestamp::now();
    for s in &outcome.update.processed {
        let since = match s {
            Strategy::OnWorkflowDeletion => deleted_at,
            _ => finished_at.or(deleted_at),
        };
        if let Some(since) = since {
            let secs = now.duration_since(since).as_secs_f64().max(0.0);
            m.gc_latency
                .get_or_create(&metrics::StrategyLabel {
                    strategy: s.as_str().into(),
                })
                .observe(secs);
        }
    }
    if let FinalizerChange::Remove { forced } = outcome.update.finalizer {
        m.finalizers_removed
            .get_or_create(&metrics::Forced {
                forced: forced.to_string(),
            })
            .inc();
        if forced {
            warn!(workflow = %key, "finalizer removed by forceFinalizerRemoval with deletions still failing");
        } else {
            info!(workflow = %key, "finalizer removed");
        }
    }
    // Events of one reason and action form a series (a count, the first note), so each pass
    // and the forced release get their own action.
    let action = if deleted_at.is_some() {
        "CollectOnDeletion"
    } else {
        "CollectOnCompletion"
    };
    let mut events = Vec::new();
    let reported: Vec<_> = outcome
        .failures
        .iter()
        .chain(&outcome.notes)
        .cloned()
        .collect();
    if !reported.is_empty() {
        events.push(KubeEvent {
            type_: EventType::Warning,
            reason: "ArtifactGCFailed".into(),
            note: Some(artgc_core::outcome::condition_message(&reported)),
            action: action.into(),
            secondary: None,
        });
    } else if outcome.artifacts_deleted() > 0 {
        events.push(KubeEvent {
            type_: EventType::Normal,
            reason: "ArtifactGCSucceeded".into(),
            note: Some(format!(
                "deleted {} artifact(s): {} object(s), {} reclaimed",
                outcome.artifacts_deleted(),
                outcome.objects_deleted(),
                artgc_core::units::human_bytes(outcome.bytes_reclaimed())
            )),
            action: action.into(),
            secondary: None,
        });
    }
    if matches!(
        outcome.update.finalizer,
        FinalizerChange::Remove { forced: true }
    ) {
        events.push(KubeEvent {
            type_: EventType::Warning,
            reason: "ArtifactGCFinalizerForced".into(),
            note: Some(format!(
                "finalizer removed by forceFinalizerRemoval after the retry budget; left in the store: {}",
                artgc_core::outcome::condition_message(&outcome.failures)
            )),
            action: "RemoveFinalizer".into(),
            secondary: None,
        });
    }
    if outcome.artifacts_deleted() > 0 || !outcome.failures.is_empty() {
        info!(
            workflow = %key,
            artifacts = outcome.artifacts_deleted(),
            objects = outcome.objects_deleted(),
            bytes = outcome.bytes_reclaimed(),
            failed = outcome.failures.len(),
            "artifact GC pass"
        );
    }
    for ev in events {
        if let Err(e) = shared.recorder.publish(&ev, reference).await {
            error!(workflow = %key, error = %e, "publishing an Event");
        }
    }
}
