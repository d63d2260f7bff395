//! End-to-end tests across processes: the real server (in-process or its binary), the agent,
//! the fake Kubernetes API server, and the mesh's and the simulator's binaries. Over SQLite, and
//! the killed-server upgrade scenario on PostgreSQL too (`on_both_engines!`); the single-package
//! suites stay with their packages (the server's API tests in
//! services/server/tests/api). One test binary for the crate.

mod kube_agent;
mod quickstart;
mod simulator;
