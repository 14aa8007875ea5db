//! A binary search over syscall numbers in front of a seccompiler program.
//!
//! seccompiler tests a filter's syscalls one after another. So a call's verdict takes as
//! many comparisons as there are rules before it, and loading the filter costs the kernel
//! time in proportion to its length: it converts and JIT-compiles every instruction, and
//! then runs the filter once for each syscall number, to find the calls it always allows.
//!
//! The calls a filter matches whatever their arguments are most of a profile. They are
//! taken out of the seccompiler program and found instead by a binary search over the
//! ranges their numbers form. A call the search does not find (another architecture, a
//! number outside every range, x32's numbers with bit 30 set) falls through, unchanged,
//! into the seccompiler program of the remaining rules. That program checks the
//! architecture itself, so every call keeps the verdict it had.
//!
//! The search uses only instructions the kernel's constant-verdict emulation follows
//! (loads of the number and architecture, `JA`, `JGE`/`JGT`/`JEQ` with constants, `RET`),
//! so the calls it allows are still recognised as always allowed.

use seccompiler::{sock_filter, BpfProgram};

const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// A jump to the end of the search, patched once its length is known.
const FALL_THROUGH: u32 = u32::MAX;

/// The `AUDIT_ARCH_*` value of the architecture this runner is built for.
pub const AUDIT_ARCH: u32 = if cfg!(target_arch = "aarch64") {
    0xC000_00B7
} else {
    0xC000_003E
};

/// `numbers`, ascending, as inclusive ranges of consecutive numbers.
pub fn ranges(numbers: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = numbers.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for n in sorted {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(n) => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// A program that returns `ret` for a call of [`AUDIT_ARCH`] whose number lies in one of
/// `ranges` (ascending, disjoint), and runs `rest` for every other call. It may be longer
/// than [`MAX_INSTRUCTIONS`]: the caller checks.
pub fn prepend(ranges: &[(u32, u32)], ret: u32, rest: BpfProgram) -> BpfProgram {
    if ranges.is_empty() {
        return rest;
    }
    let mut out = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(JA, FALL_THROUGH),
        stmt(LD_W_ABS, DATA_NR),
    ];
    search(ranges, ret, &mut out);
    let end = out.len();
    for (i, insn) in out.iter_mut().enumerate() {
        if insn.code == JA && insn.k == FALL_THROUGH {
            // The search alone is at most 6 instructions a range, and a range holds at
            // least one 32-bit number: far below `u32::MAX`.
            insn.k = u32::try_from(end - (i + 1)).expect("a search of u32 ranges");
        }
    }
    out.extend(rest);
    out
}

/// Emits the search over `ranges` with the number in the accumulator: `ret` when it lies
/// in one, a jump to the end otherwise. Conditional jumps skip at most one instruction,
/// so no 8-bit offset can overflow; the long ones are `JA`s.
fn search(ranges: &[(u32, u32)], ret: u32, out: &mut Vec<sock_filter>) {
    match ranges {
        [] => out.push(stmt(JA, FALL_THROUGH)),
        [(lo, hi)] if lo == hi => {
            out.push(jump(JEQ_K, *lo, 1, 0));
            out.push(stmt(JA, FALL_THROUGH));
            out.push(stmt(RET_K, ret));
        }
        [(lo, hi)] => {
            out.push(jump(JGE_K, *lo, 1, 0));
            out.push(stmt(JA, FALL_THROUGH));
            out.push(jump(JGT_K, *hi, 0, 1));
            out.push(stmt(JA, FALL_THROUGH));
            out.push(stmt(RET_K, ret));
        }
        _ => {
            let (below, from) = ranges.split_at(ranges.len() / 2);
            // At or above the middle range's start: the upper half, right after the jump
            // to the lower one.
            out.push(jump(JGE_K, from[0].0, 1, 0));
            let to_below = out.len();
            out.push(stmt(JA, 0));
            search(from, ret, out);
            out[to_below].k =
                u32::try_from(out.len() - (to_below + 1)).expect("a search of u32 ranges");
            search(below, ret, out);
        }
    }
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_ascending_ranges_of_consecutive_numbers() {
        assert_eq!(
            ranges([5, 1, 2, 3, 9, 10, 7, 2]),
            [(1, 3), (5, 5), (7, 7), (9, 10)]
        );
        assert_eq!(
            ranges([u32::MAX, u32::MAX - 1, 0]),
            [(0, 0), (u32::MAX - 1, u32::MAX)]
        );
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn no_ranges_leave_the_program_as_it_was() {
        let rest = vec![stmt(RET_K, 7)];
        assert_eq!(prepend(&[], 1, rest.clone()).len(), 1);
    }
}
