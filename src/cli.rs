//! The command line: argument definitions and the thin handlers that gather inputs, run the
//! planner and executor, and print the report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::{ClusterState, ControllerConfigRef};
use crate::error::InputError;
use crate::execute::{self, Progress};
use crate::manifests::Inventory;
use crate::plan::{self, Decision, GcPlan, PlanOptions, StrategyFilter};
use crate::report::Report;
use crate::store::{ObjectStore, StoreOptions};
use crate::telemetry::LogFormat;

/// Exit codes.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Garbage-collects the S3 artifacts of Argo Workflows.
///
/// artgc reads Argo Workflow objects, decides per artifact what Argo's `artifactGC` strategies
/// make due (OnWorkflowCompletion, OnWorkflowDeletion, Never), where each artifact lives and with
/// which credentials, and deletes the S3 keys directly: batched, concurrent, never outside an
/// artifact's own key or prefix, never a key another live workflow still uses.
#[derive(Debug, Parser)]
#[command(name = "artgc", version, about, long_about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain, env = "ARTGC_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level or filter, RUST_LOG style (e.g. `info`, `artgc=debug,aws=warn`).
    #[arg(long, global = true, default_value = "warn", env = "RUST_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what would be deleted, kept or skipped, and why. No network access.
    Plan(PlanArgs),
    /// Delete the artifacts that are due from S3.
    ///
    /// Probes each due artifact (file, directory, or already gone), then deletes its keys with
    /// batched DeleteObjects. Asks for confirmation on a terminal; needs --yes otherwise.
    /// Exit status: 0 all due artifacts deleted, 1 some failed, 2 usage or input error.
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Manifest files or directories (YAML or JSON; `kubectl get -o yaml` lists too). Holds the
    /// Workflows, and the ConfigMaps and Secrets their repositories and credentials come from.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Which strategies to act on. `due`: what the workflow's state makes due now.
    #[arg(long, value_enum, default_value_t = StrategyFilter::Due)]
    pub strategy: StrategyFilter,
    /// Name of Argo's workflow-controller ConfigMap (global artifact repository).
    #[arg(
        long,
        default_value = "workflow-controller-configmap",
        env = "ARTGC_CONTROLLER_CONFIGMAP"
    )]
    pub controller_configmap: String,
    /// Namespace of Argo's workflow-controller ConfigMap.
    #[arg(long, default_value = "argo", env = "ARTGC_CONTROLLER_NAMESPACE")]
    pub controller_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// List what would be deleted, with object counts and sizes; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// S3 requests in flight at once, across all buckets.
    #[arg(long, default_value_t = 16, env = "ARTGC_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Attempts per S3 request (and per key reported failed by DeleteObjects) on throttling,
    /// 5xx and network errors.
    #[arg(long, default_value_t = 5, env = "ARTGC_MAX_ATTEMPTS")]
    pub max_attempts: u32,
    /// A directory artifact with more objects than this fails instead of being deleted.
    #[arg(
        long,
        default_value_t = 100_000,
        env = "ARTGC_MAX_OBJECTS_PER_ARTIFACT"
    )]
    pub max_objects_per_artifact: usize,
    /// Timeout of one S3 request attempt, in seconds.
    #[arg(long, default_value_t = 30, env = "ARTGC_REQUEST_TIMEOUT")]
    pub request_timeout: u64,
}

impl StoreArgs {
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            concurrency: self.concurrency.into(),
            max_attempts: self.max_attempts,
            max_objects_per_artifact: self.max_objects_per_artifact,
            request_timeout: Duration::from_secs(self.request_timeout),
        }
    }
}

/// Runs a command; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Plan(args) => plan_command(&args),
        Command::Purge(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return EXIT_FAILED;
                }
            };
            rt.block_on(purge_command(&args))
        }
    }
}

/// Reads the manifests and builds the plan.
pub fn load_plan(source: &SourceArgs) -> Result<GcPlan, InputError> {
    let inventory = Inventory::read_paths(&source.files, &source.namespace)?;
    let mut state = ClusterState::new(ControllerConfigRef {
        namespace: source.controller_namespace.clone(),
        name: source.controller_configmap.clone(),
    });
    for cm in inventory.config_maps {
        state.insert_config_map(cm);
    }
    for s in inventory.secrets {
        state.insert_secret(s);
    }
    let opts = PlanOptions {
        filter: source.strategy,
    };
    Ok(plan::plan(&inventory.workflows, &state, &opts))
}

fn print(report: &Report, format: OutputFormat) -> u8 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match format {
        OutputFormat::Json => report.write_json(&mut out),
        OutputFormat::Table => report.write_table(&mut out),
    };
    match written.and_then(|_| out.flush()) {
        Ok(()) => EXIT_OK,
        // A closed pipe (`| head`) is not a failure of the run.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("error: writing the report: {e}");
            EXIT_FAILED
        }
    }
}

fn plan_command(args: &PlanArgs) -> u8 {
    let plan = match load_plan(&args.source) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let code = print(&Report::new(&plan, None, false), args.source.output);
    let invalid = plan.workflows.iter().any(|w| {
        matches!(
            w.error,
            Some(InputError::Field { .. } | InputError::Parse { .. })
        )
    });
    if invalid { EXIT_USAGE } else { code }
}

async fn purge_command(args: &PurgeArgs) -> u8 {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.dry_run && !args.yes && !interactive {
        eprintln!(
            "error: refusing to delete without --yes when not run from a terminal (or use --dry-run)"
        );
        return EXIT_USAGE;
    }
    let plan = match load_plan(&args.source) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let due: Vec<_> = plan
        .artifacts()
        .filter(|(_, a)| a.decision == Decision::Delete)
        .collect();
    if !args.dry_run && !args.yes && !due.is_empty() {
        let workflows: std::collections::BTreeSet<_> =
            due.iter().map(|(w, _)| (&w.namespace, &w.name)).collect();
        eprint!(
            "Delete {} artifact(s) of {} workflow(s) from S3? [y/N] ",
            due.len(),
            workflows.len()
        );
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("aborted; nothing deleted");
            return EXIT_FAILED;
        }
    }
    let store = ObjectStore::new(args.store.options());
    let bar = ProgressBar::new(due.len() as u64);
    let execution = execute::execute(&plan, &store, args.dry_run, &bar).await;
    bar.finish();
    let report = Report::new(&plan, Some(&execution), args.dry_run);
    let code = print(&report, args.source.output);
    if report.totals.failed > 0 {
        EXIT_FAILED
    } else {
        code
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn new(artifacts: u64) -> Self {
        if !std::io::stderr().is_terminal() || artifacts == 0 {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(artifacts);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message("probing");
        Self(Some(bar))
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Progress for ProgressBar {
    fn probed(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
    fn to_delete(&self, objects: u64) {
        if let Some(b) = &self.0 {
            b.set_message("deleting");
            b.set_position(0);
            b.set_length(objects);
        }
    }
    fn deleted(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}
