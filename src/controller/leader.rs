//! Leadership: a Lease held through kube-lease-manager, and the fence every pass checks
//! before each request to S3 and each write to a Workflow. The lease manager keeps saying
//! "leader" while it fails to renew, so the fence also reads the Lease itself.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ControllerError, ControllerState, ReconcileError};

/// Leader election with a Lease.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Lease duration, seconds; the holder renews well within it.
    pub duration: u64,
}

/// Reads the Lease every second and keeps until when it is ours: its `renewTime` plus its
/// duration, less a margin for the time a request takes. A Lease someone else holds, or one that
/// cannot be read, is not ours.
async fn guard_lease(shared: Arc<ControllerState>, le: LeaderElection, stop: CancellationToken) {
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
pub(super) struct Fence<'a>(pub(super) &'a ControllerState);

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
    pub(super) fn check(&self) -> Result<(), ReconcileError> {
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

/// Starts leadership: without election this replica leads until stopped; with it, the lease
/// manager's view is forwarded to `leader` and the Lease is watched by [`guard_lease`]. On
/// shutdown the Lease is released only after the workers are done.
pub(super) async fn spawn(
    shared: &Arc<ControllerState>,
    leader_tx: watch::Sender<bool>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), ControllerError> {
    match shared.config.leader_election.clone() {
        None => {
            leader_tx.send_replace(true);
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
            .map_err(ControllerError::Lease)?;
            tasks.spawn(guard_lease(shared.clone(), le.clone(), stop.clone()));
            let shared2 = shared.clone();
            let stop2 = stop.clone();
            tasks.spawn(async move {
                let (mut rx, task) = manager.watch().await;
                loop {
                    let leading = *rx.borrow_and_update();
                    leader_tx.send_replace(leading);
                    info!(leading, "leadership");
                    tokio::select! {
                        _ = stop2.cancelled() => break,
                        changed = rx.changed() => if changed.is_err() { break },
                    }
                }
                // On shutdown, passes stop between batches; the lease is released only once
                // the workers are done, so the next leader never runs beside one of ours.
                let deadline = Instant::now() + shared2.config.shutdown_grace;
                while shared2.admin_state.workers_running() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Stepping down releases the lease for the next leader.
                leader_tx.send_replace(false);
                drop(rx);
                match task.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "releasing the lease"),
                    Err(e) => warn!(error = %e, "lease task"),
                }
            });
        }
    }
    Ok(())
}
