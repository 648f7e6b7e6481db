//! The shared-key index's memory with and without a namespace's bound: `--workflows` (18)
//! Workflows of one namespace, each with `--pods` (83,000) Pod nodes whose keys lie in their
//! pods' folders (Argo's default key format, one index entry per pod), indexed as the watch
//! indexes them, once unbounded and once with `--bound` (100,000, the controller's default).
//! Prints entries, workflows held coarser, the runs' bytes and the process's peak RSS.
//!
//! `cargo run --release --example bench_index [-- --workflows 18 --pods 83000 --bound 100000]`

use std::time::Instant;

use artgc_core::keys::{KeyIndex, WorkflowKeyUse};
use artgc_core::location::S3Target;

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// (VmRSS, VmHWM) of this process in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn uses(name: &str, pods: usize) -> Vec<WorkflowKeyUse> {
    (0..pods)
        .map(|i| WorkflowKeyUse {
            target: S3Target {
                endpoint: "http://minio.argo:9000".into(),
                bucket: "artifacts".into(),
                key: format!("artifacts/{name}/{name}-{i:010}/out.tgz"),
                store: "minio.argo.svc.cluster.local:9000".into(),
            },
            due: false,
            label: String::new(),
            reads: false,
            floor: 0,
        })
        .collect()
}

fn run(index: &mut KeyIndex, workflows: usize, pods: usize) -> f64 {
    let start = Instant::now();
    for w in 0..workflows {
        let name = format!("big-{w}");
        index.set_workflow(&format!("tenant/{name}"), uses(&name, pods));
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let workflows = flag("--workflows", 18);
    let pods = flag("--pods", 83_000);
    let bound = flag("--bound", 100_000);
    // Bounded first: the peak RSS only grows, so the unbounded run's peak is its own.
    for (what, mut index) in [
        (
            format!("bound {bound}"),
            KeyIndex::with_namespace_bound(bound),
        ),
        ("unbounded".to_string(), KeyIndex::default()),
    ] {
        let secs = run(&mut index, workflows, pods);
        let share = index.namespaces();
        let coarse = share.first().map_or(0, |s| s.coarse_workflows);
        let (now, peak) = rss();
        println!(
            "{what}: {workflows} workflows x {pods} pods: {} entries, {coarse} workflows held coarser, runs {:.1} MiB, indexed in {secs:.2} s; RSS {now:.0} MiB, peak {peak:.0} MiB",
            index.len(),
            index.run_bytes() as f64 / 1048576.0,
        );
        drop(index);
    }
}
