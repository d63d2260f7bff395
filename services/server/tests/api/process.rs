//! The server binary Cargo built for these tests, run as a process (replicas, kill and restart);
//! the process helpers themselves are in meshfleet-test-support.

use meshfleet_test_support::server::ServerBin;

pub fn server() -> ServerBin {
    ServerBin::at(env!("CARGO_BIN_EXE_meshfleet-server"))
}
