//! Every kind of audit event Covenant writes, in one place. Code names a kind by its
//! variant, never by a string; docs/audit.md's tables list exactly these (a test holds
//! the two together). An agent's own events (`agent.KIND`, through `agent:audit`) are
//! the one open family: [`super::AuditEvent::by_agent`] builds them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// The kind of an audit event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $(#[$doc])* $variant, )*
        }

        impl Kind {
            /// Every kind, in the order docs/audit.md lists them.
            pub const ALL: &'static [Kind] = &[ $( Kind::$variant, )* ];

            /// The name stored in the chain.
            pub const fn as_str(self) -> &'static str {
                match self { $( Kind::$variant => $name, )* }
            }

            /// The kind a stored name stands for, if it is one of ours.
            pub fn parse(name: &str) -> Option<Kind> {
                match name { $( $name => Some(Kind::$variant), )* _ => None }
            }
        }
    };
}

kinds! {
    /// A writer opened the store.
    StoreOpened = "store.opened",
    /// Rows were unsigned when a writer opened the store.
    StoreRecovered = "store.recovered",
    /// A writer closed the store.
    StoreClosed = "store.closed",
    /// A run was asked for (embedded, or a daemon submission).
    RunIntent = "run.intent",
    /// The request was authorised.
    CapabilityVerified = "capability.verified",
    /// The capability did not parse or verify.
    CapabilityRefused = "capability.refused",
    /// The request asks for scopes the capability lacks.
    RequestRefused = "request.refused",
    /// The request itself is invalid.
    RequestInvalid = "request.invalid",
    /// The plan exists.
    PlanCompiled = "plan.compiled",
    /// The bundle is on disk.
    BundleWritten = "bundle.written",
    /// The bundle is kept for later (`--keep-bundle`).
    BundleKept = "bundle.kept",
    /// A signed bundle passed its checks and runs as a new job.
    BundleVerified = "bundle.verified",
    /// A bundle was unsigned, signed by an untrusted key, or changed since.
    BundleRefused = "bundle.refused",
    /// The program runs.
    SandboxStarted = "sandbox.started",
    /// A restriction is not enforced, as the plan accepted.
    DegradationAccepted = "degradation.accepted",
    /// A limit stopped something.
    LimitHit = "limit.hit",
    /// A signal was passed to the sandbox.
    SandboxSignalled = "sandbox.signalled",
    /// The supervisor killed the sandbox.
    SandboxKilled = "sandbox.killed",
    /// The run ended.
    RunExited = "run.exited",
    /// Setup failed.
    RunFailed = "run.failed",
    /// An embedded run found what a run whose supervisor died left, and removed it.
    RunAbandoned = "run.abandoned",
    /// What in the run's writable paths would make git on the host run code.
    WorkspaceGitFindings = "workspace.git.findings",
    /// A key was generated.
    KeyGenerated = "key.generated",
    /// A key was added to the trust store.
    KeyTrusted = "key.trusted",
    /// A key was removed from the trust store.
    KeyUntrusted = "key.untrusted",
    /// A token was issued.
    CapabilityGranted = "capability.granted",
    /// A token was attenuated.
    CapabilityAttenuated = "capability.attenuated",
    /// A token id was revoked.
    CapabilityRevoked = "capability.revoked",
    /// An image was imported.
    ImageImported = "image.imported",
    /// An image was removed.
    ImageRemoved = "image.removed",
    /// Unreferenced image blobs were collected.
    ImageGc = "image.gc",
    /// Old rows were archived and dropped.
    AuditPruned = "audit.pruned",
    /// A memory item was written.
    MemoryPut = "memory.put",
    /// A memory item was removed.
    MemoryRemoved = "memory.removed",
    /// Expired memory items were removed.
    MemoryCompacted = "memory.compacted",
    /// The daemon listens.
    DaemonStarted = "daemon.started",
    /// The daemon got SIGTERM or SIGINT.
    DaemonStopping = "daemon.stopping",
    /// The daemon exits.
    DaemonStopped = "daemon.stopped",
    /// A job is running or queued.
    JobAdmitted = "job.admitted",
    /// Admission refused a job.
    JobRefused = "job.refused",
    /// A job's sandbox process exists.
    JobStarted = "job.started",
    /// A job reached a final state.
    JobFinished = "job.finished",
    /// A job was killed while queued.
    JobCancelled = "job.cancelled",
    /// At start: an agent socket folder of a job that was never admitted was removed.
    DaemonOrphanRemoved = "daemon.orphan.removed",
    /// A restarted daemon found a job unfinished and cleaned up after it.
    JobInterrupted = "job.interrupted",
    /// A request on the daemon's socket that changed something.
    ApiRequest = "api.request",
    /// Every other request, counted per caller.
    ApiRequests = "api.requests",
    /// A job's agent requests, in summary.
    AgentRequests = "agent.requests",
    /// A job's agent spent its refusals; its socket is closed.
    AgentSocketClosed = "agent.socket.closed",
    /// Connections the egress gateway forwarded or refused, in batches.
    EgressConnect = "net.egress.connect",
    /// Names the egress gateway answered or refused, in batches.
    EgressQuery = "net.egress.query",
    /// The egress gateway's totals for the run.
    EgressSummary = "net.egress.summary",
    /// `covenant-runtime create` made a container.
    ContainerCreated = "container.created",
    /// `covenant-runtime create` refused a container.
    ContainerRefused = "container.refused",
    /// `covenant-runtime start` released a container's process.
    ContainerStarted = "container.started",
    /// `covenant-runtime kill` signalled a container.
    ContainerKilled = "container.killed",
    /// `covenant-runtime delete` removed a container.
    ContainerDeleted = "container.deleted",
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Kind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` is not an audit event kind")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The kinds docs/audit.md's tables name in their first column.
    fn documented() -> BTreeSet<String> {
        let doc = include_str!("../../../docs/audit.md");
        let mut kinds = BTreeSet::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("");
            for (i, piece) in first.split('`').enumerate() {
                if i % 2 == 1 {
                    kinds.insert(piece.to_string());
                }
            }
        }
        kinds
    }

    #[test]
    fn docs_list_exactly_the_kinds_the_code_writes() {
        let code: BTreeSet<String> = Kind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .chain(["agent.KIND".to_string()])
            .collect();
        let doc = documented();
        let undocumented: Vec<_> = code.difference(&doc).collect();
        let unknown: Vec<_> = doc.difference(&code).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "docs/audit.md and store::Kind differ: not in the docs {undocumented:?}, not in the code {unknown:?}"
        );
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = BTreeSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.as_str()), "{k} twice");
            assert_eq!(Kind::parse(k.as_str()), Some(*k));
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), *k);
        }
        assert_eq!(Kind::parse("agent.note"), None);
        let e = serde_json::from_str::<Kind>("\"run.fialed\"").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`run.fialed` is not an audit event kind"),
            "{e}"
        );
    }
}
