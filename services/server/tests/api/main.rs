//! Integration tests of meshfleet-server: real servers on 127.0.0.1:0 over SQLite, and over
//! PostgreSQL when MESHFLEET_TEST_POSTGRES_URL is set. One test binary for the crate. The
//! end-to-end suites with the agent, Kubernetes and the mesh are in the workspace's tests/.

mod helpers;
mod process;
use meshfleet_test_support::on_both_engines;

mod accounts;
mod alert_delivery;
mod alerts;
mod api_tokens;
mod caches;
mod client;
mod clusters;
mod conventions;
mod dashboard;
mod dashboard_alerts;
mod dashboard_certificates;
mod dashboard_upgrades;
mod deploy;
mod figures;
mod fleet;
mod gateway;
mod hardening;
mod health;
mod isolation;
mod jobs;
mod members;
mod metric_rules;
mod migrations;
mod openapi;
mod policies;
mod proposals;
mod quotas;
mod releases;
mod rolling_restart;
mod rollouts;
mod rollups;
mod secrets_at_rest;
mod silences;
mod store;
mod traces;
mod trust;
