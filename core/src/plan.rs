//! The GC plan: for every output artifact of every Pod node, which strategy applies, whether it
//! is due, where it lives, and what to do with it. Pure: no IO, no clock. The controller and the
//! CLI both build and execute this same type.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::ClusterState;
use crate::error::{InputError, ResolveError};
use crate::inventory::WorkflowInput;
use crate::keys::{KeyIndex, OverlapIndex, WorkflowKeyUse};
use crate::location::{self, Resolved, S3Connection, S3Target, TemplateLookup};
use crate::model::{Artifact, Workflow};
use crate::nodes::{NodeEncoding, workflow_nodes};

/// When an artifact may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Strategy {
    OnWorkflowCompletion,
    OnWorkflowDeletion,
    Never,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnWorkflowCompletion => "OnWorkflowCompletion",
            Self::OnWorkflowDeletion => "OnWorkflowDeletion",
            Self::Never => "Never",
        }
    }

    /// `None` for unset (empty), an error for a value Argo does not know.
    pub fn parse(value: Option<&str>) -> Result<Option<Self>, String> {
        match value.unwrap_or_default() {
            "" => Ok(None),
            "OnWorkflowCompletion" => Ok(Some(Self::OnWorkflowCompletion)),
            "OnWorkflowDeletion" => Ok(Some(Self::OnWorkflowDeletion)),
            "Never" => Ok(Some(Self::Never)),
            other => Err(format!(
                "unknown strategy {other:?} (expected OnWorkflowCompletion, OnWorkflowDeletion or Never)"
            )),
        }
    }
}

/// Which strategies a run acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StrategyFilter {
    /// What the workflow's state makes due now: completed -> OnWorkflowCompletion; being
    /// deleted -> both.
    #[default]
    Due,
    /// OnWorkflowCompletion artifacts of finished workflows.
    Completion,
    /// OnWorkflowDeletion artifacts of finished workflows, deleted or not.
    Deletion,
    /// Both, for finished workflows.
    All,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    pub filter: StrategyFilter,
}

/// File or directory, as far as the key tells; the store may find a directory behind a key
/// without a trailing `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    File,
    Directory,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeepReason {
    Never,
    /// Another artifact that is not being deleted uses this key; names it.
    Shared(String),
    /// Only running workflows that read the key still use it; names one. They never delete
    /// their inputs, so this is pending: deleted once they finish, not settled.
    ReadByRunning(String),
    BucketRoot,
    /// A memoization cache hit: the outputs are another workflow's.
    Memoized,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    AlreadyDeleted,
    NotFinished(String),
    NotSelected { strategy: Strategy },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Delete,
    Keep(KeepReason),
    Skip(SkipReason),
    Unsupported(&'static str),
    Error(ResolveError),
}

impl Decision {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Keep(_) => "keep",
            Self::Skip(_) => "skip",
            Self::Unsupported(_) => "unsupported",
            Self::Error(_) => "error",
        }
    }

    /// A short stable label: the keep reason, the error category, ...
    pub fn category(&self) -> &'static str {
        match self {
            Self::Delete => "due",
            Self::Keep(KeepReason::Never) => "never",
            Self::Keep(KeepReason::Shared(_)) => "shared",
            Self::Keep(KeepReason::ReadByRunning(_)) => "read_by_running",
            Self::Keep(KeepReason::BucketRoot) => "bucket_root",
            Self::Keep(KeepReason::Memoized) => "memoized",
            Self::Skip(SkipReason::AlreadyDeleted) => "already_deleted",
            Self::Skip(SkipReason::NotFinished(_)) => "not_finished",
            Self::Skip(SkipReason::NotSelected { .. }) => "not_due",
            Self::Unsupported(_) => "unsupported_driver",
            Self::Error(e) => e.category(),
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Self::Delete => "due".into(),
            Self::Keep(KeepReason::Never) => "strategy Never".into(),
            Self::Keep(KeepReason::Shared(by)) => format!("shared: key also used by {by}"),
            Self::Keep(KeepReason::ReadByRunning(by)) => {
                format!("read by running {by}: deleted once it finishes")
            }
            Self::Keep(KeepReason::BucketRoot) => {
                "refused: key is empty or covers the whole bucket".into()
            }
            Self::Keep(KeepReason::Memoized) => {
                "memoized: a cache hit whose outputs belong to the workflow that produced them"
                    .into()
            }
            Self::Skip(SkipReason::AlreadyDeleted) => "already deleted".into(),
            Self::Skip(SkipReason::NotFinished(phase)) => {
                format!("workflow not finished (phase {phase}); its steps may still read it")
            }
            Self::Skip(SkipReason::NotSelected { strategy }) => match strategy {
                Strategy::OnWorkflowDeletion => {
                    "not due: OnWorkflowDeletion waits for the workflow's deletion".into()
                }
                s => format!("not selected: strategy {}", s.as_str()),
            },
            Self::Unsupported(driver) => format!("artgc cannot delete {driver} artifacts"),
            Self::Error(e) => e.to_string(),
        }
    }
}

/// One output artifact of one Pod node.
#[derive(Debug, Clone)]
pub struct ArtifactPlan {
    pub node: String,
    /// Position in the node's `outputs.artifacts`, for recording the result.
    pub index: usize,
    pub name: String,
    pub strategy: Strategy,
    pub due: bool,
    pub target: Option<S3Target>,
    pub kind: Option<ObjectKind>,
    /// `archive: none`: only such an artifact may turn out to be a directory behind a key
    /// without a trailing `/`.
    pub archive_none: bool,
    /// An earlier pass's probe found a file at this key (the workflow's probed-files
    /// annotation): it is never widened to a directory on a later pass.
    pub file_seen: bool,
    /// Present exactly when the decision is `Delete`.
    pub connection: Option<S3Connection>,
    /// Uploaded with SSE-C: probed by listing, never HEAD (which needs the customer key).
    pub customer_key: bool,
    /// The policy has the namespace's versions reclaimed in this bucket: on a versioned
    /// bucket, the versions its workflow wrote are deleted too, not only hidden.
    pub reclaim_versions: bool,
    /// Its node is a memoization cache hit: the key is the producer's (see
    /// [`memoized_without_a_view`]).
    pub cache_hit: bool,
    pub decision: Decision,
}

impl ArtifactPlan {
    /// `node/artifact`: how reports, failures and the probed-files annotation name it.
    pub fn node_and_name(&self) -> String {
        format!("{}/{}", self.node, self.name)
    }
}

#[derive(Debug, Clone)]
pub struct WorkflowPlan {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// Set when the workflow could not be planned at all.
    pub error: Option<InputError>,
    pub node_encoding: Option<NodeEncoding>,
    /// When it started and finished: objects written outside that window are not its outputs.
    pub started_at: Option<jiff::Timestamp>,
    pub finished_at: Option<jiff::Timestamp>,
    /// `metadata.creationTimestamp` (the API server's) and artgc's record of when it first saw
    /// the workflow finished: what bounds the author-written times above.
    pub created_at: Option<jiff::Timestamp>,
    pub finished_seen: Option<jiff::Timestamp>,
    /// The policy reclaims versions somewhere for its namespace: artgc records when it first
    /// saw the workflow finished, for the bound on the run's window.
    pub may_reclaim: bool,
    pub artifacts: Vec<ArtifactPlan>,
}

impl WorkflowPlan {
    /// A workflow that could not be read at all.
    pub fn unplannable(namespace: &str, name: &str, error: InputError) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: None,
            error: Some(error),
            node_encoding: None,
            started_at: None,
            finished_at: None,
            created_at: None,
            finished_seen: None,
            may_reclaim: false,
            artifacts: Vec::new(),
        }
    }

    /// The facts that bound the run's window (see [`crate::versions::run_bounds`]).
    pub fn run_facts(&self) -> crate::versions::RunFacts {
        crate::versions::RunFacts {
            started_at: self.started_at,
            finished_at: self.finished_at,
            created_at: self.created_at,
            finished_seen: self.finished_seen,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    pub workflows: Vec<WorkflowPlan>,
}

/// One artifact of a [`GcPlan`]: its workflow's position in the plan and its own in that
/// workflow's. What the executor's results and the judge's verdicts are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactRef {
    pub workflow: usize,
    pub artifact: usize,
}

impl ArtifactRef {
    pub fn new(workflow: usize, artifact: usize) -> Self {
        Self { workflow, artifact }
    }
}

impl GcPlan {
    pub fn artifacts(&self) -> impl Iterator<Item = (&WorkflowPlan, &ArtifactPlan)> {
        self.workflows
            .iter()
            .flat_map(|w| w.artifacts.iter().map(move |a| (w, a)))
    }

    /// The artifact `r` names.
    pub fn artifact(&self, r: ArtifactRef) -> &ArtifactPlan {
        &self.workflows[r.workflow].artifacts[r.artifact]
    }

    fn artifact_mut(&mut self, r: ArtifactRef) -> &mut ArtifactPlan {
        &mut self.workflows[r.workflow].artifacts[r.artifact]
    }
}

/// A use of an S3 key that may keep another artifact from being deleted.
#[derive(Debug, Clone)]
struct KeyUse {
    target: S3Target,
    /// The planned artifact behind it (workflow, artifact); `None` for a use that is live
    /// whatever this run decides (an unfinished workflow's inputs and templates).
    owner: Option<ArtifactRef>,
    label: String,
    /// The namespace of an unfinished workflow that only reads the key (an input): it will
    /// never delete it.
    reader: Option<String>,
    /// A memoization cache hit's output (the producer's keys).
    cache_hit: bool,
}

/// Builds the plan for every workflow of the input.
pub fn plan(inputs: &[WorkflowInput], state: &ClusterState, opts: &PlanOptions) -> GcPlan {
    plan_with_index(inputs, state, opts, None)
}

/// As [`plan`], also keeping keys that workflows outside `inputs` use (the controller's index;
/// the inputs' own entries in it are ignored).
pub fn plan_with_index(
    inputs: &[WorkflowInput],
    state: &ClusterState,
    opts: &PlanOptions,
    external: Option<&KeyIndex>,
) -> GcPlan {
    draft(inputs, state, opts).check_shared(external)
}

/// A plan before the shared-key check: what each workflow's own rules decide, with the key
/// uses the check needs. The controller drafts without holding its index, then checks under it.
pub struct DraftPlan {
    plan: GcPlan,
    uses: Vec<KeyUse>,
}

impl DraftPlan {
    /// Keeps the keys that another use, in the plan or (through `external`) outside it, still
    /// needs; the inputs' own entries in `external` are ignored.
    pub fn check_shared(mut self, external: Option<&KeyIndex>) -> GcPlan {
        for wp in &mut self.plan.workflows {
            for art in &mut wp.artifacts {
                if let Some(d) = memoized_without_a_view(external.is_some(), art) {
                    art.decision = d;
                    art.connection = None;
                }
            }
        }
        keep_shared_keys(&mut self.plan, &self.uses, external);
        self.plan
    }
}

/// Plans every workflow of the input on its own rules; see [`DraftPlan::check_shared`].
pub fn draft(inputs: &[WorkflowInput], state: &ClusterState, opts: &PlanOptions) -> DraftPlan {
    let mut out = GcPlan::default();
    let mut uses = Vec::new();
    for input in inputs {
        let w = out.workflows.len();
        match input {
            WorkflowInput::Valid(wf) => {
                let wp = plan_workflow(wf, state, opts, w, &mut uses);
                out.workflows.push(wp);
            }
            WorkflowInput::Invalid {
                namespace,
                name,
                error,
            } => out
                .workflows
                .push(WorkflowPlan::unplannable(namespace, name, error.clone())),
        }
    }
    DraftPlan { plan: out, uses }
}

fn plan_workflow(
    wf: &Workflow,
    state: &ClusterState,
    opts: &PlanOptions,
    w: usize,
    uses: &mut Vec<KeyUse>,
) -> WorkflowPlan {
    let mut wp = WorkflowPlan {
        namespace: wf.namespace().to_string(),
        name: wf.name().to_string(),
        uid: wf.metadata.uid.clone(),
        error: None,
        node_encoding: None,
        started_at: parse_time(wf.status.started_at.as_deref()),
        finished_at: parse_time(wf.status.finished_at.as_deref()),
        created_at: wf.metadata.creation_timestamp.as_ref().map(|t| t.0),
        finished_seen: parse_time(wf.annotation(crate::model::ANNOTATION_FINISHED_SEEN)),
        may_reclaim: state.grant_for(wf.namespace()).reclaim_versions.is_some(),
        artifacts: Vec::new(),
    };
    let nodes = match workflow_nodes(wf) {
        Ok(n) => n,
        Err(e) => {
            wp.error = Some(e);
            return wp;
        }
    };
    wp.node_encoding = Some(nodes.encoding);
    let first_use = uses.len();
    let scope = WorkflowScope::new(wf, state, opts);
    for (id, node) in &nodes.nodes {
        let lookup = scope.lookup(node);
        if !scope.finished {
            for art in node.inputs.iter().flat_map(|i| &i.artifacts) {
                let field = format!("status.nodes[{id}].inputs.artifacts[{}]", art.name);
                scope.live_use(art, lookup, &field, scope.label(id, &art.name), true, uses);
            }
        }
        if node.node_type.as_deref() != Some("Pod") {
            continue;
        }
        let cache_hit = node.is_cache_hit();
        let vars = location::Variables::of_node(wf, node);
        for (index, art) in node.outputs.iter().flat_map(|o| &o.artifacts).enumerate() {
            let (mut planned, protects) =
                scope.plan_output(id, index, art, lookup, cache_hit, &vars);
            match &planned.target {
                Some(t) if !art.deleted && protects => {
                    // A cache hit's keys are the producer's: its use is live until this
                    // workflow would delete them, and the shared-key check keeps them while
                    // any other workflow uses them.
                    uses.push(KeyUse {
                        target: t.clone(),
                        owner: Some(ArtifactRef::new(w, wp.artifacts.len())),
                        label: scope.label(id, &art.name),
                        reader: None,
                        cache_hit,
                    });
                }
                // A hit without a use the shared-key check could weigh is never deleted.
                _ if cache_hit && planned.decision == Decision::Delete => {
                    planned.decision = Decision::Keep(KeepReason::Memoized);
                    planned.connection = None;
                }
                _ => {}
            }
            wp.artifacts.push(planned);
        }
    }
    if !scope.finished {
        scope.running_uses(uses);
    }
    drop_own_cache_hits(&mut wp, uses, first_use, w);
    wp
}

/// A cache hit on an earlier step of the *same* workflow carries that step's keys: the
/// workflow's own artifact decides them (deleted with it, or kept for its own reasons), so the
/// hit is kept (`memoized`) and its use does not keep them for ever as "shared" with itself.
fn drop_own_cache_hits(wp: &mut WorkflowPlan, uses: &mut Vec<KeyUse>, first: usize, w: usize) {
    let own: HashSet<(&str, &str, &str)> = uses[first..]
        .iter()
        .filter(|u| !u.cache_hit && u.owner.is_some_and(|o| o.workflow == w))
        .map(|u| {
            (
                u.target.store.as_str(),
                u.target.bucket.as_str(),
                u.target.key.as_str(),
            )
        })
        .collect();
    let hits: Vec<usize> = (first..uses.len())
        .filter(|&i| {
            let u = &uses[i];
            u.cache_hit
                && own.contains(&(
                    u.target.store.as_str(),
                    u.target.bucket.as_str(),
                    u.target.key.as_str(),
                ))
        })
        .collect();
    for i in hits.into_iter().rev() {
        let hit = uses.remove(i);
        if let Some(o) = hit.owner {
            let art = &mut wp.artifacts[o.artifact];
            art.decision = Decision::Keep(KeepReason::Memoized);
            art.connection = None;
        }
    }
}

/// The rule for a memoization cache hit's output that its own rules would delete: the key is
/// the producer's. Only a plan that sees every live workflow's keys (the controller's index, a
/// listing of the cluster) may delete it, and then only where no other workflow, the producer
/// included, still uses it: whichever pass sees the last use go collects it. A plan over files
/// cannot know the producer is gone, so it keeps the key.
pub fn memoized_without_a_view(sees_every_workflow: bool, art: &ArtifactPlan) -> Option<Decision> {
    (art.cache_hit && art.decision == Decision::Delete && !sees_every_workflow)
        .then_some(Decision::Keep(KeepReason::Memoized))
}

/// Whether a run's strategy filter selects an artifact of `strategy` (`deleting`: the
/// workflow is being deleted).
pub fn selected_by_filter(filter: StrategyFilter, strategy: Strategy, deleting: bool) -> bool {
    match (filter, strategy) {
        (_, Strategy::Never) => false,
        (StrategyFilter::Due, Strategy::OnWorkflowCompletion) => true,
        (StrategyFilter::Due, Strategy::OnWorkflowDeletion) => deleting,
        (StrategyFilter::Completion, s) => s == Strategy::OnWorkflowCompletion,
        (StrategyFilter::Deletion, s) => s == Strategy::OnWorkflowDeletion,
        (StrategyFilter::All, _) => true,
    }
}

/// What decides an output artifact before its location is looked at.
#[derive(Debug, Clone)]
pub struct OutputFacts<'a> {
    /// Argo (or an earlier pass) marked it `deleted`.
    pub deleted: bool,
    /// Its node is a memoization cache hit.
    pub cache_hit: bool,
    /// Its strategy: own, else the workflow's; an error for a value Argo does not know.
    pub strategy: &'a Result<Option<Strategy>, String>,
    pub finished: bool,
    /// The workflow's phase, for the report of an unfinished one.
    pub phase: Option<&'a str>,
    /// The run's filter selects its strategy.
    pub selected: bool,
}

/// The rule for an output artifact, in order: already deleted, a cache hit with an unknown
/// strategy (the producer's keys), an unknown strategy, `Never`, not finished, not selected.
/// `None`: it is due, and its location decides (a cache hit then also by
/// [`memoized_without_a_view`] and the shared-key check).
pub fn output_decision(f: &OutputFacts) -> Option<Decision> {
    let strategy = match f.strategy {
        _ if f.deleted => return Some(Decision::Skip(SkipReason::AlreadyDeleted)),
        // Nothing to decide a cache hit's (the producer's) keys by.
        Err(_) if f.cache_hit => return Some(Decision::Keep(KeepReason::Memoized)),
        Err(e) => return Some(Decision::Error(ResolveError::Strategy(e.clone()))),
        Ok(s) => s.unwrap_or(Strategy::Never),
    };
    if strategy == Strategy::Never {
        Some(Decision::Keep(KeepReason::Never))
    } else if !f.finished {
        let phase = f.phase.unwrap_or("unknown").to_string();
        Some(Decision::Skip(SkipReason::NotFinished(phase)))
    } else if !f.selected {
        Some(Decision::Skip(SkipReason::NotSelected { strategy }))
    } else {
        None
    }
}

/// One workflow as the planner sees it: what every artifact of it shares (its repository, the
/// endpoints its namespace may reach, its variables), each read at most once.
struct WorkflowScope<'a> {
    wf: &'a Workflow,
    state: &'a ClusterState,
    opts: &'a PlanOptions,
    vars: location::Variables<'a>,
    repository: OnceCell<Result<crate::model::ArtifactLocation, ResolveError>>,
    configured: OnceCell<Vec<crate::policy::Endpoint>>,
    /// Some template has an archiveLocation: where a node's template is unknown, its
    /// artifacts may have been archived there.
    any_archive_location: bool,
    finished: bool,
    deleting: bool,
    /// `node/artifact` pairs an earlier pass's probe found a file at.
    file_seen: HashSet<(&'a str, &'a str)>,
    strategy: Result<Option<Strategy>, String>,
}

impl<'a> WorkflowScope<'a> {
    fn new(wf: &'a Workflow, state: &'a ClusterState, opts: &'a PlanOptions) -> Self {
        Self {
            wf,
            state,
            opts,
            vars: location::Variables::of(wf),
            repository: OnceCell::new(),
            configured: OnceCell::new(),
            // Where templateDefaults set it, every template has it now: only a template's own
            // complete location makes an unknown template's place uncertain.
            any_archive_location: match &wf.archive_defaults.location {
                Some(_) => wf.archive_defaults.own_locations,
                None => wf.all_templates().iter().any(|t| {
                    t.archive_location
                        .as_ref()
                        .is_some_and(|a| a.has_complete_s3() || a.other_driver().is_some())
                }),
            },
            finished: wf.is_finished(),
            deleting: wf.is_being_deleted(),
            file_seen: crate::model::parse_probed_files(
                wf.annotation(crate::model::ANNOTATION_PROBED_FILES)
                    .unwrap_or_default(),
            ),
            strategy: Strategy::parse(wf.workflow_strategy())
                .map_err(|e| format!("spec.artifactGC.strategy: {e}")),
        }
    }

    fn repository(&self) -> Result<crate::model::ArtifactLocation, ResolveError> {
        self.repository
            .get_or_init(|| self.state.repository_for(self.wf))
            .clone()
    }

    fn lookup(&self, node: &'a crate::model::NodeStatus) -> TemplateLookup<'a> {
        match self.wf.template_of(node) {
            Some(t) => TemplateLookup::Found(t),
            None => TemplateLookup::Unknown {
                any_archive_location: self.any_archive_location,
                defaults: self.wf.archive_defaults.location.as_ref(),
            },
        }
    }

    fn label(&self, node: &str, art: &str) -> String {
        format!(
            "{}/{} artifact {art} (node {node})",
            self.wf.namespace(),
            self.wf.name()
        )
    }

    /// One output artifact of Pod node `id`, at `index` in its outputs.
    fn plan_output(
        &self,
        id: &str,
        index: usize,
        art: &Artifact,
        lookup: TemplateLookup<'_>,
        cache_hit: bool,
        vars: &location::Variables<'_>,
    ) -> (ArtifactPlan, bool) {
        let field = format!("status.nodes[{id}].outputs.artifacts[{}]", art.name);
        let own = art.artifact_gc.as_ref().and_then(|g| g.strategy.as_deref());
        let strategy = match own.filter(|s| !s.is_empty()) {
            Some(s) => {
                Strategy::parse(Some(s)).map_err(|e| format!("{field}.artifactGC.strategy: {e}"))
            }
            None => self.strategy.clone(),
        };
        let mut resolved = location::resolve(art, lookup, &field, vars, || self.repository());
        if let Ok(r) = resolved.as_mut() {
            location::canonicalize_store(r, self.state, self.wf.namespace());
        }
        let target = match &resolved {
            Ok(Resolved::S3 { target, .. }) => Some(target.clone()),
            _ => None,
        };
        let kind = target.as_ref().map(|t| match t.is_directory_key() {
            true => ObjectKind::Directory,
            false => ObjectKind::File,
        });
        let strategy_value = strategy.clone().ok().flatten().unwrap_or(Strategy::Never);
        let selected = selected_by_filter(self.opts.filter, strategy_value, self.deleting);
        let facts = OutputFacts {
            deleted: art.deleted,
            cache_hit,
            strategy: &strategy,
            finished: self.finished,
            phase: self.wf.status.phase.as_deref(),
            selected,
        };
        let protects = resolved.as_ref().is_ok_and(|r| self.protects(r));
        let (decision, connection, customer_key) = match output_decision(&facts) {
            Some(d) => (d, None, false),
            None => self.location_decision(art, resolved, &field),
        };
        let ns = self.wf.namespace();
        let reclaim_versions = match (&connection, &target) {
            (Some(c), Some(t)) => self.state.grant_for(ns).reclaims_versions_in(
                &self.state.policy,
                ns,
                &c.url,
                &t.bucket,
            ),
            _ => false,
        };
        let planned = ArtifactPlan {
            node: id.to_string(),
            index,
            name: art.name.clone(),
            strategy: strategy_value,
            due: self.finished && selected && strategy.is_ok(),
            target,
            kind,
            archive_none: art.archive_none(),
            file_seen: self.file_seen.contains(&(id, art.name.as_str())),
            connection,
            customer_key,
            reclaim_versions,
            cache_hit,
            decision,
        };
        (planned, protects)
    }

    fn authority(&self, service_account: Option<&'a str>) -> location::Authority<'_> {
        let namespace = self.wf.namespace();
        location::Authority {
            state: self.state,
            namespace,
            service_account,
            configured: self
                .configured
                .get_or_init(|| self.state.configured_endpoints(namespace)),
        }
    }

    /// Whether this workflow's use of a resolved location protects its key (see
    /// [`location::may_protect`]).
    fn protects(&self, resolved: &Resolved) -> bool {
        match resolved {
            Resolved::S3 { target, location } => {
                location::may_protect(&self.authority(None), target, location)
            }
            Resolved::Unsupported(_) => false,
        }
    }

    /// A due artifact: deleted where its location resolves to a key below the bucket root that
    /// the namespace may reach with an identity it may use.
    fn location_decision(
        &self,
        art: &Artifact,
        resolved: Result<Resolved, ResolveError>,
        field: &str,
    ) -> (Decision, Option<S3Connection>, bool) {
        let (target, location) = match resolved {
            Err(e) => return (Decision::Error(e), None, false),
            Ok(Resolved::Unsupported(d)) => return (Decision::Unsupported(d), None, false),
            Ok(Resolved::S3 { target, location }) => (target, location),
        };
        if target.is_bucket_root() {
            return (Decision::Keep(KeepReason::BucketRoot), None, false);
        }
        let auth = self.authority(
            art.artifact_gc
                .as_ref()
                .and_then(|g| g.service_account_name.as_deref())
                .filter(|s| !s.is_empty())
                .or_else(|| self.wf.gc_service_account()),
        );
        let authorized = location::authorize(&auth, &target, &location, field).and_then(|c| {
            let sse = location::customer_key_encrypted(&auth, &location, field)?;
            Ok((c, sse))
        });
        match authorized {
            Ok((c, sse)) => (Decision::Delete, Some(c), sse),
            Err(e) => (Decision::Error(e), None, false),
        }
    }

    /// Records a use by this (live) workflow, when its key is literal and its location resolves.
    fn live_use(
        &self,
        art: &Artifact,
        lookup: TemplateLookup<'_>,
        field: &str,
        label: String,
        reads: bool,
        uses: &mut Vec<KeyUse>,
    ) {
        let namespace = self.wf.namespace();
        let mut resolved = location::resolve(art, lookup, field, &self.vars, || self.repository());
        // A key with a tag artgc cannot resolve yet (`{{inputs.parameters.x}}`, `{{steps...}}`)
        // still names a place: the folder before its first tag is protected, keeping more,
        // never less (a whole bucket protects nothing, as for any use).
        let key = art.location.s3.as_ref().and_then(|s| s.key.as_deref());
        if resolved.is_err()
            && let Some(folder) = key.and_then(literal_folder)
        {
            let mut a = art.clone();
            if let Some(s3) = a.location.s3.as_mut() {
                s3.key = Some(folder);
            }
            resolved = location::resolve(&a, lookup, field, &self.vars, || self.repository());
        }
        if let Ok(mut resolved) = resolved {
            location::canonicalize_store(&mut resolved, self.state, namespace);
            if !self.protects(&resolved) {
                return;
            }
            let Resolved::S3 { target, .. } = resolved else {
                return;
            };
            uses.push(KeyUse {
                target,
                owner: None,
                label,
                reader: reads.then(|| namespace.to_string()),
                cache_hit: false,
            });
        }
    }

    /// A running workflow will read and write what its templates and arguments name.
    fn running_uses(&self, uses: &mut Vec<KeyUse>) {
        let (ns, name) = (self.wf.namespace(), self.wf.name());
        for t in self.wf.all_templates() {
            let tname = t.name.as_deref().unwrap_or("(inline)");
            let inputs = t.inputs.iter().flat_map(|i| &i.artifacts);
            let outputs = t.outputs.iter().flat_map(|o| &o.artifacts);
            let all = inputs.map(|a| (a, true)).chain(outputs.map(|a| (a, false)));
            for (art, reads) in all {
                let field = format!("template {tname} artifact {}", art.name);
                let label = format!("{ns}/{name} template {tname} artifact {}", art.name);
                self.live_use(art, TemplateLookup::Found(t), &field, label, reads, uses);
            }
        }
        let unknown = TemplateLookup::Unknown {
            any_archive_location: false,
            defaults: None,
        };
        for art in self.wf.spec.arguments.iter().flat_map(|a| &a.artifacts) {
            let label = format!("{ns}/{name} argument {}", art.name);
            self.live_use(art, unknown, "spec.arguments", label, true, uses);
        }
    }
}

/// The folder of a key before its first `{{` tag (`models/{{x}}.tgz` -> `models/`); `None` when
/// the key has no tag, or no folder before it.
fn literal_folder(key: &str) -> Option<String> {
    let at = key.find("{{")?;
    let folder = &key[..key[..at].rfind('/')? + 1];
    (!folder.trim_matches('/').is_empty()).then(|| folder.to_string())
}

fn parse_time(t: Option<&str>) -> Option<jiff::Timestamp> {
    t?.parse().ok()
}

/// Which index a key base is in: this plan's uses, or the index of workflows outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Local,
    External,
}

/// A key base of one bucket, in one of the two indexes.
type BaseNode = (Side, Arc<str>);

/// Turns `Delete` into `Keep(Shared)` wherever an overlapping use is live: not being deleted
/// itself, in this plan or (through `external`) in a workflow outside it. Liveness spreads
/// along overlaps through uses that are due (a due use outside the plan overlapping a live one
/// is live in turn), so an artifact is kept exactly when the overlap graph connects it to a live
/// use. Each connected group of key bases is walked once, whatever its size: the cost is the
/// number of overlaps, not a repeat over every artifact until nothing changes.
fn keep_shared_keys(plan: &mut GcPlan, uses: &[KeyUse], external: Option<&KeyIndex>) {
    let mut local = OverlapIndex::default();
    for (i, u) in uses.iter().enumerate() {
        local.insert(&u.target, i as u32);
    }
    let planned: HashSet<String> = plan
        .workflows
        .iter()
        .map(|w| KeyIndex::workflow_key(&w.namespace, &w.name))
        .collect();
    let graph = OverlapGraph {
        plan,
        uses,
        local: &local,
        external,
        planned: &planned,
    };
    let mut seen: HashSet<(String, String, BaseNode)> = HashSet::new();
    let mut kept: Vec<(ArtifactRef, KeepReason)> = Vec::new();
    for (i, u) in uses.iter().enumerate() {
        let Some(owner) = u.owner else { continue };
        if !graph.deleting(owner) {
            continue;
        }
        let bucket = (u.target.store.clone(), u.target.bucket.clone());
        let start: BaseNode = (Side::Local, Arc::from(u.target.key.trim_end_matches('/')));
        if seen.contains(&(bucket.0.clone(), bucket.1.clone(), start.clone())) {
            continue;
        }
        let component = graph.component(&uses[i].target, start);
        for node in &component.nodes {
            seen.insert((bucket.0.clone(), bucket.1.clone(), node.clone()));
        }
        kept.extend(graph.kept_in(&uses[i].target, &component));
    }
    for (r, reason) in kept {
        let art = plan.artifact_mut(r);
        art.decision = Decision::Keep(reason);
        art.connection = None;
    }
}

struct OverlapGraph<'a> {
    plan: &'a GcPlan,
    uses: &'a [KeyUse],
    local: &'a OverlapIndex,
    external: Option<&'a KeyIndex>,
    planned: &'a HashSet<String>,
}

/// The key bases connected to one artifact's, and which of them hold a live use.
struct Component {
    nodes: Vec<BaseNode>,
    live: Vec<usize>,
    /// Who keeps it live.
    liveness: Liveness,
}

/// Who keeps key bases live: whether some live use does more than read them (it will own the
/// keys), and the namespaces of the running workflows that only read them.
#[derive(Debug, Default)]
struct Liveness {
    writes: bool,
    readers: BTreeSet<String>,
}

impl Liveness {
    fn add(&mut self, reader: Option<&str>) {
        match reader {
            Some(ns) => {
                self.readers.insert(ns.to_string());
            }
            None => self.writes = true,
        }
    }

    fn absorb(&mut self, other: Liveness) {
        self.writes |= other.writes;
        self.readers.extend(other.readers);
    }

    /// Why an artifact of `namespace` reached by this liveness is kept. Only readers: pending
    /// (they never delete their inputs), but only for readers of its own namespace, so that no
    /// tenant can hold another's workflow by reading its keys; anyone else settles it.
    fn keep(&self, namespace: &str, label: String) -> KeepReason {
        match !self.writes && self.readers.iter().all(|n| n == namespace) {
            true => KeepReason::ReadByRunning(label),
            false => KeepReason::Shared(label),
        }
    }
}

impl OverlapGraph<'_> {
    fn deleting(&self, r: ArtifactRef) -> bool {
        self.plan.artifact(r).decision == Decision::Delete
    }

    /// A local use is live unless its artifact is being deleted in this plan.
    fn local_live(&self, id: u32) -> bool {
        self.uses[id as usize]
            .owner
            .is_none_or(|o| !self.deleting(o))
    }

    /// An external use counts unless it is a planned workflow's own (stale) entry.
    fn counts(&self, workflow: &str) -> bool {
        !self.planned.contains(workflow)
    }

    /// A use naming the base, a live one when there is one: what a kept artifact names; and
    /// who keeps it live (empty when no use is live).
    fn label(&self, side: Side, probe: &S3Target, base: &str) -> Option<(bool, String, Liveness)> {
        let mut liveness = Liveness::default();
        match side {
            Side::Local => {
                let ids = self.local.uses_at(probe, base);
                let mut first_live = None;
                for &i in ids.iter().filter(|&&i| self.local_live(i)) {
                    first_live.get_or_insert(i);
                    liveness.add(self.uses[i as usize].reader.as_deref());
                }
                let any = first_live.or(ids.first().copied())?;
                let label = self.uses[any as usize].label.clone();
                Some((first_live.is_some(), label, liveness))
            }
            Side::External => {
                let mut any = None;
                let mut live: Option<String> = None;
                for u in self.external?.uses_at(probe, base) {
                    if !self.counts(&u.workflow) {
                        continue;
                    }
                    if !u.due {
                        let ns = u.workflow.split_once('/').map_or("", |(ns, _)| ns);
                        liveness.add(u.reads.then_some(ns));
                        live.get_or_insert_with(|| u.label(base));
                    }
                    any.get_or_insert_with(|| u.label(base));
                }
                match live {
                    Some(l) => Some((true, l, liveness)),
                    None => any.map(|l| (false, l, liveness)),
                }
            }
        }
    }

    /// The key bases overlapping `base`, in both indexes.
    fn neighbours(&self, probe: &S3Target, base: &str, out: &mut Vec<BaseNode>) {
        let at = S3Target {
            key: base.to_string(),
            ..probe.clone()
        };
        let mut found = Vec::new();
        self.local.overlapping_bases(&at, &mut found);
        out.extend(found.drain(..).map(|(k, _)| (Side::Local, k.clone())));
        if let Some(ext) = self.external {
            let mut bases = Vec::new();
            ext.overlapping_bases(&at, |w| self.counts(w), &mut bases);
            out.extend(bases.into_iter().map(|b| (Side::External, Arc::from(b))));
        }
    }

    fn component(&self, probe: &S3Target, start: BaseNode) -> Component {
        let mut index: HashMap<BaseNode, usize> = HashMap::from([(start.clone(), 0)]);
        let mut nodes = vec![start];
        let mut live = Vec::new();
        let mut liveness = Liveness::default();
        let mut next = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            let (side, base) = nodes[i].clone();
            if let Some((true, _, l)) = self.label(side, probe, &base) {
                live.push(i);
                liveness.absorb(l);
            }
            next.clear();
            self.neighbours(probe, &base, &mut next);
            for n in next.drain(..) {
                if !index.contains_key(&n) {
                    index.insert(n.clone(), nodes.len());
                    nodes.push(n);
                }
            }
            i += 1;
        }
        Component {
            nodes,
            live,
            liveness,
        }
    }

    /// The artifacts of a component that a live use reaches, each with the use it names: the
    /// live use of its own base, else the base through which liveness reached it.
    fn kept_in(&self, probe: &S3Target, c: &Component) -> Vec<(ArtifactRef, KeepReason)> {
        if c.live.is_empty() {
            return Vec::new();
        }
        let position: HashMap<&BaseNode, usize> =
            c.nodes.iter().enumerate().map(|(i, n)| (n, i)).collect();
        let mut from: Vec<Option<usize>> = vec![None; c.nodes.len()];
        let mut queue: std::collections::VecDeque<usize> = c.live.iter().copied().collect();
        for &l in &c.live {
            from[l] = Some(l);
        }
        let mut next = Vec::new();
        while let Some(i) = queue.pop_front() {
            next.clear();
            self.neighbours(probe, &c.nodes[i].1, &mut next);
            for n in &next {
                if let Some(&j) = position.get(n)
                    && from[j].is_none()
                {
                    from[j] = Some(i);
                    queue.push_back(j);
                }
            }
        }
        let mut out = Vec::new();
        for (i, (side, base)) in c.nodes.iter().enumerate() {
            if *side != Side::Local {
                continue;
            }
            let ids = self.local.uses_at(probe, base);
            let own_live = self.label(Side::Local, probe, base).filter(|(l, _, _)| *l);
            for &id in ids {
                let Some(owner) = self.uses[id as usize].owner else {
                    continue;
                };
                if !self.deleting(owner) {
                    continue;
                }
                let label = match (&own_live, from[i]) {
                    (Some((_, l, _)), _) => l.clone(),
                    (None, Some(p)) => {
                        let (pside, pbase) = &c.nodes[p];
                        match self.label(*pside, probe, pbase) {
                            Some((_, l, _)) => l,
                            None => continue,
                        }
                    }
                    (None, None) => continue,
                };
                let namespace = &self.plan.workflows[owner.workflow].namespace;
                out.push((owner, c.liveness.keep(namespace, label)));
            }
        }
        out
    }
}

/// The keys one workflow uses, for a [`KeyIndex`]: every artifact not yet deleted (due when
/// its strategy makes it due now) and, while it runs, the literal keys its templates and inputs name.
pub fn workflow_key_uses(wf: &Workflow, state: &ClusterState) -> Vec<WorkflowKeyUse> {
    plan_alone(wf, state).1
}

/// One workflow's plan on its own (no shared-key check) and its key uses, in one pass.
pub fn plan_alone(wf: &Workflow, state: &ClusterState) -> (WorkflowPlan, Vec<WorkflowKeyUse>) {
    let mut uses = Vec::new();
    let wp = plan_workflow(wf, state, &PlanOptions::default(), 0, &mut uses);
    let prefixes = &state.grant_for(wf.namespace()).key_prefixes;
    let uses = uses
        .into_iter()
        .map(|u| WorkflowKeyUse {
            floor: prefixes
                .iter()
                .filter(|p| crate::policy::under_prefix(&u.target.key, p))
                .map(|p| p.trim_end_matches('/').len())
                .max()
                .unwrap_or(0),
            // Due by its strategy, whatever its credentials say: the controller indexes
            // without reading Secrets.
            due: u.owner.is_some_and(|r| wp.artifacts[r.artifact].due),
            target: u.target,
            label: u.label,
            reads: u.reader.is_some(),
        })
        .collect();
    (wp, uses)
}
