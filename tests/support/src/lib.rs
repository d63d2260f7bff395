//! What Meshfleet's tests and benches share: running this workspace's binaries as processes
//! (`process`), a TCP load balancer in front of replicas (`balancer`), and with the `server`
//! feature a real server over SQLite or PostgreSQL (`app::TestApp`) and the server binary as a
//! process (`server`). Test code only.

pub mod balancer;
pub mod process;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod server;
