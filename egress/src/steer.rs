//! Steering: every TCP connection the sandbox opens to an address outside 127/8, on any
//! port, is handed to the gateway's one listener by a BPF `sk_lookup` program attached to
//! the sandbox's network namespace (Linux 5.9). The listener is bound to an address and
//! port of its own, so it takes no port from the sandbox: the sandbox's own servers, on any
//! port, and its own loopback stay its own.
//!
//! The program is 26 instructions, assembled here (one fixed program does not call for a
//! BPF toolchain or loader library):
//!
//! ```text
//!     if ctx.family != AF_INET: pass
//!     if first octet of ctx.local_ip4 == 127: pass     (the sandbox's own loopback)
//!     if ctx.protocol != TCP: pass
//!     sk = sockmap[0]; if !sk: pass
//!     bpf_sk_assign(ctx, sk, 0); bpf_sk_release(sk)
//!     pass: return SK_PASS
//! ```
//!
//! With nothing assigned, the kernel's own lookup goes on. The attachment lives as long as
//! its link descriptor, which the gateway holds: when the gateway ends, connections find no
//! listener and are refused by the namespace's kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// An attached steering program; dropping it detaches the program.
pub struct Steering {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes.
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const LDX_W: u8 = 0x61;
const STX_W: u8 = 0x63;
const AND64_K: u8 = 0x57;
const ADD64_K: u8 = 0x07;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JA: u8 = 0x05;
const LD_DW: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

// Helpers.
const MAP_LOOKUP_ELEM: i32 = 1;
const SK_RELEASE: i32 = 86;
const SK_ASSIGN: i32 = 124;

// `struct bpf_sk_lookup` offsets.
const FAMILY: i16 = 8;
const PROTOCOL: i16 = 12;
const LOCAL_IP4: i16 = 40;

/// `local_ip4` is in network order, loaded as a native `u32`: the mask that keeps its first
/// octet, and that octet at 127 under the mask.
const FIRST_OCTET: (i32, i32) = if cfg!(target_endian = "little") {
    (0xff, 127)
} else {
    (0xff00_0000_u32 as i32, 0x7f00_0000)
};

/// The program, with `map` as its sockmap.
fn program(map: RawFd) -> [Insn; 26] {
    [
        /* 0 */ insn(MOV64_X, 6, 1, 0, 0),
        /* 1 */ insn(LDX_W, 2, 6, FAMILY, 0),
        /* 2 */ insn(JNE_K, 2, 0, 21, libc::AF_INET),
        /* 3 */ insn(LDX_W, 2, 6, LOCAL_IP4, 0),
        /* 4 */ insn(AND64_K, 2, 0, 0, FIRST_OCTET.0),
        /* 5 */ insn(JEQ_K, 2, 0, 18, FIRST_OCTET.1),
        /* 6 */ insn(LDX_W, 2, 6, PROTOCOL, 0),
        /* 7 */ insn(MOV64_K, 3, 0, 0, 0), // the key
        /* 8 */ insn(JEQ_K, 2, 0, 1, libc::IPPROTO_TCP),
        /* 9 */ insn(JA, 0, 0, 14, 0),
        /* 10 */ insn(STX_W, 10, 3, -4, 0),
        /* 11 */ insn(LD_DW, 1, BPF_PSEUDO_MAP_FD, 0, map),
        /* 12 */ insn(0, 0, 0, 0, 0),
        /* 13 */ insn(MOV64_X, 2, 10, 0, 0),
        /* 14 */ insn(ADD64_K, 2, 0, 0, -4),
        /* 15 */ insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        /* 16 */ insn(JEQ_K, 0, 0, 7, 0),
        /* 17 */ insn(MOV64_X, 7, 0, 0, 0),
        /* 18 */ insn(MOV64_X, 1, 6, 0, 0),
        /* 19 */ insn(MOV64_X, 2, 7, 0, 0),
        /* 20 */ insn(MOV64_K, 3, 0, 0, 0),
        /* 21 */ insn(CALL, 0, 0, 0, SK_ASSIGN),
        /* 22 */ insn(MOV64_X, 1, 7, 0, 0),
        /* 23 */ insn(CALL, 0, 0, 0, SK_RELEASE),
        /* 24 */ insn(MOV64_K, 0, 0, 0, 1), // SK_PASS
        /* 25 */ insn(EXIT, 0, 0, 0, 0),
    ]
}

fn bpf(what: &'static str, cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: the bpf syscall reads (and may write) the attribute block of the size given,
    // which lives across the call; pointers inside it point at live buffers.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn put(attr: &mut [u8], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

fn owned(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf syscall returned a new descriptor, owned here.
    unsafe { OwnedFd::from_raw_fd(rc as RawFd) }
}

/// Attaches to the network namespace `netns` a program that hands every TCP connection
/// to an address outside 127/8 to `listener` (a listening TCP socket of that namespace).
/// Needs root (`CAP_BPF` and `CAP_NET_ADMIN`) and a kernel with `sk_lookup`.
pub fn steer_tcp(listener: &impl AsRawFd, netns: &impl AsRawFd) -> io::Result<Steering> {
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_MAP_TYPE_SOCKMAP.to_ne_bytes());
    put(&mut attr, 4, &4u32.to_ne_bytes()); // key size
    put(&mut attr, 8, &8u32.to_ne_bytes()); // value size: a descriptor, as u64
    put(&mut attr, 12, &1u32.to_ne_bytes()); // entries
    let map = owned(bpf("create the sockmap", BPF_MAP_CREATE, &mut attr)?);

    let key = 0u32;
    let value = listener.as_raw_fd() as u64;
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(map.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 8, &(&key as *const u32 as u64).to_ne_bytes());
    put(&mut attr, 16, &(&value as *const u64 as u64).to_ne_bytes());
    bpf(
        "put the listener in the sockmap",
        BPF_MAP_UPDATE_ELEM,
        &mut attr,
    )?;

    let insns = program(map.as_raw_fd());
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_SK_LOOKUP.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes()); // log level
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, &BPF_SK_LOOKUP.to_ne_bytes()); // expected attach type
    let prog = match bpf("load the sk_lookup program", BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => owned(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let said = String::from_utf8_lossy(&log[..end]);
            let last = said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(io::Error::new(e.kind(), format!("{e} ({last})")));
        }
    };

    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &(netns.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 8, &BPF_SK_LOOKUP.to_ne_bytes());
    let link = owned(bpf(
        "attach the sk_lookup program to the namespace",
        BPF_LINK_CREATE,
        &mut attr,
    )?);
    Ok(Steering {
        _map: map,
        _prog: prog,
        _link: link,
    })
}
