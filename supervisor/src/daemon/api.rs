//! The daemon's wire types, shared by `covenantd` and its clients (`covenant-ctl`, the
//! tests, the load benchmark). Every request type refuses unknown fields.

use crate::store::jobs::{JobRow, JobState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

/// The API's version prefix.
pub const PREFIX: &str = "/v1";

/// The header that carries a capability on the operator socket's memory endpoints.
pub const CAPABILITY_HEADER: &str = "covenant-capability";

/// Largest request body accepted, except on the stdin endpoint (which streams).
pub const MAX_BODY: usize = 1024 * 1024;

/// `POST /v1/jobs`: an intent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The manifest as JSON (the keys of the TOML file, `docs/manifest.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<serde_json::Value>,
    /// The manifest as TOML text; give this or `manifest`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_toml: Option<String>,
    /// Absolute folder relative paths in the manifest resolve against (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<PathBuf>,
    /// The capability authorising the run (`cov1.…`). Required.
    pub capability: String,
    /// The program and its arguments; replaces the manifest's `command` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// `native` (default), `gvisor` or `oci:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// `null` (default): stdin is empty. `pipe`: written with `POST /v1/jobs/ID/stdin`.
    #[serde(default)]
    pub stdin: StdinMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StdinMode {
    #[default]
    Null,
    Pipe,
}

/// `201` answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub id: String,
    pub state: JobState,
    /// Position in the queue when `queued` (0 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

/// A job's status (`GET /v1/jobs/ID`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    #[serde(flatten)]
    pub row: JobRow,
    /// Bytes the job has written to stdout and stderr so far.
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
}

/// `POST /v1/jobs/ID/kill`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// Signal name (`TERM`, `INT`, `HUP`, `KILL`, …) or number; default `KILL`.
    #[serde(default)]
    pub signal: Option<String>,
}

/// One line of `GET /v1/jobs/ID/output` (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum OutputLine {
    /// Bytes the job wrote, base64 (standard alphabet), at `offset` in that stream.
    Data {
        stream: Stream,
        offset: u64,
        data: String,
    },
    /// The job reached a final state; nothing follows.
    End {
        state: JobState,
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// `POST /v1/mem` (and the agent socket's): one memory item.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemPut {
    pub namespace: String,
    /// `working`, `episodic` or `long-term` (default `working`).
    #[serde(default)]
    pub tier: Option<String>,
    pub text: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub parent: Option<String>,
}

/// `POST /v1/audit` on the agent socket: an agent-authored event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    /// Recorded as `agent.KIND`: 1-64 of letters, digits, `-_.`.
    pub kind: String,
    #[serde(default)]
    pub body: serde_json::Value,
}

/// Every error answer: what was wrong, and the field when one is to blame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (429, 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

/// Who made a request: the socket's peer credentials, a TCP peer that presented the
/// bearer token, or a sandboxed agent on its job's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        /// Root, or a member of the configured admin group when it connected.
        admin: bool,
    },
    Tcp {
        addr: String,
    },
    Agent {
        job: String,
    },
}

impl Caller {
    pub fn audit(&self) -> serde_json::Value {
        match self {
            Caller::Unix {
                uid,
                gid,
                pid,
                admin,
            } => {
                json!({"via": "unix", "uid": uid, "gid": gid, "pid": pid, "admin": admin})
            }
            Caller::Tcp { addr } => json!({"via": "tcp", "addr": addr}),
            Caller::Agent { job } => json!({"via": "agent-socket", "job": job}),
        }
    }

    /// Root or the admin group on the unix socket: sees and controls every job and all
    /// memory. A TCP client never is one: the bearer token names nobody.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Unix { admin: true, .. })
    }

    /// Whether this caller may see and control the job `row`: an admin any job; a unix
    /// caller the jobs its uid submitted (and their sub-intents); TCP clients, one
    /// identity without a uid, the jobs submitted over TCP. An agent reaches its
    /// sub-intents through its own socket, never here.
    pub fn owns(&self, row: &JobRow) -> bool {
        match self {
            Caller::Unix { admin: true, .. } => true,
            Caller::Unix { uid, .. } => row.caller_uid == Some(*uid),
            Caller::Tcp { .. } => row.caller_uid.is_none(),
            Caller::Agent { .. } => false,
        }
    }

    pub(super) fn uid(&self) -> Option<u32> {
        match self {
            Caller::Unix { uid, .. } => Some(*uid),
            _ => None,
        }
    }

    pub(super) fn pid(&self) -> Option<i32> {
        match self {
            Caller::Unix { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// An error answer: status and body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                field: None,
                retry_after_s: None,
            },
        }
    }

    pub fn field(status: u16, field: &str, error: impl Into<String>) -> Self {
        let mut e = Self::new(status, error);
        e.body.field = Some(field.to_string());
        e
    }

    pub fn retry(status: u16, error: impl Into<String>, after: u64) -> Self {
        let mut e = Self::new(status, error);
        e.body.retry_after_s = Some(after);
        e
    }
}
