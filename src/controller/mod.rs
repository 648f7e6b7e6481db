//! `artgc controller`: watches Workflows, queues those with GC work, and for each one gathers
//! its inputs, runs the one GC [`crate::pass`] `artgc purge` runs too, records the outcome on the
//! Workflow, and holds or releases the finalizer.
//!
//! - `workflow_watch`: the watch driver. It keeps no Workflow objects: each event is reduced, by
//!   indexers beside the stream (fed through `backlog`), to the workflow's S3 key uses (the
//!   shared-key `index`) and a yes/no on queueing it.
//! - `queue`: due and backoff times, per-namespace fairness, failures in a row.
//! - `worker`: takes a key, reads the Workflow fresh, runs one pass (`reconcile`).
//! - [`leader`]: the Lease and the fence every pass checks before it sends or writes.
//! - `events`: metrics, Kubernetes Events and logs of a pass.
//!
//! Why not `kube::runtime::Controller`: its `applier` reconciles objects from a reflector's
//! store, so it keeps every Workflow in memory, while this watch keeps only key uses (a
//! Workflow can be megabytes; a cluster has tens of thousands). It also has no per-namespace
//! fairness and no place for the index's "every workflow listed before any pass" rule.

mod backlog;
mod events;
mod index;
pub mod leader;
mod queue;
mod worker;
mod workflow_watch;

pub use leader::LeaderElection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::identity::WebIdentityConfig;
use crate::kube_api::ClusterReader;
use crate::metrics::{self, Metrics};
use crate::record::RecordError;
use crate::store::{ObjectStore, StoreOptions};
use artgc_core::cluster::ArgoConfigMapRef;
use artgc_core::keys::WorkflowKey;
use artgc_core::model::FINALIZER_ARTIFACT_GC;
use index::WorkflowIndex;
use queue::WorkQueue;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    /// Argo instance id; `None` handles workflows without the instance label.
    pub instance_id: Option<String>,
    pub finalizer: String,
    pub argo_config_map: ArgoConfigMapRef,
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
    /// The longest one pass may take before it is abandoned and retried.
    pub pass_deadline: Duration,
    /// The longest the reads for one workflow (its ConfigMaps, Secrets, ServiceAccounts) may
    /// take, in a pass or in the watch.
    pub api_timeout: Duration,
    /// How long one watch request may stay open before the API server ends it and the watch
    /// resumes from where it was; a watch that receives nothing for this long (plus 5 s) is
    /// taken for dead and re-made (a connection a load balancer silently dropped).
    pub watch_timeout: Duration,
    /// Entries one namespace's workflows may hold in the shared-key index before a workflow's
    /// keys are held coarser.
    pub index_keys_per_namespace: usize,
    /// The most decompressed or offloaded node status read per Workflow
    /// (`--max-node-status-bytes`).
    pub max_node_status_bytes: u64,
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
            argo_config_map: ArgoConfigMapRef::default(),
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
            pass_deadline: Duration::from_secs(600),
            api_timeout: Duration::from_secs(30),
            max_node_status_bytes: artgc_core::nodes::DEFAULT_MAX_DECOMPRESSED,
            watch_timeout: Duration::from_secs(60),
            index_keys_per_namespace: 100_000,
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
    Admin(#[source] std::io::Error),
    #[error("leader election: {0}")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    #[error("starting the big-workflow thread: {0}")]
    Thread(#[source] std::io::Error),
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
    /// The pass ran past `--pass-deadline` (a request that never answered): abandoned, as a
    /// crash would leave it, and retried.
    #[error("the pass ran past its deadline of {0:?} and was abandoned")]
    Deadline(Duration),
}

impl From<crate::pass::PassError> for ReconcileError {
    fn from(e: crate::pass::PassError) -> Self {
        use crate::pass::PassError;
        match e {
            PassError::Record { source, .. } => Self::Record(source),
            // A pass that finds its Workflow gone has nothing left to do; callers stop first.
            PassError::Gone(_) | PassError::Fenced(_) => Self::Fenced,
        }
    }
}

impl ReconcileError {
    /// artgc's own failure: artifact failures are counted per artifact (and namespace)
    /// already, and a fenced pass is leadership or shutdown at work, not an error.
    fn is_own(&self) -> bool {
        !matches!(self, Self::Gc(_) | Self::Fenced)
    }

    fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube_api",
            Self::Record(e) => e.category(),
            Self::Gc(c) => c,
            Self::Internal(_) => "internal",
            Self::Fenced => "fenced",
            Self::Deadline(_) => "deadline",
        }
    }
}

struct ControllerState {
    /// Every request but the watch's: bounded by a read timeout where built from a config
    /// (see [`KubeClients`]).
    client: Client,
    /// The watch's long-lived streams, which its own idle timeout bounds.
    watch_client: Client,
    config: ControllerConfig,
    reader: ClusterReader,
    /// Argo's database, for offloaded node status.
    offload: crate::offload::OffloadReader,
    store: ObjectStore,
    index: WorkflowIndex,
    queue: WorkQueue<WorkflowKey>,
    admin_state: Arc<AdminState>,
    recorder: Recorder,
    /// True once the watch delivered its first full list: no workflow is collected before
    /// every other workflow's keys are in the index.
    synced: watch::Sender<bool>,
    /// This replica's claim to lead ([`leader::Claim`]): workers wait on it, every request
    /// and record is fenced by it.
    claim: watch::Sender<leader::Claim>,
    /// Cancelled on shutdown: passes stop between batches.
    stopping: CancellationToken,
    /// One big Workflow (see [`is_big`]) is read and planned at a time, by a pass or an
    /// indexer: parsed, one takes tens of times its text in memory, and seconds of CPU.
    big: tokio::sync::Semaphore,
    /// Where a big Workflow's CPU work runs (see [`crate::low_priority`]).
    low: crate::low_priority::LowPriority,
}

/// Workflow text above which reading and planning it is serialized (see `ControllerState::big`).
const BIG_WORKFLOW_BYTES: usize = 256 << 10;

/// Big: long text, or compressed nodes (small text, up to `--max-node-status-bytes` once
/// decompressed). Parsed, a Workflow takes tens of times its text in memory.
fn is_big(text: &str) -> bool {
    text.len() > BIG_WORKFLOW_BYTES || text.contains("\"compressedNodes\"")
}

impl ControllerState {
    fn metrics(&self) -> &Metrics {
        &self.admin_state.metrics
    }

    /// CPU work of a pass or an indexer: a big Workflow's on the low-priority thread, any
    /// other's in place.
    async fn cpu<T: Send + 'static>(&self, big: bool, f: impl FnOnce() -> T + Send + 'static) -> T {
        crate::low_priority::run_on(big.then_some(&self.low), f).await
    }

    /// The big-workflow place (see `big`), for a big Workflow; nothing to wait for otherwise.
    async fn big_turn(&self, big: bool) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match big {
            true => Some(self.big.acquire().await.expect("never closed")),
            false => None,
        }
    }
}

impl metrics::StateSource for ControllerState {
    fn snapshot(&self) -> metrics::StateSnapshot {
        let size = self.index.size();
        metrics::StateSnapshot {
            workflows_pending: self.queue.len(),
            workflows_watched: size.watched,
            keys_indexed: size.keys_indexed,
            key_index_bytes: size.run_bytes,
            leader: self.claim.borrow().leading,
            watch_ready: self
                .admin_state
                .ready
                .load(std::sync::atomic::Ordering::Relaxed),
            watch_failing_seconds: self.admin_state.watch_failing_for().as_secs_f64(),
            waiting: self.index.waiting(jiff::Timestamp::now()),
            coarse: self.index.coarse(),
        }
    }
}

/// A running controller.
pub struct ControllerHandle {
    pub admin_addr: SocketAddr,
    pub admin_state: Arc<AdminState>,
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

/// Starts the controller's tasks: admin server, leader election, watch and workers.
/// The controller's API clients: one for the watch's streams, which must stay open for minutes,
/// and one for every other request, whose connections a read timeout bounds, so that an API
/// server that accepts a request and never answers fails it instead of holding a worker.
#[derive(Clone)]
pub struct KubeClients {
    pub watch: Client,
    pub requests: Client,
}

impl From<Client> for KubeClients {
    /// One client for both (its own timeouts, if any, for both).
    fn from(client: Client) -> Self {
        Self {
            watch: client.clone(),
            requests: client,
        }
    }
}

impl KubeClients {
    /// Both clients from one config; requests time out after `timeout` without a byte of
    /// answer (counted from when the request was written, not from when a pooled connection
    /// went idle).
    pub fn from_config(config: kube::Config, timeout: Duration) -> Result<Self, kube::Error> {
        let watch = Client::try_from(config.clone())?;
        let mut requests = config;
        requests.read_timeout = Some(timeout);
        requests.write_timeout = Some(timeout);
        requests.reset_reader_on_write = true;
        Ok(Self {
            watch,
            requests: Client::try_from(requests)?,
        })
    }
}

pub async fn start(
    clients: impl Into<KubeClients>,
    config: ControllerConfig,
) -> Result<ControllerHandle, ControllerError> {
    let KubeClients {
        watch: watch_client,
        requests: client,
    } = clients.into();
    let mut admin = AdminState::new(Metrics::new());
    admin.stalled_after = config.pass_deadline + Duration::from_secs(300);
    let admin_state = Arc::new(admin);
    let stop = CancellationToken::new();
    let admin_addr = admin::serve(config.admin_addr, admin_state.clone(), stop.clone())
        .await
        .map_err(ControllerError::Admin)?;
    let reporter = Reporter {
        controller: "artgc".into(),
        instance: config.leader_election.as_ref().map(|l| l.identity.clone()),
    };
    let shared = Arc::new(ControllerState {
        claim: watch::Sender::new(leader::Claim::new(config.leader_election.is_some())),
        stopping: stop.clone(),
        big: tokio::sync::Semaphore::new(1),
        low: crate::low_priority::LowPriority::start("artgc-big")
            .map_err(ControllerError::Thread)?,
        reader: ClusterReader::new(
            client.clone(),
            config.argo_config_map.clone(),
            config.policy.clone(),
        )
        .with_timeout(config.api_timeout),
        offload: crate::offload::OffloadReader::new(config.max_node_status_bytes),
        store: ObjectStore::new(config.store.clone())
            .with_web_identity(WebIdentityConfig {
                client: client.clone(),
                sts: config.sts.clone(),
            })
            .with_request_counter(admin_state.metrics.s3_requests.clone()),
        index: WorkflowIndex::with_namespace_bound(config.index_keys_per_namespace),
        queue: WorkQueue::new(
            |k: &WorkflowKey| k.namespace(),
            config.per_namespace_concurrency(),
        ),
        admin_state: admin_state.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        synced: watch::channel(false).0,
        client,
        watch_client,
        config,
    });
    let source: Arc<dyn metrics::StateSource> = shared.clone();
    admin_state.metrics.observe_state(Arc::downgrade(&source));
    let mut tasks = JoinSet::new();

    leader::spawn(&shared, &stop, &mut tasks).await?;

    tasks.spawn(workflow_watch::watch_workflows(
        shared.clone(),
        stop.clone(),
    ));
    for _ in 0..shared.config.concurrency.max(1) {
        tasks.spawn(worker::worker(
            shared.clone(),
            shared.claim.subscribe(),
            stop.clone(),
        ));
    }
    Ok(ControllerHandle {
        admin_addr,
        admin_state,
        stop,
        tasks,
    })
}
