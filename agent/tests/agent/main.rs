//! Integration tests of the gateway client against an in-test gateway (real gRPC over mTLS).

mod client;
mod gateway;
mod kube;
