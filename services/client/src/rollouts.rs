//! Rollouts of a mesh version over the organization's clusters: the plan preview, starting one,
//! reading them, and pausing, resuming or aborting one.

use serde::{Deserialize, Serialize};

use super::{Client, Reply, Result};

/// A rollout as people ask for it; the service's default settings apply.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRequest {
    /// A version in the release catalog.
    pub target_version: String,
    /// The clusters it covers, by label (Kubernetes selector syntax); empty: every cluster.
    pub selector: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlannedCluster {
    pub id: String,
    pub name: String,
    pub from: String,
    /// The versions it passes through, the target last.
    pub hops: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Wave {
    /// canary or batch.
    pub kind: String,
    pub clusters: Vec<PlannedCluster>,
}

/// A selected cluster a rollout leaves alone, and why.
#[derive(Debug, Clone, Deserialize)]
pub struct Skipped {
    pub id: String,
    pub name: String,
    pub reason: String,
}

/// The waves a rollout would run (`POST /api/v1/rollouts/plan`).
#[derive(Debug, Clone, Deserialize)]
pub struct Plan {
    pub target_version: String,
    pub waves: Vec<Wave>,
    pub skipped: Vec<Skipped>,
}

/// Where one cluster of a rollout is.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterRun {
    pub id: String,
    pub name: String,
    pub wave: u32,
    pub from: String,
    pub hops: Vec<String>,
    pub phase: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub target_version: String,
    pub selector: String,
    /// running, paused, completed or aborted.
    pub state: String,
    /// Why it is paused or aborted.
    pub reason: Option<String>,
    /// The wave running, from 0, of `waves`.
    pub wave: u32,
    pub waves: u32,
    pub clusters: Vec<ClusterRun>,
    pub skipped: Vec<Skipped>,
    pub created_at: String,
}

/// What an admin can do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
        }
    }
}

impl Client {
    /// The waves a rollout would run, without starting it (admins).
    pub async fn plan_rollout(&self, request: &RolloutRequest) -> Result<Reply<Plan>> {
        self.send("plan rollout", self.authed(self.http.post(self.url("/api/v1/rollouts/plan"))).json(request)).await
    }

    /// Starts a rollout as planned (admins).
    pub async fn start_rollout(&self, request: &RolloutRequest) -> Result<Reply<Rollout>> {
        self.send("start rollout", self.authed(self.http.post(self.url("/api/v1/rollouts"))).json(request)).await
    }

    /// The organization's latest rollouts, newest first.
    pub async fn rollouts(&self) -> Result<Reply<Vec<Rollout>>> {
        self.get_reply("list rollouts", "/api/v1/rollouts", &[]).await
    }

    pub async fn rollout(&self, id: &str) -> Result<Reply<Rollout>> {
        self.get_reply("get rollout", &format!("/api/v1/rollouts/{id}"), &[]).await
    }

    /// Pauses, resumes or aborts a rollout (admins).
    pub async fn act_on_rollout(&self, id: &str, action: RolloutAction) -> Result<Reply<Rollout>> {
        let what = format!("{} rollout", action.as_str());
        self.send(&what, self.authed(self.http.post(self.url(&format!("/api/v1/rollouts/{id}/{}", action.as_str()))))).await
    }
}
