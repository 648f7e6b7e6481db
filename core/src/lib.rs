//! artgc-core: what artgc decides, with no IO. Everything here is a function of values: the
//! front ends (the controller and the CLI in the `artgc` crate) read Workflows, ConfigMaps and
//! Secrets, hand them in, and carry out what comes back. No tokio, kube client, AWS SDK or
//! clap in this crate: a leak of IO into a decision is a compile error.
//!
//! The flow of one pass:
//! - [`inventory`] turns manifest text into [`model`] types (Argo's Workflow, with [`nodes`]
//!   for where Argo keeps node status);
//! - [`cluster`] resolves each artifact's repository (artifact, archiveLocation,
//!   artifactRepositoryRef, the namespace's ConfigMap, Argo's config) and [`location`] its
//!   bucket, key and credentials, gated by the tenancy [`policy`];
//! - [`plan`] decides per artifact: delete, keep (and why), or fail, using [`keys`] to find
//!   keys that other workflows use;
//! - the executor (IO) fills an [`execution`]; [`outcome`] judges it and says what to record;
//! - [`status_patch`] turns that into the merge patch written to the Workflow.

pub mod cluster;
pub mod error;
pub mod execution;
pub mod inventory;
pub mod keys;
pub mod location;
pub mod model;
pub mod nodes;
pub mod notice;
pub mod outcome;
pub mod persistence;
pub mod plan;
pub mod policy;
pub mod reads;
pub mod status_patch;
pub mod units;
pub mod versions;
pub mod yaml;
