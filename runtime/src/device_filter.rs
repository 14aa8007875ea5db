//! Device rules on cgroup v2. There is no `devices.allow` there: a cgroup's device access
//! is decided by an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to it.
//! This module compiles the container's rules into such a program (a few instructions per
//! rule, no maps, no helpers), loads it and attaches it to the container's cgroup, where
//! it stays until the cgroup is removed.
//!
//! The rules keep cgroup v1's meaning, as the runtime spec's list is written for it:
//! everything is denied first, and for each kind of access (mknod, read, write) the last
//! rule that matches the device and covers that access decides it. An access no rule
//! matches is denied.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One rule of the list: `allow`, for devices of `typ` (`None`: both kinds), `major` and
/// `minor` (`None`: any), and the `access` bits it covers ([`MKNOD`], [`READ`], [`WRITE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: Option<DevType>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    Block,
    Char,
}

/// The access bits of `struct bpf_cgroup_dev_ctx` (`BPF_DEVCG_ACC_*`).
pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const ALL_ACCESS: u32 = MKNOD | READ | WRITE;

/// The most rules a container may list. Each rule is at most five instructions of a
/// section, and a section's jumps are 16-bit offsets: this keeps every offset in range.
pub const MAX_RULES: usize = 4096;

/// The access bits of an OCI `access` string (`rwm`, any subset; empty is all).
pub fn access_bits(access: &str) -> Option<u32> {
    if access.is_empty() {
        return Some(ALL_ACCESS);
    }
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Some(bits | READ),
        'w' => Some(bits | WRITE),
        'm' => Some(bits | MKNOD),
        _ => None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    #[error("load the device program: {errno}{}", if log.is_empty() { String::new() } else { format!(" ({log})") })]
    Load {
        errno: nix::errno::Errno,
        log: String,
    },
    #[error("open cgroup {path}: {errno}")]
    Cgroup {
        path: String,
        errno: nix::errno::Errno,
    },
    #[error("attach the device program to {path}: {errno}")]
    Attach {
        path: String,
        errno: nix::errno::Errno,
    },
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// `src << 4 | dst`.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// Opcodes: class | operation | source.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JA: u8 = 0x05; // BPF_JMP | BPF_JA
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 is the context on entry; r0 the answer.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

/// The program for `rules`: a prologue that loads the request (type, access, major,
/// minor); then, for each access bit the request asks for, the rules that cover that bit
/// from the last to the first, where the first to match decides it; the request is
/// allowed only if every bit it asks for is.
///
/// Deciding bit by bit keeps v1's meaning for partial rules: after `allow c 1:3 rwm` and
/// `deny c 1:3 w`, reading `/dev/null` is allowed and opening it read-write is not.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, where
        // access_type is access << 16 | type.
        insn(LDX_MEM_W, TYPE, R1, 0, 0),
        insn(ALU32_AND_K, TYPE, 0, 0, 0xffff),
        insn(LDX_MEM_W, ACCESS, R1, 0, 0),
        insn(ALU32_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, R1, 4, 0),
        insn(LDX_MEM_W, MINOR, R1, 8, 0),
    ];
    for bit in [MKNOD, READ, WRITE] {
        p.extend(section(rules, bit));
    }
    p.extend([insn(ALU32_MOV_K, R0, 0, 0, 1), insn(JMP_EXIT, 0, 0, 0, 0)]);
    p
}

/// The instructions that decide one access `bit`: skipped when the request does not ask
/// for it; a deny exits with 0; an allow jumps past the section.
fn section(rules: &[Rule], bit: u32) -> Vec<Insn> {
    // Jumps to the section's end, patched once its length is known.
    let mut to_end = Vec::new();
    let mut s = vec![
        insn(ALU32_MOV_X, R0, ACCESS, 0, 0),
        insn(ALU32_AND_K, R0, 0, 0, bit as i32),
    ];
    to_end.push(s.len());
    s.push(insn(JMP_JEQ_K, R0, 0, 0, 0));
    for rule in rules.iter().rev().filter(|r| r.access & bit != 0) {
        let mut tests = Vec::new();
        if let Some(t) = rule.typ {
            let code = match t {
                DevType::Block => 1, // BPF_DEVCG_DEV_BLOCK
                DevType::Char => 2,  // BPF_DEVCG_DEV_CHAR
            };
            tests.push(insn(JMP_JNE_K, TYPE, 0, 0, code));
        }
        if let Some(m) = rule.major {
            tests.push(insn(JMP_JNE_K, MAJOR, 0, 0, m as i32));
        }
        if let Some(m) = rule.minor {
            tests.push(insn(JMP_JNE_K, MINOR, 0, 0, m as i32));
        }
        let verdict: &[Insn] = if rule.allow {
            &[insn(JMP_JA, 0, 0, 0, 0)]
        } else {
            &[insn(ALU32_MOV_K, R0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]
        };
        // A rule with no test matches every device: the rules before it (and the final
        // deny) are never reached, and the verifier refuses unreachable code.
        let unconditional = tests.is_empty();
        // A test that fails jumps to the next rule, past this one's verdict.
        let n = tests.len();
        for (k, mut t) in tests.into_iter().enumerate() {
            t.off = (n - k - 1 + verdict.len()) as i16;
            s.push(t);
        }
        if rule.allow {
            to_end.push(s.len());
        }
        s.extend_from_slice(verdict);
        if unconditional {
            return patch_ends(s, &to_end);
        }
    }
    // No rule covers the bit for this device: denied.
    s.extend([insn(ALU32_MOV_K, R0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]);
    patch_ends(s, &to_end)
}

/// Points the jumps at `to_end` past the last instruction of `s`.
fn patch_ends(mut s: Vec<Insn>, to_end: &[usize]) -> Vec<Insn> {
    let end = s.len();
    for &at in to_end {
        s[at].off = i16::try_from(end - at - 1)
            .expect("a section of at most MAX_RULES rules fits 16-bit jump offsets");
    }
    s
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, padded to a size every kernel accepts
/// (the rest must be zero).
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    pad: [u64; 8],
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    pad: [u32; 11],
}

fn load(insns: &[Insn]) -> Result<OwnedFd, DeviceFilterError> {
    let license = c"Apache-2.0";
    let try_load = |log: Option<&mut Vec<u8>>| -> Result<OwnedFd, nix::errno::Errno> {
        let mut attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..7].copy_from_slice(b"devices");
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: attr is a zero-padded bpf_attr whose pointers (instructions, license,
        // log buffer) stay valid for the call; the kernel returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const LoadAttr,
                std::mem::size_of::<LoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    try_load(None).map_err(|errno| {
        // Again with the verifier's log, so the error says why.
        let mut buf = vec![0u8; 64 * 1024];
        let _ = try_load(Some(&mut buf));
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let log = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        DeviceFilterError::Load { errno, log }
    })
}

/// Loads the program for `rules` and attaches it to the cgroup v2 directory `dir`.
pub fn attach(dir: &Path, rules: &[Rule]) -> Result<(), DeviceFilterError> {
    let prog = load(&program(rules))?;
    let path = dir.display().to_string();
    let cgroup = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| DeviceFilterError::Cgroup {
        path: path.clone(),
        errno,
    })?;
    // SAFETY: open returned a fresh descriptor.
    let cgroup = unsafe { OwnedFd::from_raw_fd(cgroup) };
    let attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: attr is a zero-padded bpf_attr naming two descriptors this process owns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const AttachAttr,
            std::mem::size_of::<AttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(DeviceFilterError::Attach {
            path,
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` the way the kernel would, on one request: a tiny interpreter for the
    /// instructions this module emits, so the compiled rules are checked without a kernel.
    fn run(p: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u32 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                ALU32_MOV_K => r[dst] = i.imm as u32 as u64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                JMP_JNE_K => {
                    if r[dst] != i.imm as u32 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_JEQ_K => {
                    if r[dst] == i.imm as u32 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_JA => pc += i.off as usize,
                JMP_EXIT => return r[0] as u32,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: Option<DevType>,
        major: Option<u32>,
        minor: Option<u32>,
        access: &str,
    ) -> Rule {
        Rule {
            allow,
            typ,
            major,
            minor,
            access: access_bits(access).unwrap(),
        }
    }

    const C: u32 = 2;
    const B: u32 = 1;

    #[test]
    fn the_last_matching_rule_decides_and_nothing_matched_is_denied() {
        use DevType::*;
        let p = program(&[
            rule(false, None, None, None, "rwm"),
            rule(true, Some(Char), Some(1), Some(3), "rwm"),
            rule(true, Some(Char), Some(136), None, "rw"),
            rule(true, Some(Block), Some(8), Some(0), "r"),
            rule(false, Some(Char), Some(1), Some(3), "w"),
        ]);
        // /dev/null: read yes, write no (the last rule), mknod yes.
        assert_eq!(run(&p, C, READ, 1, 3), 1);
        assert_eq!(run(&p, C, WRITE, 1, 3), 0);
        assert_eq!(run(&p, C, READ | WRITE, 1, 3), 0);
        assert_eq!(run(&p, C, MKNOD, 1, 3), 1);
        // Any pty: read and write, not mknod.
        assert_eq!(run(&p, C, READ | WRITE, 136, 7), 1);
        assert_eq!(run(&p, C, MKNOD, 136, 7), 0);
        // The block device: read only; a char device of the same numbers: nothing.
        assert_eq!(run(&p, B, READ, 8, 0), 1);
        assert_eq!(run(&p, B, WRITE, 8, 0), 0);
        assert_eq!(run(&p, C, READ, 8, 0), 0);
        // Anything else: denied.
        assert_eq!(run(&p, C, READ, 1, 11), 0);
        assert_eq!(run(&p, B, READ, 259, 0), 0);
    }

    #[test]
    fn an_allow_all_rule_allows_everything_after_a_deny_all() {
        let p = program(&[
            rule(false, None, None, None, "rwm"),
            rule(true, None, None, None, "rwm"),
        ]);
        assert_eq!(run(&p, C, READ | WRITE | MKNOD, 1, 11), 1);
        assert_eq!(run(&p, B, READ, 8, 0), 1);
        assert_eq!(run(&program(&[]), C, READ, 1, 3), 0, "no rules: nothing");
    }

    /// Every instruction is reachable (the kernel's verifier refuses a program with one
    /// that is not) and every jump lands inside the program.
    fn assert_verifiable(p: &[Insn]) {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            assert!(pc < p.len(), "a jump leaves the program");
            if std::mem::replace(&mut seen[pc], true) {
                continue;
            }
            let i = p[pc];
            match i.code {
                JMP_EXIT => {}
                JMP_JA => todo.push(pc + 1 + i.off as usize),
                JMP_JNE_K | JMP_JEQ_K => todo.extend([pc + 1, pc + 1 + i.off as usize]),
                _ => todo.push(pc + 1),
            }
        }
        let unreachable: Vec<usize> = (0..p.len()).filter(|&i| !seen[i]).collect();
        assert!(unreachable.is_empty(), "unreachable: {unreachable:?}");
    }

    #[test]
    fn every_program_is_verifiable() {
        use DevType::*;
        let deny_all = rule(false, None, None, None, "rwm");
        let allow_all = rule(true, None, None, None, "rwm");
        let null = rule(true, Some(Char), Some(1), Some(3), "rwm");
        let write_only = rule(false, Some(Char), Some(1), Some(3), "w");
        for rules in [
            vec![],
            vec![deny_all],
            vec![deny_all, allow_all],
            vec![deny_all, allow_all, null, deny_all],
            vec![deny_all, null, write_only],
            vec![null],
        ] {
            assert_verifiable(&program(&rules));
        }
    }

    /// The longest list a config may give keeps every jump in range: the program is whole
    /// and the first rule still decides what no later rule matches.
    #[test]
    fn the_longest_list_keeps_its_jumps_in_range() {
        use DevType::*;
        let mut rules = vec![
            rule(false, None, None, None, "rwm"),
            rule(true, Some(Char), Some(1), Some(3), "rwm"),
        ];
        rules.extend(
            (0..MAX_RULES as u32 - 2).map(|n| rule(false, Some(Block), Some(7), Some(n), "rwm")),
        );
        let p = program(&rules);
        assert_verifiable(&p);
        assert_eq!(run(&p, C, READ | WRITE, 1, 3), 1);
        assert_eq!(run(&p, B, READ, 7, 5), 0);
        assert_eq!(run(&p, B, READ, 8, 0), 0);
    }

    #[test]
    fn access_strings() {
        assert_eq!(access_bits("rwm"), Some(7));
        assert_eq!(access_bits(""), Some(7));
        assert_eq!(access_bits("r"), Some(READ));
        assert_eq!(access_bits("mw"), Some(MKNOD | WRITE));
        assert_eq!(access_bits("rx"), None);
    }
}
