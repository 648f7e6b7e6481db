//! The command line: argument definitions and the thin handlers that gather inputs, run the
//! planner and executor, and print the report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::execute::{Mode, Progress, Run};
use crate::identity::StsSettings;
use crate::pass::{self, Finalizers, Recorder, Subject};
use crate::report::Report;
use crate::source::{ClusterRead, ClusterSelection, LoadedPlan, Source};
use crate::store::{ObjectStore, StoreOptions};
use crate::telemetry::LogFormat;
use artgc_core::cluster::ArgoConfigMapRef;
use artgc_core::error::InputError;
use artgc_core::plan::{Decision, PlanOptions, StrategyFilter};
use artgc_core::policy::Policy;

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
    #[arg(long, global = true, default_value = "warn", env = "RUST_LOG", value_parser = crate::telemetry::parse_filter)]
    pub log_level: String,
    /// The most decompressed node status (`status.compressedNodes`) read per Workflow; a
    /// larger one is an error for that Workflow (a decompression bomb must not take the
    /// process down).
    #[arg(long, global = true, default_value_t = artgc_core::nodes::DEFAULT_MAX_DECOMPRESSED, env = "ARTGC_MAX_NODE_STATUS_BYTES")]
    pub max_node_status_bytes: u64,
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
    /// Run the controller: watch Workflows, collect their artifacts when due, record the result
    /// on each Workflow, hold and release the finalizer.
    ///
    /// Uses the kubeconfig or in-cluster config, as kubectl does. Serves /metrics, /live and
    /// /ready on --admin-addr. Stops gracefully on SIGTERM or Ctrl-C.
    Controller(ControllerArgs),
    /// Watch the controller at work, in seconds, with no cluster and no S3 of your own.
    ///
    /// Starts an embedded S3 store (s3s-fs over a temporary folder) and the project's Kubernetes
    /// API test server, seeds a namespace with an artifact repository, a Secret and a few Argo
    /// Workflows with their artifacts, runs the real controller, completes some workflows and
    /// deletes others, and shows what happens. Leaves nothing behind.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
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
    /// Without it, Workflows are read from the cluster (kubeconfig or in-cluster config).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Workflows to act on by name (cluster source; default: all in scope).
    #[arg(value_name = "WORKFLOW", conflicts_with = "files")]
    pub names: Vec<String>,
    /// Namespace: of the Workflows read from the cluster, or for manifests that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Workflows of every namespace (cluster source).
    #[arg(short = 'A', long, conflicts_with_all = ["files", "names"])]
    pub all_namespaces: bool,
    /// Label selector for the Workflows, e.g. `app=etl,env!=prod` (cluster source).
    #[arg(short = 'l', long, conflicts_with = "files")]
    pub selector: Option<String>,
    /// The kubeconfig file (cluster source; default: `$KUBECONFIG`, `~/.kube/config`, else
    /// in-cluster), as kubectl's `--kubeconfig`.
    #[arg(long, value_name = "PATH", conflicts_with = "files")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (cluster source; default: its current context), as kubectl's
    /// `--context`.
    #[arg(long, value_name = "NAME", conflicts_with = "files")]
    pub context: Option<String>,
    /// Only Workflows that finished at least this long ago, e.g. `7d`, `12h`, `90m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Which strategies to act on. `due`: what the workflow's state makes due now.
    #[arg(long, value_enum, default_value_t = StrategyArg::Due)]
    pub strategy: StrategyArg,
    #[command(flatten)]
    pub argo: ArgoConfigArgs,
    #[command(flatten)]
    pub tenancy: TenancyArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Where Argo's workflow-controller keeps its config.
#[derive(Debug, Args, Clone)]
pub struct ArgoConfigArgs {
    /// Name of Argo's workflow-controller ConfigMap (global artifact repository, and the
    /// `persistence` settings for offloaded node status).
    #[arg(
        long,
        default_value = "workflow-controller-configmap",
        env = "ARTGC_CONTROLLER_CONFIGMAP"
    )]
    pub controller_configmap: String,
    /// Namespace of Argo's workflow-controller ConfigMap.
    #[arg(long, default_value = "argo", env = "ARTGC_CONTROLLER_NAMESPACE")]
    pub controller_namespace: String,
}

impl ArgoConfigArgs {
    pub fn config_ref(&self) -> ArgoConfigMapRef {
        ArgoConfigMapRef {
            namespace: self.controller_namespace.clone(),
            name: self.controller_configmap.clone(),
        }
    }
}

pub use artgc_core::units::parse_duration;

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
    /// Do not write the outcome to the Workflows (cluster source): no `deleted` marks,
    /// strategiesProcessed, condition or finalizer changes.
    #[arg(long)]
    pub no_record: bool,
    /// The finalizer artgc owns (cluster source; released when the rules allow).
    #[arg(long, default_value = artgc_core::model::FINALIZER_ARTIFACT_GC, env = "ARTGC_FINALIZER")]
    pub finalizer: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Namespaces to watch, comma-separated; all when empty.
    #[arg(
        short = 'n',
        long = "namespaces",
        env = "ARTGC_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Argo controller instance id: handle Workflows labelled
    /// `workflows.argoproj.io/controller-instanceid=ID`; without it, those with no such label.
    #[arg(long, env = "ARTGC_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// The finalizer artgc adds and releases. Keep Argo's name with Argo's own GC switched off
    /// (ARGO_ARTIFACT_GC_ENABLED=false); use another to run beside it.
    #[arg(long, default_value = artgc_core::model::FINALIZER_ARTIFACT_GC, env = "ARTGC_FINALIZER")]
    pub finalizer: String,
    #[command(flatten)]
    pub argo: ArgoConfigArgs,
    /// Workflows reconciled at once.
    #[arg(long, default_value_t = 16, env = "ARTGC_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Workflows of one namespace reconciled at once, so that one tenant's slow endpoint or
    /// heavy workflows never hold every worker. Default: half of --workers (all of them when
    /// one namespace is watched).
    #[arg(long, env = "ARTGC_NAMESPACE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub namespace_workers: Option<u16>,
    /// Failed attempts of a deletion pass before `forceFinalizerRemoval: true` releases the
    /// workflow anyway.
    #[arg(long, default_value_t = 5, env = "ARTGC_RETRY_BUDGET", value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_budget: u32,
    /// First retry delay of a failing workflow; doubles per attempt, with jitter.
    #[arg(long, default_value = "1s", env = "ARTGC_BACKOFF_BASE", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, default_value = "5m", env = "ARTGC_BACKOFF_MAX", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How soon a workflow is looked at again while some of its artifacts are kept only for
    /// running workflows that read them.
    #[arg(long, default_value = "30s", env = "ARTGC_READER_RECHECK", value_parser = parse_duration)]
    pub reader_recheck: Duration,
    /// Address of the admin server (/metrics, /live, /ready).
    #[arg(long, default_value = "0.0.0.0:9090", env = "ARTGC_ADMIN_ADDR")]
    pub admin_addr: std::net::SocketAddr,
    /// Elect a leader with a Lease; only the leader acts.
    #[arg(long, env = "ARTGC_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "artgc-leader", env = "ARTGC_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15, env = "ARTGC_LEASE_DURATION", value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_duration: u64,
    /// Time in-flight work may take after SIGTERM.
    #[arg(long, default_value = "30s", env = "ARTGC_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// The longest one pass over one workflow may take: a pass still running then (a request
    /// to the API server or a store that never answers) is abandoned, reported and retried
    /// with backoff, so no dead connection holds a worker.
    #[arg(long, default_value = "10m", env = "ARTGC_PASS_DEADLINE", value_parser = parse_duration)]
    pub pass_deadline: Duration,
    /// The longest the reads for one workflow (ConfigMaps, Secrets, ServiceAccounts) may take,
    /// in a pass or in the watch: a silent API server fails them instead of stopping the watch.
    #[arg(long, default_value = "30s", env = "ARTGC_API_TIMEOUT", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// How long one watch request stays open before the API server ends it and the watch resumes
    /// where it was. A watch that hears nothing for this long plus 5 s is taken for dead (a
    /// connection a load balancer dropped without a word) and re-made.
    #[arg(long, default_value = "60s", env = "ARTGC_WATCH_TIMEOUT", value_parser = parse_duration)]
    pub watch_timeout: Duration,
    /// Entries one namespace's workflows may hold in the shared-key index (25 bytes or more
    /// each, see the README's Sizing). Past it, a workflow's keys are held coarser (its workflow folder, then parent
    /// folders): memory stays bounded, and the check only keeps more, never less
    /// (`artgc_index_coarse_workflows`).
    #[arg(long, default_value_t = 100_000, env = "ARTGC_INDEX_KEYS_PER_NAMESPACE", value_parser = clap::value_parser!(u64).range(1..))]
    pub index_keys_per_namespace: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub tenancy: TenancyArgs,
}

impl ControllerArgs {
    /// The controller's settings; `max_node_status_bytes` is the global flag's value.
    pub fn config(
        &self,
        max_node_status_bytes: u64,
    ) -> Result<crate::controller::ControllerConfig, String> {
        let identity = self.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("artgc-{}", std::process::id()))
        });
        Ok(crate::controller::ControllerConfig {
            max_node_status_bytes,
            policy: self.tenancy.policy()?,
            sts: self.tenancy.sts(),
            namespaces: self
                .namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            instance_id: self.instance_id.clone().filter(|i| !i.is_empty()),
            finalizer: self.finalizer.clone(),
            argo_config_map: self.argo.config_ref(),
            concurrency: self.workers.into(),
            namespace_concurrency: self.namespace_workers.map(usize::from),
            retry_budget: self.retry_budget,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            reader_recheck: self.reader_recheck,
            store: self.store.options(),
            admin_addr: self.admin_addr,
            leader_election: self
                .leader_elect
                .then(|| crate::controller::LeaderElection {
                    namespace: self
                        .lease_namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    lease_name: self.lease_name.clone(),
                    identity,
                    duration: self.lease_duration,
                }),
            shutdown_grace: self.shutdown_grace,
            pass_deadline: self.pass_deadline,
            api_timeout: self.api_timeout,
            watch_timeout: self.watch_timeout,
            index_keys_per_namespace: usize::try_from(self.index_keys_per_namespace)
                .unwrap_or(usize::MAX),
        })
    }
}

/// Who artgc may act as for each namespace, and where (see the README's Security model).
#[derive(Debug, Args, Clone)]
pub struct TenancyArgs {
    /// Tenancy policy (YAML): the identities, endpoints, buckets and key prefixes each namespace
    /// may use. Without one, a namespace may use its own Secrets at the repositories configured
    /// for it, and nothing else.
    #[arg(long, env = "ARTGC_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Let stores be reached on loopback addresses (127.0.0.0/8, ::1, localhost), as the
    /// policy's `allowLoopback` does: for a store behind `kubectl port-forward`, or tests. In a
    /// pod, loopback is artgc itself and its sidecars, so it is refused by default.
    #[arg(long, env = "ARTGC_ALLOW_LOOPBACK")]
    pub allow_loopback: bool,
    /// This pod's own addresses (the chart sets the downward API's status.podIPs): never
    /// contacted unless a policy rule's `endpoints` names them.
    #[arg(long, env = "POD_IPS", value_delimiter = ',')]
    pub pod_ip: Vec<std::net::IpAddr>,
    /// Audience of the tokens requested for workflows' GC service accounts.
    #[arg(
        long,
        default_value = "sts.amazonaws.com",
        env = "ARTGC_TOKEN_AUDIENCE"
    )]
    pub token_audience: String,
    /// STS endpoint for the service-account identity (default: AWS's endpoint for --sts-region).
    #[arg(long, env = "ARTGC_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,
    /// STS region.
    #[arg(long, default_value = "us-east-1", env = "ARTGC_STS_REGION")]
    pub sts_region: String,
}

impl TenancyArgs {
    pub fn policy(&self) -> Result<std::sync::Arc<Policy>, String> {
        let mut policy = match &self.policy {
            None => Policy::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--policy {}: {e}", path.display()))?;
                Policy::parse(&text).map_err(|e| format!("--policy {}: {e}", path.display()))?
            }
        };
        policy.allow_loopback |= self.allow_loopback;
        policy.own_addresses = self.pod_ip.iter().map(|ip| ip.to_canonical()).collect();
        Ok(std::sync::Arc::new(policy))
    }

    pub fn sts(&self) -> StsSettings {
        StsSettings {
            audience: self.token_audience.clone(),
            endpoint: self.sts_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.sts_region.clone(),
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// S3 requests in flight at once, across all buckets.
    #[arg(long, default_value_t = 16, env = "ARTGC_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// S3 requests in flight to one endpoint (host:port), beneath --concurrency: one slow store
    /// cannot take every place.
    #[arg(long, default_value_t = 8, env = "ARTGC_ENDPOINT_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub endpoint_concurrency: u16,
    /// DeleteObjects requests (up to 1,000 keys each) in flight to one endpoint, beneath
    /// --endpoint-concurrency: stores delete fastest with a few batches at once.
    #[arg(long, default_value_t = 4, env = "ARTGC_DELETE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub delete_concurrency: u16,
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
    /// Clock skew allowed between the store and the cluster: objects last modified later than
    /// a workflow's finishedAt plus this are kept as another run's.
    #[arg(long, default_value = "2m", env = "ARTGC_CLOCK_SKEW", value_parser = parse_duration)]
    pub clock_skew: Duration,
    /// On versioned buckets, also delete the versions each workflow wrote of its artifacts'
    /// keys, so their bytes are freed, not only hidden behind delete markers (everywhere; the
    /// policy's reclaimVersions does it per namespace, endpoint and bucket).
    #[arg(long, env = "ARTGC_RECLAIM_VERSIONS")]
    pub reclaim_versions: bool,
}

impl StoreArgs {
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            concurrency: self.concurrency.into(),
            endpoint_concurrency: self.endpoint_concurrency.into(),
            delete_concurrency: self.delete_concurrency.into(),
            max_attempts: self.max_attempts,
            max_objects_per_artifact: self.max_objects_per_artifact,
            request_timeout: Duration::from_secs(self.request_timeout),
            clock_skew: self.clock_skew,
            reclaim_versions: self.reclaim_versions,
            max_response_bytes: crate::store::MAX_RESPONSE_BYTES,
        }
    }
}

/// Runs a command; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    let limit = cli.max_node_status_bytes;
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
    match cli.command {
        Command::Plan(args) => rt.block_on(plan_command(&args, limit)),
        Command::Purge(args) => rt.block_on(purge_command(&args, limit)),
        Command::Controller(args) => rt.block_on(controller_command(&args, limit)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => rt.block_on(crate::demo::run(&args)),
    }
}

/// Reads the manifests or the cluster and builds the plan; `limit` is
/// `--max-node-status-bytes`.
pub async fn load_plan(source: &SourceArgs, limit: u64) -> Result<LoadedPlan, InputError> {
    let opts = PlanOptions {
        filter: source.strategy.into(),
    };
    let policy = source
        .tenancy
        .policy()
        .map_err(|message| InputError::Config {
            setting: "--policy".into(),
            source: std::sync::Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(message)),
        })?;
    let source = if source.files.is_empty() {
        Source::Cluster(ClusterSelection {
            namespace: source.namespace.clone(),
            all_namespaces: source.all_namespaces,
            selector: source.selector.clone(),
            names: source.names.clone(),
            older_than: source.older_than,
            argo: source.argo.config_ref(),
            policy,
            kubeconfig: source.kubeconfig.clone(),
            context: source.context.clone(),
            max_node_status_bytes: limit,
        })
    } else {
        Source::Files {
            paths: source.files.clone(),
            namespace: source.namespace.clone(),
            older_than: source.older_than,
            argo: source.argo.config_ref(),
            policy,
            max_node_status_bytes: limit,
        }
    };
    crate::source::load(&source, &opts).await
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

async fn plan_command(args: &PlanArgs, limit: u64) -> u8 {
    let plan = match load_plan(&args.source, limit).await {
        Ok(p) => p.plan,
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

async fn purge_command(args: &PurgeArgs, limit: u64) -> u8 {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.dry_run && !args.yes && !interactive {
        eprintln!(
            "error: refusing to delete without --yes when not run from a terminal (or use --dry-run)"
        );
        return EXIT_USAGE;
    }
    let LoadedPlan { plan, cluster } = match load_plan(&args.source, limit).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let due = plan
        .artifacts()
        .filter(|(_, a)| a.decision == Decision::Delete)
        .count();
    if !args.dry_run && !args.yes && due > 0 && !confirmed(&plan, due) {
        eprintln!("aborted; nothing deleted");
        return EXIT_FAILED;
    }
    let mut store = ObjectStore::new(args.store.options());
    if let Some(c) = &cluster {
        store = store.with_web_identity(crate::identity::WebIdentityConfig {
            client: c.client.clone(),
            sts: args.source.tenancy.sts(),
        });
    }
    let (client, objects, inputs) = match cluster {
        Some(ClusterRead {
            client,
            objects,
            inputs,
        }) => (Some(client), objects, inputs),
        None => (None, Vec::new(), Vec::new()),
    };
    let bar = ProgressBar::new(due as u64);
    let run = Run {
        mode: match args.dry_run {
            true => Mode::DryRun,
            false => Mode::Delete,
        },
        ..Run::DELETE.with_progress(&bar)
    };
    // The objects as read move into the pass: it writes from them, nothing else reads them.
    let recorder = client
        .as_ref()
        .filter(|_| !args.no_record)
        .map(|client| purge_recorder(client, objects, &inputs, args, limit));
    let passed = pass::run(&plan, &store, run, recorder).await;
    bar.finish();
    let passed = match passed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: recording what the probe found before deleting: {e}");
            return EXIT_FAILED;
        }
    };
    let mut record_failed = false;
    for e in passed.recorded.iter().filter_map(|(_, r)| r.as_ref().err()) {
        record_failed = true;
        tracing::error!(error = %e, "recording the outcome");
    }
    let report = Report::new(&plan, Some(&passed.execution), args.dry_run);
    let code = print(&report, args.source.output);
    if report.totals.failed > 0 || record_failed {
        EXIT_FAILED
    } else {
        code
    }
}

/// Asks on the terminal before deleting `due` artifacts.
fn confirmed(plan: &artgc_core::plan::GcPlan, due: usize) -> bool {
    let workflows: std::collections::BTreeSet<_> = plan
        .artifacts()
        .filter(|(_, a)| a.decision == Decision::Delete)
        .map(|(w, _)| (&w.namespace, &w.name))
        .collect();
    eprint!(
        "Delete {due} artifact(s) of {} workflow(s) from S3? [y/N] ",
        workflows.len()
    );
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// How `purge` records on the Workflows it read: as `artgc-purge`, releasing the finalizer
/// only (nobody would be there to remove one it added).
fn purge_recorder<'a>(
    client: &'a kube::Client,
    objects: Vec<serde_json::Value>,
    inputs: &'a [artgc_core::inventory::WorkflowInput],
    args: &'a PurgeArgs,
    limit: u64,
) -> Recorder<'a> {
    Recorder {
        client,
        field_manager: "artgc-purge",
        finalizer: &args.finalizer,
        finalizers: Finalizers::ReleaseOnly,
        low: None,
        max_node_status_bytes: limit,
        gate: &pass::Open,
        subjects: objects
            .into_iter()
            .zip(inputs)
            .map(|(object, input)| Subject { object, input })
            .collect(),
    }
}

async fn controller_command(args: &ControllerArgs, limit: u64) -> u8 {
    let config = match args.config(limit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let clients = match kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)
    {
        Ok(k) => crate::controller::KubeClients::from_config(k, config.api_timeout),
        Err(e) => Err(e),
    };
    let clients = match clients {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: no Kubernetes config (kubeconfig or in-cluster): {e}");
            return EXIT_USAGE;
        }
    };
    let handle = match crate::controller::start(clients, config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    tracing::info!(admin = %handle.admin_addr, "artgc controller started");
    let stop = handle.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received: shutting down");
        stop.cancel();
    });
    handle.wait().await;
    EXIT_OK
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `--strategy`: the planner's [`StrategyFilter`] as the command line spells it (the planner
/// knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// What the workflow's state makes due now: completed -> OnWorkflowCompletion; being
    /// deleted -> both.
    Due,
    /// OnWorkflowCompletion artifacts of finished workflows.
    Completion,
    /// OnWorkflowDeletion artifacts of finished workflows, deleted or not.
    Deletion,
    /// Both, for finished workflows.
    All,
}

impl From<StrategyArg> for StrategyFilter {
    fn from(a: StrategyArg) -> Self {
        match a {
            StrategyArg::Due => Self::Due,
            StrategyArg::Completion => Self::Completion,
            StrategyArg::Deletion => Self::Deletion,
            StrategyArg::All => Self::All,
        }
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
