//! Leadership: a Lease held through kube-lease-manager, and the fence every pass checks
//! before each request to S3 and each write to a Workflow. The lease manager keeps saying
//! "leader" while it fails to renew, so the fence also reads the Lease itself.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
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

/// This replica's claim to lead, with one owner (this module) and one channel
/// (`ControllerState::claim`): what the lease manager says, and until when the Lease as last
/// read from the API server is ours. The lease manager keeps saying "leader" while it fails to
/// renew, so a pass is fenced by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claim {
    /// The lease manager (without election: the controller itself, until stopped) says this
    /// replica leads.
    pub(super) leading: bool,
    /// With election: until when the Lease as last read is ours (`None`: not proven).
    valid_until: Option<jiff::Timestamp>,
    elected: bool,
}

impl Claim {
    pub(super) fn new(elected: bool) -> Self {
        Self {
            leading: false,
            valid_until: None,
            elected,
        }
    }

    /// Whether this replica may act at `now`.
    pub(super) fn holds_at(&self, now: jiff::Timestamp) -> bool {
        self.leading && (!self.elected || self.valid_until.is_some_and(|t| t > now))
    }
}

/// What one read of the Lease proves to its would-be holder, and when to read it next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseReading {
    /// The fence stays open until then: the Lease's `renewTime` plus its duration, less a
    /// margin for a request in flight and clock skew. `None`: someone else's, or no holder.
    valid_until: Option<jiff::Timestamp>,
    /// The next read: just when the holder's renewal is due (the lease manager renews `grace`
    /// before the end), then often until it shows, so the fence does not close between a
    /// renewal and the read that sees it.
    next_read: jiff::Timestamp,
}

/// Timings that scale with the Lease: with a 3 s Lease, a fixed one-second margin and
/// one-second reads closed the fence for up to a second after every renewal.
const POLL: jiff::SignedDuration = jiff::SignedDuration::from_millis(200);

fn margin(duration_secs: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_millis((duration_secs * 100).clamp(200, 2000))
}

/// The seconds before the end of the Lease at which the lease manager renews it.
pub(super) fn grace(duration_secs: u64) -> u64 {
    duration_secs.div_ceil(3).max(1)
}

/// Reads a Lease as `identity` at `now` (`None`: unreadable or absent).
fn read_lease(
    spec: Option<&k8s_openapi::api::coordination::v1::LeaseSpec>,
    identity: &str,
    default_secs: u64,
    now: jiff::Timestamp,
) -> LeaseReading {
    let poll = now.checked_add(POLL).unwrap_or(now);
    let ours = spec.and_then(|s| {
        (s.holder_identity.as_deref() == Some(identity)).then_some(())?;
        let renewed = s.renew_time.as_ref()?.0;
        let secs = s
            .lease_duration_seconds
            .map(i64::from)
            .unwrap_or(default_secs as i64);
        let end = renewed
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .ok()?;
        let renewal_due = end
            .checked_sub(jiff::SignedDuration::from_secs(grace(secs as u64) as i64))
            .ok()?;
        Some((end.checked_sub(margin(secs)).ok()?, renewal_due))
    });
    match ours {
        Some((valid_until, due)) => LeaseReading {
            valid_until: Some(valid_until),
            next_read: due.max(poll),
        },
        None => LeaseReading {
            valid_until: None,
            next_read: poll.max(
                now.checked_add(jiff::SignedDuration::from_secs(1))
                    .unwrap_or(now),
            ),
        },
    }
}

/// Keeps the claim's `valid_until` from reads of the Lease. A failed read keeps what the last one
/// proved: that proof runs out by itself, and nobody can take the Lease before it does.
async fn guard_lease(shared: Arc<ControllerState>, le: LeaderElection, stop: CancellationToken) {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(shared.client.clone(), &le.namespace);
    loop {
        let next = match api.get_opt(&le.lease_name).await {
            Ok(lease) => {
                let reading = read_lease(
                    lease.as_ref().and_then(|l| l.spec.as_ref()),
                    &le.identity,
                    le.duration,
                    jiff::Timestamp::now(),
                );
                shared.claim.send_if_modified(|c| {
                    let changed = c.valid_until != reading.valid_until;
                    c.valid_until = reading.valid_until;
                    changed
                });
                reading.next_read
            }
            Err(e) => {
                warn!(error = %e, "reading the Lease");
                jiff::Timestamp::now() + POLL
            }
        };
        let wait = jiff::Timestamp::now()
            .duration_until(next)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(50));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fences a pass: nothing more is sent to S3 once the controller stops or loses its leadership,
/// and nothing is written to the Workflow without it.
pub(super) struct Fence<'a>(pub(super) &'a ControllerState);

impl Fence<'_> {
    fn leading(&self) -> bool {
        self.0.claim.borrow().holds_at(jiff::Timestamp::now())
    }

    /// Before every write to a Workflow.
    pub(super) fn check(&self) -> Result<(), ReconcileError> {
        match self.leading() {
            true => Ok(()),
            false => Err(ReconcileError::Fenced),
        }
    }
}

impl crate::execute::Stop for Fence<'_> {
    fn stopped(&self) -> bool {
        !self.leading() || self.0.stopping.is_cancelled()
    }
}

impl crate::pass::WriteGate for Fence<'_> {
    fn may_write(&self) -> bool {
        self.leading()
    }
}

/// Sets the claim's `leading`, telling the workers only of a change.
fn set_leading(shared: &ControllerState, leading: bool) {
    shared.claim.send_if_modified(|c| {
        let changed = c.leading != leading;
        c.leading = leading;
        changed
    });
}

/// Starts leadership: without election this replica leads until stopped; with it, the lease
/// manager's view goes into the claim and the Lease is watched by [`guard_lease`]. On
/// shutdown the Lease is released only after the workers are done.
pub(super) async fn spawn(
    shared: &Arc<ControllerState>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), ControllerError> {
    match shared.config.leader_election.clone() {
        None => {
            set_leading(shared, true);
            let (shared, stop) = (shared.clone(), stop.clone());
            tasks.spawn(async move {
                stop.cancelled().await;
                set_leading(&shared, false);
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
            .with_grace(grace(le.duration))
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
                    set_leading(&shared2, leading);
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
                set_leading(&shared2, false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn at(secs: f64) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(1_800_000_000_000 + (secs * 1000.0) as i64).unwrap()
    }

    fn lease(holder: &str, renewed: f64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_claim_holds_while_leading_and_with_election_while_the_lease_read_proves_it() {
        let claim = |elected, leading, valid_until: Option<f64>| Claim {
            leading,
            valid_until: valid_until.map(at),
            elected,
        };
        // (claim, now, holds)
        let cases = [
            ("no election, leading", claim(false, true, None), 0.0, true),
            (
                "no election, stopped",
                claim(false, false, None),
                0.0,
                false,
            ),
            ("elected, never proven", claim(true, true, None), 0.0, false),
            ("elected, proven", claim(true, true, Some(5.0)), 4.9, true),
            (
                "elected, proof ran out",
                claim(true, true, Some(5.0)),
                5.0,
                false,
            ),
            (
                "proven, but the manager stepped down",
                claim(true, false, Some(5.0)),
                1.0,
                false,
            ),
        ];
        for (what, c, now, want) in cases {
            assert_eq!(c.holds_at(at(now)), want, "{what}");
        }
    }

    #[test]
    fn a_lease_read_proves_validity_to_its_holder_only() {
        // (lease, read at, valid until, next read)
        let cases: &[(Option<LeaseSpec>, f64, Option<f64>, f64)] = &[
            // 3 s: renewal due at 2 s, valid until 2.7 s: the read after a renewal on time
            // comes before the fence closes.
            (Some(lease("a", 0.0, 3)), 0.1, Some(2.7), 2.0),
            // 15 s: renewal due at 10 s, valid until 13.5 s.
            (Some(lease("a", 0.0, 15)), 0.1, Some(13.5), 10.0),
            // Past the renewal and not renewed: read again soon.
            (Some(lease("a", 0.0, 3)), 2.1, Some(2.7), 2.3),
            // Run out: still read soon; the fence is closed by the time.
            (Some(lease("a", 0.0, 3)), 5.0, Some(2.7), 5.2),
            // Another holder, or none: nothing proven.
            (Some(lease("b", 0.0, 3)), 0.1, None, 1.1),
            (None, 0.1, None, 1.1),
            (Some(LeaseSpec::default()), 0.1, None, 1.1),
            // Margin: 2 s at most.
            (Some(lease("a", 0.0, 60)), 0.0, Some(58.0), 40.0),
        ];
        for (spec, now, valid, next) in cases {
            let r = read_lease(spec.as_ref(), "a", 3, at(*now));
            assert_eq!(r.valid_until, valid.map(at), "{spec:?} at {now}");
            assert_eq!(r.next_read, at(*next), "{spec:?} at {now}");
        }
    }

    #[test]
    fn the_fence_outlasts_the_renewal_for_every_allowed_duration() {
        // The CLI allows 3 s and up: the renewal (due `grace` before the end) and a read soon
        // after it fit before the margin closes the fence.
        for secs in 3..=120u64 {
            let due = secs - grace(secs);
            let closes = jiff::SignedDuration::from_secs(secs as i64) - margin(secs as i64);
            let slack = closes - jiff::SignedDuration::from_secs(due as i64) - POLL;
            assert!(
                slack >= jiff::SignedDuration::from_millis(400),
                "{secs} s: {slack:?}"
            );
        }
    }
}
