//! The fuzz targets, as plain functions: `cargo fuzz` drives them through libFuzzer
//! (`fuzz_targets/`, nightly), and `bounded` drives them on stable for a fixed time from
//! seed inputs and random mutations of them (what CI runs). A target panics on any
//! broken law; returning is passing.
//!
//! Never run `bounded` in place of `cargo fuzz` when coverage-guided fuzzing is wanted:
//! without coverage feedback it finds only what lies near its seeds.

use covenant_policy::scope::Scope;
use covenant_policy::token::{
    canonical_scopes, Capability, ParentRef, SignedToken, Subject, TokenBody,
};
use covenant_policy::{compile_request, Manifest};

/// Manifest parsing and request compilation refuse bad input with an error, never panic.
/// Returns whether the input parsed as a manifest.
pub fn manifest_parse(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(mut manifest) = Manifest::parse(text) else {
        return false;
    };
    manifest.base_dir = std::path::PathBuf::from("/nonexistent-fuzz-base");
    let _ = compile_request(&manifest, "job-fuzz");
    true
}

/// Token bodies and printed capabilities are refused with an error, never a panic; a
/// body that decodes encodes back to the same bytes, and a capability that parses prints
/// back to text that parses to it again. Returns whether the input decoded as either.
pub fn token_decode(data: &[u8]) -> bool {
    let mut decoded = false;
    if let Ok(body) = TokenBody::decode(data) {
        assert_eq!(body.encode(), data, "a decoded body is not canonical");
        decoded = true;
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cap) = Capability::parse(text) {
            assert_eq!(Capability::parse(&cap.print()).unwrap(), cap);
            decoded = true;
        }
    }
    decoded
}

/// A fuzz target: panics on a broken law, and says whether the input was accepted.
pub type Target = fn(&[u8]) -> bool;

/// The targets, by the names of their `fuzz_targets/` files.
pub const TARGETS: [(&str, Target); 2] = [
    ("manifest_parse", manifest_parse),
    ("token_decode", token_decode),
];

/// Valid inputs to start mutating from, so that mutations reach past the first check.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "manifest_parse" => MANIFEST_SEEDS
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        "token_decode" => token_seeds(),
        _ => Vec::new(),
    }
}

const MANIFEST_SEEDS: [&str; 4] = [
    "version = 1\ncommand = [\"true\"]\n",
    include_str!("../../examples/hello/covenant.toml"),
    "version = 1\ncommand = [\"sh\", \"-c\", \"x\"]\nworkspace = \"w\"\nread = [\"/srv/a\"]\nwrite = [\"/srv/b\"]\nexec = [\"/opt/t\"]\nnet = \"loopback\"\nconnect = [443, 80]\nsyscalls = [\"ptrace\"]\ncwd = \"/workspace/src\"\nuser = \"1000:1000\"\nhostname = \"box\"\nrunner = \"oci:/usr/sbin/runc\"\naccept_degradations = [\"landlock-net\", \"idmap\"]\n[env]\nA = \"b\"\n[limits]\nmemory = \"1GiB\"\npids = 100\ncpus = \"0.5\"\ntimeout = \"10m\"\n[rlimits]\nnofile = { soft = 100, hard = 200 }\nstack = 8388608\n",
    "version = 1\ncommand = [\"true\"]\nrootfs = \"image:alpine:3\"\nkeep_changes = \"/srv/keep\"\n",
];

/// A one-link and a three-link capability, printed, and the body of each link.
fn token_seeds() -> Vec<Vec<u8>> {
    let key = |seed: u8| ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let scopes = |list: &[&str]| {
        canonical_scopes(
            &list
                .iter()
                .map(|s| Scope::parse(s).expect("a seed scope parses"))
                .collect::<Vec<_>>(),
        )
    };
    let link = |issuer: u8, subject: Subject, parent: Option<&SignedToken>, list: &[&str]| {
        let k = key(issuer);
        let body = TokenBody {
            id: [issuer; 16],
            issuer: k.verifying_key().to_bytes(),
            subject,
            not_before: 0,
            expires: 1_000_000,
            parent: parent.map(|p| ParentRef {
                id: p.body.id,
                digest: p.digest(),
            }),
            scopes: scopes(list),
            nonce: [issuer ^ 0x5a; 16],
        };
        SignedToken::sign(body, &k).expect("a seed token signs")
    };
    let holder = |seed: u8| Subject::Key(key(seed).verifying_key().to_bytes());
    let single = link(
        1,
        Subject::Name("ci".into()),
        None,
        &["fs.read:/w", "res.mem:1GiB"],
    );
    let root = link(
        1,
        holder(2),
        None,
        &[
            "fs.write:/w",
            "net:host",
            "res.mem:1GiB",
            "res.time:1h",
            "agent:spawn",
        ],
    );
    let middle = link(
        2,
        holder(3),
        Some(&root),
        &[
            "fs.write:/w/src",
            "net.connect:tcp:443",
            "res.mem:512MiB",
            "res.time:1h",
        ],
    );
    let leaf = link(
        3,
        Subject::Name("agent".into()),
        Some(&middle),
        &["fs.read:/w/src/a", "res.mem:256MiB", "res.time:10m"],
    );
    let mut out = vec![
        Capability {
            chain: vec![single.clone()],
        }
        .print()
        .into_bytes(),
        Capability {
            chain: vec![root.clone(), middle.clone(), leaf.clone()],
        }
        .print()
        .into_bytes(),
    ];
    out.extend(
        [single, root, middle, leaf]
            .into_iter()
            .map(|t| t.body_bytes),
    );
    out
}
