//! meshfleet-server: the hosted service. The HTTP API, the agent gateway and background
//! workers, over one database (embedded SQLite or PostgreSQL).

pub mod alerting;
pub mod app;
pub mod cache;
pub mod certificates;
pub mod config;
pub mod db;
pub mod domain;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod install;
pub mod jobs;
pub mod jwt;
pub mod login;
pub mod metrics;
pub mod releases;
pub mod rollouts;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod ui;
pub mod worker;

pub use app::{AppState, Server};
pub use config::Config;
