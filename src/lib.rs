//! artgc: garbage collection of Argo Workflows artifacts. This crate is the IO around the
//! deciding core, [`artgc_core`]: the front ends and the edges.
//!
//! - Front ends: [`cli`] (`artgc plan|purge|controller|demo`), [`controller`] (the watch
//!   driver, queue and leader election). Both run one [`pass`]: probe, mark, delete, judge,
//!   record.
//! - Inputs: [`source`] (manifest files or a live cluster, for the CLI), [`kube_api`] (the
//!   Kubernetes API: typed reads, the watch's text objects, ConfigMaps and Secrets per
//!   workflow).
//! - Effects: [`identity`] (acting as a workflow's GC service account: TokenRequest, STS),
//!   [`store`] (S3), [`execute`] (carries a plan out against the store), [`record`] (writes the
//!   outcome onto the Workflow), [`low_priority`] (the thread a big Workflow's CPU work runs
//!   on).
//! - Telling: [`report`] (the CLI's table and JSON), [`metrics`] and [`admin`] (Prometheus and
//!   health endpoints), [`telemetry`] (logs).

pub mod admin;
pub mod cache;
pub mod cli;
pub mod controller;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dns;
pub mod execute;
pub mod identity;
pub mod kube_api;
pub mod low_priority;
pub mod metrics;
pub mod offload;
pub mod pass;
pub mod record;
pub mod report;
pub mod source;
pub mod store;
pub mod telemetry;
