//! The gateway's one error type and its one conversion to a gRPC status. Causes inside the
//! service (the database) are logged here and never sent to the agent; everything else has a
//! stable message the agent (and its operator) can act on.

use std::time::Duration;

use tonic::Status;

use super::convert::Invalid;
use meshfleet_pki::csr::CsrError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a client certificate is required")]
    NoClientCertificate,
    #[error("the certificate names no Meshfleet agent")]
    NotAnAgent,
    /// Found when the call (or a stream's periodic re-check) looks the certificate up.
    #[error("this agent certificate was revoked or its cluster deleted; register again")]
    CertificateInvalid,
    /// Told to an open stream the moment its certificate or cluster goes.
    #[error("this agent certificate was revoked or its cluster deleted")]
    Revoked,
    #[error("unknown bootstrap token")]
    UnknownToken,
    #[error("this bootstrap token was already used; issue a new one for the cluster")]
    TokenUsed,
    #[error("this bootstrap token has expired; issue a new one")]
    TokenExpired,
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("this cluster's agent connects more than {per_min} times a minute; retry in {} s", retry_in.as_secs().max(1))]
    Reconnects { per_min: f64, retry_in: Duration },
    #[error("this cluster's agent sent more than {per_sec} messages per second; slow down")]
    RateLimited { per_sec: f64 },
    #[error("the first message on a stream must be Hello")]
    NoHello,
    #[error("a message without a body")]
    EmptyMessage,
    #[error("invalid report: {0}")]
    InvalidReport(#[from] Invalid),
    #[error("report seq {seq} does not increase (last {last})")]
    SeqNotIncreasing { seq: u64, last: u64 },
    #[error("superseded by a newer connection of this cluster's agent")]
    Superseded,
    #[error("the service is shutting down")]
    ShuttingDown,
    /// Too many streams being opened, or no database connection free in time: the agent
    /// comes back after its jittered backoff, which spreads a reconnecting fleet out.
    #[error("the service is busy; retry after a pause")]
    Busy,
    #[error("a report could not be stored; reconnect and resend")]
    NotStored,
    #[error("the agent went away")]
    AgentGone,
    /// What the transport (or the agent's side of the stream) ended it with, passed on as is.
    #[error("{}", .0.message())]
    Transport(Status),
    #[error("no open rotate-issuer command {0:?} for this cluster")]
    NoIssuerRotation(String),
    #[error("the organization has no active trust anchor to sign issuers with")]
    NoAnchor,
    #[error("the organization's active trust anchor changed while signing; ask again")]
    AnchorMoved,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Minting for a key that passed the CSR check (or opening the anchor's sealed key): a
    /// fault of the service, not the agent.
    #[error("cannot sign the certificate: {0}")]
    Sign(#[from] meshfleet_pki::Error),
}

impl Error {
    fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NoClientCertificate | Error::NotAnAgent | Error::UnknownToken | Error::TokenUsed | Error::TokenExpired => Code::Unauthenticated,
            Error::CertificateInvalid | Error::Revoked => Code::PermissionDenied,
            Error::Csr(_) | Error::NoHello | Error::EmptyMessage | Error::InvalidReport(_) | Error::SeqNotIncreasing { .. } => Code::InvalidArgument,
            Error::Reconnects { .. } | Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Superseded | Error::AnchorMoved => Code::Aborted,
            Error::NoIssuerRotation(_) | Error::NoAnchor => Code::FailedPrecondition,
            Error::ShuttingDown | Error::NotStored | Error::Busy => Code::Unavailable,
            Error::AgentGone => Code::Cancelled,
            Error::Transport(status) => status.code(),
            Error::Database(_) | Error::Sign(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Transport(status) => status,
            Error::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("gateway call found no free database connection in time");
                Status::unavailable(Error::Busy.to_string())
            }
            Error::Database(_) | Error::Sign(_) => {
                tracing::error!(error = %e, "gateway call failed");
                Status::internal("internal error; it has been logged")
            }
            e => Status::new(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_causes_never_reach_the_agent() {
        let status = Status::from(Error::Database(sqlx::Error::Protocol("password authentication failed for user admin".into())));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error; it has been logged");
    }

    #[test]
    fn an_exhausted_pool_says_busy_not_internal() {
        let status = Status::from(Error::Database(sqlx::Error::PoolTimedOut));
        assert_eq!((status.code(), status.message()), (tonic::Code::Unavailable, "the service is busy; retry after a pause"));
    }

    #[test]
    fn refusals_keep_their_code_and_message() {
        let status = Status::from(Error::Reconnects { per_min: 6.0, retry_in: Duration::from_millis(200) });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "this cluster's agent connects more than 6 times a minute; retry in 1 s");
        let status = Status::from(Error::Transport(Status::out_of_range("too big")));
        assert_eq!((status.code(), status.message()), (tonic::Code::OutOfRange, "too big"));
    }
}
