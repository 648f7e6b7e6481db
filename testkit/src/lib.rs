//! Test doubles for artgc's tests, benchmarks and demo. Never used by the controller's own code.
//!
//! [`KubeApiServer`] is a Kubernetes API server over HTTP that kube-rs and kubectl talk to.
//!
//! [`RealKube`] is the real kube-apiserver `.ci/kube.sh` starts, a namespace per test.
//!
//! [`S3Server`] is a real S3 endpoint over HTTP: `s3s-fs` in this process (SigV4 checked), or,
//! when `ARTGC_TEST_S3_ENDPOINT` is set, an external store such as garage started by `.ci/run`.

pub mod blackhole;
pub mod env;
pub mod faults;
mod http;
pub mod kube;
pub mod real_kube;
pub mod s3;
pub mod sts;

pub use blackhole::BlackHoleProxy;
pub use env::{free_port, needed_var, optional_var};
pub use faults::{FaultProxy, FaultRule, SeenRequest};
pub use http::flag;
pub use kube::{KubeApiServer, KubeFault, KubeRequest, ResourceType};
pub use real_kube::{Namespace, RealKube};
pub use s3::{S3Server, unique_bucket};
pub use sts::{Sink, StsCall, StsRole, StsServer};
