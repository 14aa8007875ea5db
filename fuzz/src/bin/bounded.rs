//! Runs one fuzz target on stable Rust for a fixed time: `bounded TARGET SECONDS [SEED]`.
//!
//! Without libFuzzer's coverage feedback, inputs come from the target's seeds, changed by
//! a seeded xorshift generator: bits flipped, bytes set to edge values, runs cut, copied or
//! put in, pieces of other seeds spliced in, and tokens of the input's grammar inserted.
//! Some inputs the target accepted are kept as further seeds, so that later changes start
//! from valid input more often. A panic prints the seed, the input and where it was
//! saved, and the process exits 1, so CI fails.

use covenant_fuzz::{seeds, TARGETS};
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// xorshift64*: small, seeded, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Pieces of the inputs' grammars (TOML, scopes, base64url), inserted whole.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"=",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b".",
    b":",
    b"..",
    b"/",
    b"\0",
    b"\\u0000",
    b"[limits]\n",
    b"[rlimits]\n",
    b"[env]\n",
    b"version = 1\n",
    b"command = [",
    b"memory = \"",
    b"cpus = ",
    b"timeout = \"",
    b"pids = ",
    b"nofile = { soft = ",
    b"workspace = \"",
    b"rootfs = \"",
    b"dir:",
    b"image:",
    b"oci:",
    b"user = \"",
    b"net = \"",
    b"connect = [",
    b"syscalls = [",
    b"keep_changes = \"",
    b"accept_degradations = [",
    b"hostname = \"",
    b"runner = \"",
    b"GiB",
    b"TiB",
    b"ms",
    b"h",
    b"1e308",
    b"-1",
    b"18446744073709551615",
    b"4294967296",
    b"65536",
    b"0.0001",
    b"cov1.",
    b"fs.write:/",
    b"res.mem:",
    b"res.cpu:",
    b"net.connect:tcp:",
    b"mem.write:",
    b"runner:oci:",
    b"rootfs:image:",
    b"degrade:",
    b"agent:",
    b"key:",
    b"AAAA",
    b"____",
    b"----",
];

/// Values at the edges of the integer fields a decoder reads.
const EDGES: &[u8] = &[0, 1, 2, 0x7f, 0x80, 0xfe, 0xff];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = EDGES[rng.below(EDGES.len())];
            }
            2 if len > 0 => {
                let at = rng.below(len);
                input[at] = rng.next() as u8;
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = from + rng.below((len - from).min(32) + 1);
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let piece: Vec<u8> =
                    input[from..from + rng.below((len - from).min(32) + 1)].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, piece);
            }
            5 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            6 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let piece = &other[from..from + rng.below((other.len() - from).min(64) + 1)];
                    let at = rng.below(len + 1);
                    let end = (at + rng.below(piece.len() + 1)).min(len);
                    input.splice(at..end, piece.iter().copied());
                }
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
}

/// The input as text a reader can paste back: printable ASCII kept, the rest escaped.
fn escaped(input: &[u8]) -> String {
    input
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        let names: Vec<_> = TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: bounded TARGET SECONDS [SEED]; targets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let (Some(name), Some(seconds)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok()))
    else {
        usage()
    };
    let Some(&(name, target)) = TARGETS.iter().find(|(n, _)| n == name) else {
        usage()
    };
    let seed: u64 = match args.get(3) {
        Some(s) => s.parse().unwrap_or_else(|_| usage()),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    } | 1;
    let mut rng = Rng(seed);
    let mut pool = seeds(name);
    assert!(!pool.is_empty(), "{name} has no seeds");
    // Every seed must pass, and be accepted, as it is.
    for input in &pool {
        assert!(
            target(input),
            "{name}: a seed is refused: \"{}\"",
            escaped(input)
        );
    }
    let budget = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut runs: u64 = 0;
    let mut input = Vec::new();
    while start.elapsed() < budget {
        for _ in 0..64 {
            input.clear();
            input.extend_from_slice(&pool[rng.below(pool.len())]);
            mutate(&mut rng, &mut input, &pool);
            let result = panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
            runs += 1;
            let Ok(accepted) = result else {
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("artifacts")
                    .join(name);
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("crash-seed{seed}-run{runs}"));
                let saved = std::fs::File::create(&file).and_then(|mut f| f.write_all(&input));
                eprintln!(
                    "{name}: panic on run {runs} (seed {seed}); input ({} bytes): \"{}\"",
                    input.len(),
                    escaped(&input)
                );
                match saved {
                    Ok(()) => eprintln!("saved to {}", file.display()),
                    Err(e) => eprintln!("could not save it to {}: {e}", file.display()),
                }
                std::process::exit(1);
            };
            if accepted && pool.len() < 4096 && input.len() < 8192 && rng.below(16) == 0 {
                pool.push(input.clone());
            }
        }
    }
    println!(
        "{name}: {runs} inputs in {:.0} s without a panic (seed {seed})",
        start.elapsed().as_secs_f64()
    );
}
