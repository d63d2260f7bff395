//! Integration tests for the mesh: the real controller and proxy binaries on 127.0.0.1.
mod admission;
mod discovery;
mod injector;
mod install;
mod intercept;
mod kube_source;
mod kubelet_walkthrough;
mod metrics;
mod mtls;
mod protocols;
mod robustness;
mod rotation;
mod support;
mod versions;
mod walkthrough;
