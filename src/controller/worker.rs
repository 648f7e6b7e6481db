//! Workers: each takes a due key from the queue, reads the Workflow fresh and runs one pass
//! (plan, probe, mark probed files, delete, judge, record), fenced by leadership. A failed pass
//! is retried with backoff; a panic is reported on the workflow and the worker goes on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::Api;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::execute::Run;
use crate::kube_api::{WatchedWorkflow, workflows};
use crate::metrics;
use crate::pass::{Finalizers, PassError, Passed, Recorder, Subject};
use crate::record::{self, RecordError};
use artgc_core::execution::Execution;
use artgc_core::inventory::WorkflowInput;
use artgc_core::model::Workflow;
use artgc_core::outcome::{FinalizerChange, PassContext};
use artgc_core::plan::{GcPlan, PlanOptions, WorkflowPlan};

use super::events::{Since, publish_internal_error, publish_outcome};
use super::leader::Fence;
use super::{ControllerConfig, ControllerState, ReconcileError, is_big};
use artgc_core::keys::WorkflowKey;

pub(super) async fn worker(
    shared: Arc<ControllerState>,
    mut claim: watch::Receiver<super::leader::Claim>,
    stop: CancellationToken,
) {
    let admin_state = shared.admin_state.clone();
    let _running = admin_state.worker();
    let mut synced = shared.synced.subscribe();
    tokio::select! {
        _ = stop.cancelled() => return,
        r = synced.wait_for(|s| *s) => if r.is_err() { return },
    }
    loop {
        // Only the leader acts.
        tokio::select! {
            _ = stop.cancelled() => return,
            r = claim.wait_for(|c| c.leading) => if r.is_err() { return },
        }
        let key = tokio::select! {
            _ = stop.cancelled() => return,
            _ = claim.wait_for(|c| !c.leading) => continue,
            k = shared.queue.next() => k,
        };
        let mut timer = metrics::ReconcileTimer::start(shared.metrics());
        let _pass = admin_state.pass();
        let deadline = shared.config.pass_deadline;
        let work = async {
            // Dropping a pass at its deadline is what a crash does: every step can be redone.
            let pass = AssertUnwindSafe(reconcile(&shared, &key)).catch_unwind();
            match tokio::time::timeout(deadline, pass).await {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => {
                    let what = panic_message(&*panic);
                    error!(workflow = %key, panic = %what, "reconcile panicked; the worker goes on");
                    publish_internal_error(&shared, &key, &what).await;
                    Err(ReconcileError::Internal(what))
                }
                Err(_) => Err(ReconcileError::Deadline(deadline)),
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
        timer.ended(result.is_ok());
        drop(timer);
        match result {
            Ok(recheck) => shared.queue.done(&key, recheck.map(|d| Instant::now() + d)),
            Err(e) => {
                if e.is_own() {
                    shared
                        .metrics()
                        .reconcile_errors
                        .get_or_create(&metrics::Category {
                            category: e.category(),
                        })
                        .inc();
                }
                let (n, delay) = shared.queue.failed(&key, |n| backoff(&shared.config, n));
                warn!(workflow = %key, attempt = n, retry_in = ?delay, error = %e, "reconcile failed");
            }
        }
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
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

fn parse_time(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

/// One pass over one workflow; `Ok(Some(d))` asks for another pass after `d` (artifacts kept
/// only for running workflows that read them: deleted once those finish).
#[tracing::instrument(name = "reconcile", skip(shared), fields(workflow = %key))]
async fn reconcile(
    shared: &ControllerState,
    key: &WorkflowKey,
) -> Result<Option<Duration>, ReconcileError> {
    let (ns, name) = (key.namespace(), key.name());
    // Read as text: its size decides whether it waits for the big-workflow place, and the
    // typed model is read from the text, not from a second copy of the tree.
    let Some(obj) = Api::<WatchedWorkflow>::namespaced(shared.client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        shared.index.delete(key).await;
        return Ok(None);
    };
    let big = is_big(obj.raw.get());
    let _big = shared.big_turn(big).await;
    let limit = shared.config.max_node_status_bytes;
    let (raw, input) = shared
        .cpu(big, move || {
            (
                serde_json::from_str::<Value>(obj.raw.get()),
                obj.input().unpacked(limit),
            )
        })
        .await;
    let pass = Pass {
        shared,
        key,
        api: workflows(&shared.client, Some(ns)),
        fence: Fence(shared),
        raw: raw.map_err(RecordError::Parse)?,
        big,
    };
    let holds = pass.raw["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f == pass.finalizer()));
    let budget = shared.config.retry_budget;
    let input = Arc::new(input);
    if let WorkflowInput::Valid(wf) = &*input
        && !wf.is_finished()
    {
        let ctx = PassContext::of(wf, &pass.raw, holds, budget);
        return pass.running(&ctx).await;
    }
    pass.collect(input, budget).await
}

/// What the queue does after a recorded pass: retry a failure (with backoff), retry a pass
/// that was stopped before it was done, look again later for readers that still run, or
/// nothing more.
fn after_pass(
    outcome: &artgc_core::outcome::PassOutcome,
    execution: &Execution,
    reader_recheck: Duration,
) -> Result<Option<Duration>, ReconcileError> {
    match outcome.failures.first() {
        Some(f) => Err(ReconcileError::Gc(f.category)),
        None if outcome.pending && execution_stopped(execution) => Err(ReconcileError::Fenced),
        None if outcome.waiting_on_readers => Ok(Some(reader_recheck)),
        None => Ok(None),
    }
}

/// One pass over one workflow, as read for it.
struct Pass<'a> {
    shared: &'a ControllerState,
    key: &'a WorkflowKey,
    api: Api<kube::api::DynamicObject>,
    fence: Fence<'a>,
    /// The Workflow as last read or written.
    raw: Value,
    big: bool,
}

impl Pass<'_> {
    fn finalizer(&self) -> &str {
        &self.shared.config.finalizer
    }

    fn low(&self) -> Option<&crate::low_priority::LowPriority> {
        self.big.then_some(&self.shared.low)
    }

    /// A finished (or unreadable) workflow's pass: plan it, run the one [`crate::pass`], then
    /// tell what it did.
    async fn collect(
        mut self,
        input: Arc<WorkflowInput>,
        budget: u32,
    ) -> Result<Option<Duration>, ReconcileError> {
        let shared = self.shared;
        let (plan, input) = self.planned(input).await;
        let since = Since {
            finished_at: parse_time(&self.raw["status"]["finishedAt"]),
            deleted_at: parse_time(&self.raw["metadata"]["deletionTimestamp"]),
        };
        let object = std::mem::take(&mut self.raw);
        let recorder = Recorder {
            client: &shared.client,
            field_manager: "artgc",
            finalizer: &shared.config.finalizer,
            finalizers: Finalizers::Manage { budget },
            low: self.low(),
            max_node_status_bytes: shared.config.max_node_status_bytes,
            gate: &self.fence,
            subjects: vec![Subject {
                object,
                input: &input,
            }],
        };
        let run = Run::DELETE.with_stop(&self.fence);
        let passed = crate::pass::run(&plan, &shared.store, run, Some(recorder)).await;
        let Passed {
            execution,
            mut recorded,
        } = match passed {
            Ok(p) => p,
            Err(PassError::Gone(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // One subject, recorded: a pass that deletes always records what it did.
        let Some((outcome, written)) = recorded.pop() else {
            return Ok(None);
        };
        publish_outcome(shared, self.key, &outcome, &written?, since).await;
        after_pass(&outcome, &execution, shared.config.reader_recheck)
    }

    /// The plan of a finished or unreadable workflow, and the input it was made from (with
    /// the nodes Argo offloaded put back, where it had offloaded them).
    async fn planned(&self, input: Arc<WorkflowInput>) -> (GcPlan, Arc<WorkflowInput>) {
        let (ns, name) = (self.key.namespace(), self.key.name());
        match &*input {
            WorkflowInput::Valid(wf) => match self.hydrated(wf).await {
                Ok(None) => (self.plan(wf, input.clone()).await, input),
                Ok(Some(hydrated)) => match &*hydrated {
                    WorkflowInput::Valid(wf) => (self.plan(wf, hydrated.clone()).await, hydrated),
                    WorkflowInput::Invalid { .. } => unreachable!("hydrated is valid"),
                },
                Err(error) => {
                    let plan = GcPlan {
                        workflows: vec![WorkflowPlan::unplannable(ns, name, error)],
                    };
                    (plan, input)
                }
            },
            WorkflowInput::Invalid {
                namespace,
                name,
                error,
            } => {
                let plan = GcPlan {
                    workflows: vec![WorkflowPlan::unplannable(namespace, name, error.clone())],
                };
                (plan, input.clone())
            }
        }
    }

    /// Running, or never started: the finalizer is the only thing to decide.
    async fn running(mut self, ctx: &PassContext) -> Result<Option<Duration>, ReconcileError> {
        let change =
            artgc_core::outcome::finalizer_change(ctx, artgc_core::outcome::Collection::Pending);
        if change != FinalizerChange::Keep {
            let mut update = artgc_core::outcome::StatusUpdate::none();
            update.finalizer = change;
            self.fence.check()?;
            let raw = std::mem::take(&mut self.raw);
            record::apply(
                &self.api,
                raw,
                &update,
                self.finalizer(),
                "artgc",
                self.low(),
                self.shared.config.max_node_status_bytes,
            )
            .await?;
            debug!(workflow = %self.key, ?change, "finalizer");
        }
        Ok(None)
    }

    /// The workflow with the node status Argo offloaded to its database put back, or `None`
    /// when it has its nodes (or no database is configured: the plan then says offloaded).
    async fn hydrated(
        &self,
        wf: &Workflow,
    ) -> Result<Option<Arc<WorkflowInput>>, artgc_core::error::InputError> {
        if !artgc_core::nodes::is_offloaded(wf) {
            return Ok(None);
        }
        let shared = self.shared;
        let mut wf = wf.clone();
        match crate::offload::hydrate_from_cluster(&shared.offload, &shared.reader, &mut wf).await {
            Ok(true) => Ok(Some(Arc::new(WorkflowInput::Valid(Box::new(wf))))),
            Ok(false) => Ok(None),
            // Argo re-offloaded meanwhile (and its offload GC took the old row): not final.
            Err(artgc_core::error::InputError::Offload {
                permanent: true,
                source,
                ..
            }) if self.offload_version_changed(&wf).await => {
                Err(artgc_core::error::InputError::Offload {
                    category: "offload_version_changed",
                    permanent: false,
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the Workflow now records another offloaded version than `wf` (a failed read
    /// says yes: the pass is then retried rather than given up).
    async fn offload_version_changed(&self, wf: &Workflow) -> bool {
        match self.api.get_opt(self.key.name()).await {
            Ok(Some(now)) => {
                now.data["status"]["offloadNodeStatusVersion"].as_str()
                    != wf.status.offload_node_status_version.as_deref()
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The plan, with what the workflow's namespace holds (ConfigMaps, Secrets, service
    /// accounts) and every other workflow's keys. Planning a big workflow takes a while: only
    /// the shared-key check holds the index. A failed read is a failed pass like any other.
    /// `wf` is `input`'s workflow; `input` goes to the CPU work, which owns what it reads.
    async fn plan(&self, wf: &Workflow, input: Arc<WorkflowInput>) -> GcPlan {
        let shared = self.shared;
        let names = {
            let input = input.clone();
            shared
                .cpu(self.big, move || match &*input {
                    WorkflowInput::Valid(wf) => artgc_core::reads::secrets(wf),
                    WorkflowInput::Invalid { .. } => Default::default(),
                })
                .await
        };
        let state = match shared.reader.state_for(wf, Some(names)).await {
            Ok(state) => state,
            Err(e) => {
                let error = artgc_core::error::InputError::Cluster {
                    what: "the workflow's ConfigMaps, Secrets and ServiceAccounts".into(),
                    source: Arc::new(e),
                };
                let (ns, name) = (self.key.namespace(), self.key.name());
                return GcPlan {
                    workflows: vec![WorkflowPlan::unplannable(ns, name, error)],
                };
            }
        };
        let draft = shared
            .cpu(self.big, move || {
                artgc_core::plan::draft(
                    std::slice::from_ref(&*input),
                    &state,
                    &PlanOptions::default(),
                )
            })
            .await;
        draft.check_shared(Some(&*shared.index.keys().await))
    }
}

/// Some artifact was not tried because the pass was stopped: the pass must run again.
fn execution_stopped(execution: &Execution) -> bool {
    execution
        .outcomes
        .values()
        .any(|o| o.error.as_ref().is_some_and(|e| e.is_cancelled()))
}
