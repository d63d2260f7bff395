//! meshfleet-agent: the in-cluster agent. Configuration comes from the environment (the install
//! manifest's Secret and the downward API); exit code 64 on bad configuration.

use std::collections::HashMap;

use meshfleet_agent::k8s::{self, AgentConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meshfleet_agent::init_tracing("MESHFLEET_LOG");
    let vars: HashMap<String, String> = std::env::vars().collect();
    let config = match AgentConfig::from_vars(&vars) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("configuration: {p}");
            }
            std::process::exit(64);
        }
    };
    k8s::run(config).await
}
