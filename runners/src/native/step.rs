//! The named steps of the sandbox's setup, and the error the child side reports. A step
//! crosses the error pipe as one byte, its code, followed by the detail text: the parent
//! decodes it back into the same step, so the messages it shows and audits name the step
//! exactly as the child did, with nothing to parse and nothing to leak.

use std::fmt;

/// One step of the setup, in the order the parent, init and the program run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SetupStep {
    // The parent, letting the child go.
    StartSandbox = 1,
    // Init, before the root filesystem.
    WaitForParent,
    JoinCgroup,
    EnterBundleDirectory,
    EnterUserNamespace,
    SetParentDeathSignal,
    EnterCgroupNamespace,
    SetHostname,
    BringUpLoopback,
    // Init, building the root filesystem.
    MakeMountsPrivate,
    BindRootfs,
    MountInMemoryRoot,
    CreateRootLinks,
    MountOverlayScratch,
    MountOverlayRoot,
    CreateMountPoint,
    AttachBindMount,
    BindMount,
    MountFilesystem,
    CreateDevLinks,
    MaskPath,
    ReadOnlyPath,
    PivotRoot,
    DetachOldRoot,
    RemountRootReadOnly,
    // Init, starting the program.
    NewSession,
    BlockSignals,
    ForkProgram,
    // The program, up to `execve`.
    ResetSignals,
    SetRlimits,
    DropPrivileges,
    SetNoNewPrivs,
    ChangeDirectory,
    ApplyLandlock,
    CloseInheritedDescriptors,
    LoadSeccomp,
    Exec,
}

impl SetupStep {
    /// Every step, so that a code read from the pipe maps back to exactly one.
    pub const ALL: [SetupStep; 37] = [
        SetupStep::StartSandbox,
        SetupStep::WaitForParent,
        SetupStep::JoinCgroup,
        SetupStep::EnterBundleDirectory,
        SetupStep::EnterUserNamespace,
        SetupStep::SetParentDeathSignal,
        SetupStep::EnterCgroupNamespace,
        SetupStep::SetHostname,
        SetupStep::BringUpLoopback,
        SetupStep::MakeMountsPrivate,
        SetupStep::BindRootfs,
        SetupStep::MountInMemoryRoot,
        SetupStep::CreateRootLinks,
        SetupStep::MountOverlayScratch,
        SetupStep::MountOverlayRoot,
        SetupStep::CreateMountPoint,
        SetupStep::AttachBindMount,
        SetupStep::BindMount,
        SetupStep::MountFilesystem,
        SetupStep::CreateDevLinks,
        SetupStep::MaskPath,
        SetupStep::ReadOnlyPath,
        SetupStep::PivotRoot,
        SetupStep::DetachOldRoot,
        SetupStep::RemountRootReadOnly,
        SetupStep::NewSession,
        SetupStep::BlockSignals,
        SetupStep::ForkProgram,
        SetupStep::ResetSignals,
        SetupStep::SetRlimits,
        SetupStep::DropPrivileges,
        SetupStep::SetNoNewPrivs,
        SetupStep::ChangeDirectory,
        SetupStep::ApplyLandlock,
        SetupStep::CloseInheritedDescriptors,
        SetupStep::LoadSeccomp,
        SetupStep::Exec,
    ];

    /// The code the step crosses the error pipe as.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The step a code names; `None` for a code no step has.
    pub fn from_code(code: u8) -> Option<SetupStep> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The step's name in messages and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            SetupStep::StartSandbox => "start sandbox",
            SetupStep::WaitForParent => "wait for parent",
            SetupStep::JoinCgroup => "join cgroup",
            SetupStep::EnterBundleDirectory => "enter bundle directory",
            SetupStep::EnterUserNamespace => "enter user namespace",
            SetupStep::SetParentDeathSignal => "set parent-death signal",
            SetupStep::EnterCgroupNamespace => "enter cgroup namespace",
            SetupStep::SetHostname => "set hostname",
            SetupStep::BringUpLoopback => "bring up loopback",
            SetupStep::MakeMountsPrivate => "make mounts private",
            SetupStep::BindRootfs => "bind rootfs",
            SetupStep::MountInMemoryRoot => "mount in-memory root",
            SetupStep::CreateRootLinks => "create root links",
            SetupStep::MountOverlayScratch => "mount overlay scratch",
            SetupStep::MountOverlayRoot => "mount overlay root",
            SetupStep::CreateMountPoint => "create mount point",
            SetupStep::AttachBindMount => "attach bind mount",
            SetupStep::BindMount => "bind mount",
            SetupStep::MountFilesystem => "mount filesystem",
            SetupStep::CreateDevLinks => "create /dev links",
            SetupStep::MaskPath => "mask path",
            SetupStep::ReadOnlyPath => "read-only path",
            SetupStep::PivotRoot => "pivot_root",
            SetupStep::DetachOldRoot => "detach old root",
            SetupStep::RemountRootReadOnly => "remount root read-only",
            SetupStep::NewSession => "new session",
            SetupStep::BlockSignals => "block signals",
            SetupStep::ForkProgram => "fork program",
            SetupStep::ResetSignals => "reset signals",
            SetupStep::SetRlimits => "set rlimits",
            SetupStep::DropPrivileges => "drop privileges",
            SetupStep::SetNoNewPrivs => "set no_new_privs",
            SetupStep::ChangeDirectory => "change directory",
            SetupStep::ApplyLandlock => "apply landlock",
            SetupStep::CloseInheritedDescriptors => "close inherited descriptors",
            SetupStep::LoadSeccomp => "load seccomp",
            SetupStep::Exec => "exec",
        }
    }
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error on the child side, named by the setup step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildError {
    pub step: SetupStep,
    pub detail: String,
}

impl ChildError {
    pub fn new(step: SetupStep, detail: impl Into<String>) -> Self {
        Self {
            step,
            detail: detail.into(),
        }
    }

    /// Reads a report written by [`ChildError::code`] and the detail: `None` when the
    /// pipe closed empty (the program is running).
    pub fn decode(report: &[u8]) -> Option<Result<ChildError, UnknownStep>> {
        let (&code, detail) = report.split_first()?;
        Some(match SetupStep::from_code(code) {
            Some(step) => Ok(ChildError::new(step, String::from_utf8_lossy(detail))),
            None => Err(UnknownStep {
                code,
                detail: String::from_utf8_lossy(detail).into_owned(),
            }),
        })
    }

    /// The first byte of the report: the step's code.
    pub fn code(&self) -> [u8; 1] {
        [self.step.code()]
    }
}

/// A report whose first byte names no step: the setup failed, but where is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox setup failed at an unknown step (code {code}): {detail}")]
pub struct UnknownStep {
    pub code: u8,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_round_trips_through_its_code() {
        for step in SetupStep::ALL {
            assert_eq!(SetupStep::from_code(step.code()), Some(step), "{step}");
        }
        assert_eq!(SetupStep::from_code(0), None);
        let codes: std::collections::HashSet<u8> =
            SetupStep::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes.len(), SetupStep::ALL.len());
        // Codes run from 1 to the last step's, so a step left out of ALL would show here.
        assert_eq!(SetupStep::Exec.code() as usize, SetupStep::ALL.len());
    }

    #[test]
    fn a_report_decodes_to_the_step_and_detail_written() {
        let e = ChildError::new(SetupStep::AttachBindMount, "/ws: EPERM");
        let mut report = e.code().to_vec();
        report.extend_from_slice(e.detail.as_bytes());
        assert_eq!(ChildError::decode(&report), Some(Ok(e)));
        assert_eq!(ChildError::decode(b""), None);
    }

    #[test]
    fn a_report_with_an_unknown_code_is_an_error_not_a_guess() {
        assert_eq!(
            ChildError::decode(b"\xffboom"),
            Some(Err(UnknownStep {
                code: 0xff,
                detail: "boom".into()
            }))
        );
    }

    #[test]
    fn step_names_are_the_ones_messages_and_audit_use() {
        assert_eq!(SetupStep::AttachBindMount.to_string(), "attach bind mount");
        assert_eq!(SetupStep::SetNoNewPrivs.to_string(), "set no_new_privs");
        assert_eq!(SetupStep::CreateDevLinks.to_string(), "create /dev links");
    }
}
