//! A thread of its own, at a lower scheduling priority, for the seconds of CPU a big Workflow
//! costs (parsing, decompressing, planning): the runtime's workers stay free for the passes of
//! every other namespace, and the kernel serves them first when the cores are busy.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// Niceness of the thread: above the runtime's workers (0), below idle work (19).
const NICE: i32 = 10;

pub struct LowPriority {
    jobs: mpsc::Sender<Job>,
}

impl LowPriority {
    /// Starts the thread; it ends when this is dropped.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread and waits for it without holding a runtime worker. A panic in `f`
    /// resumes in the caller, as if `f` had run there.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // The thread is gone (it cannot panic, so only at shutdown): run it here.
            job();
        }
        match rx.await {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => unreachable!("every job sends its result"),
        }
    }
}

/// `f` on `low` when given, else in place.
pub async fn run_on<T: Send + 'static>(
    low: Option<&LowPriority>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match low {
        Some(low) => low.run(f).await,
        None => f(),
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux the niceness is per thread: `who = 0` is the calling thread. Raising it needs no
    // privilege; failing to is harmless.
    // SAFETY: a plain system call with no pointers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering the big-workflow thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_thread_at_a_lower_priority() {
        let lane = LowPriority::start("test-low").unwrap();
        let (name, nice) = lane
            .run(|| {
                let name = std::thread::current().name().map(str::to_string);
                #[cfg(target_os = "linux")]
                // SAFETY: as above.
                let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
                #[cfg(not(target_os = "linux"))]
                let nice = NICE;
                (name, nice)
            })
            .await;
        assert_eq!(name.as_deref(), Some("test-low"));
        assert!(nice >= NICE, "niceness {nice}");
    }

    #[tokio::test]
    async fn a_panic_resumes_in_the_caller_and_the_thread_lives_on() {
        let lane = std::sync::Arc::new(LowPriority::start("test-panic").unwrap());
        let l = lane.clone();
        let caught = tokio::spawn(async move { l.run(|| -> u8 { panic!("boom") }).await }).await;
        assert!(caught.unwrap_err().is_panic());
        assert_eq!(lane.run(|| 7).await, 7);
    }
}
