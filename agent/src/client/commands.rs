//! At-most-once command execution per id: the server delivers at least once, so a redelivered id
//! gets its stored result resent (or nothing while it still runs), never a second execution.
//! The memory of ids is bounded; only very old finished commands are forgotten. A command the
//! agent cannot read (a kind newer than it, or parameters from an older server that do not parse)
//! is answered here, FAILED, and never reaches `Agent::execute`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_agent_protocol::commands::Untyped;
use meshfleet_agent_protocol::v1::{self, agent_message::Body, CommandResult, CommandState};

use super::Shared;

/// Far more than the commands a cluster sees between two reconnects.
const REMEMBERED: usize = 4096;
const MAX_ID_LEN: usize = 256;
const MAX_KIND_SHOWN: usize = 100;

#[derive(Default)]
pub(super) struct Commands {
    /// id -> None while running, Some(result) when done.
    results: HashMap<String, Option<CommandResult>>,
    order: VecDeque<String>,
    /// The newest command id received, reported in Hello.
    pub(super) last_seen: String,
}

enum Seen {
    New,
    Running,
    Done(CommandResult),
}

impl Commands {
    fn observe(&mut self, id: &str) -> Seen {
        self.last_seen = id.to_owned();
        match self.results.get(id) {
            Some(None) => Seen::Running,
            Some(Some(r)) => Seen::Done(r.clone()),
            None => {
                self.results.insert(id.to_owned(), None);
                self.order.push_back(id.to_owned());
                while self.order.len() > REMEMBERED {
                    if let Some(old) = self.order.pop_front() {
                        self.results.remove(&old);
                    }
                }
                Seen::New
            }
        }
    }

    fn finish(&mut self, id: &str, result: CommandResult) {
        if let Some(slot) = self.results.get_mut(id) {
            *slot = Some(result);
        }
    }
}

/// Handles a `Command` from the server.
pub(super) fn receive(shared: &Arc<Shared>, command: v1::Command) {
    if command.id.is_empty() || command.id.len() > MAX_ID_LEN {
        tracing::warn!(len = command.id.len(), "ignoring a command with an unusable id");
        return;
    }
    let seen = shared.state().commands.observe(&command.id);
    match seen {
        Seen::Running => tracing::debug!(id = %command.id, "command redelivered while running"),
        Seen::Done(result) => {
            tracing::debug!(id = %command.id, "command redelivered; resending its result");
            shared.push(Body::CommandResult(result));
        }
        Seen::New => {
            tokio::spawn(execute(shared.clone(), command));
        }
    }
}

async fn execute(shared: Arc<Shared>, command: v1::Command) {
    let id = command.id.clone();
    let typed = command.typed();
    let kind = typed.as_ref().map_or_else(|e| e.kind().to_owned(), |b| b.kind().to_owned());
    let remaining_ms = match command.deadline_unix_ms {
        0 => None,
        d => Some(d - now_ms()),
    };
    let result = match (typed, remaining_ms) {
        (Err(Untyped::Unsupported { kind: unknown }), _) => unsupported(&unknown),
        (Err(e @ Untyped::BadParams { .. }), _) => failed(&e.to_string()),
        (Ok(_), Some(ms)) if ms <= 0 => failed("the command's deadline passed before it could run"),
        (Ok(body), _) => {
            let (agent, id) = (shared.agent.clone(), id.clone());
            // A separate task, so a panicking command handler becomes a FAILED result instead of
            // a command stuck in "running" forever.
            let mut task = tokio::spawn(async move { agent.execute(id, body).await });
            let waited = match remaining_ms {
                Some(ms) => tokio::time::timeout(Duration::from_millis(ms as u64), &mut task).await.ok(),
                None => Some((&mut task).await),
            };
            match waited {
                None => {
                    task.abort();
                    failed("the command's deadline passed while it ran")
                }
                Some(Err(_)) => failed("the agent failed while running the command"),
                Some(Ok(r)) => r,
            }
        }
    };
    let result = CommandResult { command_id: id.clone(), ..result };
    tracing::info!(%id, %kind, state = ?result.state(), "command finished");
    {
        let mut st = shared.state();
        st.commands.finish(&id, result.clone());
        st.stats.commands_executed += 1;
    }
    shared.push(Body::CommandResult(result));
}

fn failed(message: &str) -> CommandResult {
    CommandResult { state: CommandState::Failed as i32, message: message.to_owned(), ..Default::default() }
}

/// The answer to a command of a kind this agent cannot run (one newer than the agent), so the
/// server learns it at once instead of at the deadline.
pub fn unsupported(kind: &str) -> CommandResult {
    // Bounded, so the server never refuses the answer as too long.
    let kind: String = kind.chars().take(MAX_KIND_SHOWN).collect();
    CommandResult {
        state: CommandState::Failed as i32,
        message: format!("unsupported command kind {kind:?}: agent {} cannot run it", env!("CARGO_PKG_VERSION")),
        output_json: serde_json::json!({ "unsupported": kind }).to_string(),
        ..Default::default()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
