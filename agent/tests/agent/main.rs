//! Integration tests of the agent: the gateway client against an in-test gateway (real gRPC
//! over mTLS), and the Kubernetes side against the fake API server, in process and as binaries.

mod binaries;
mod client;
mod gateway;
mod kube;
mod replicas;
mod restarts;
