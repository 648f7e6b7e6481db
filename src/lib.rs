//! artgc: garbage collection of Argo Workflows artifacts.
//!
//! The pure core decides ([`plan`], fed by [`model`], [`nodes`], [`cluster`], [`location`]);
//! the edges do IO ([`manifests`] reads files, [`store`] talks S3, [`execute`] carries a plan
//! out); [`cli`] is a thin front end over both.

pub mod admin;
pub mod api;
pub mod backlog;
pub mod cli;
pub mod cluster;
pub mod controller;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod execute;
pub mod execution;
pub mod identity;
pub mod keys;
pub mod location;
pub mod low_priority;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod purge;
pub mod queue;
pub mod record;
pub mod report;
pub mod store;
pub mod telemetry;
