//! Property tests of the capability laws: printing and parsing are inverse, coverage is a
//! preorder, a chain of narrowings never widens whatever its order, and a valid chain
//! changed anywhere in its bytes or its links is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use covenant_policy::scope::{FsAccess, Resource, Scope};
use covenant_policy::token::{
    canonical_scopes, Capability, ParentRef, SignedToken, Subject, TokenBody, PRINTED_PREFIX,
};
use covenant_policy::verify::{verify_capability, widening, VerifyContext};
use covenant_policy::NetMode;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use std::collections::HashSet;
use std::path::PathBuf;

fn path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "src", "w", "x.y"]),
        0..4,
    )
    .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        (
            prop::sample::select(vec![FsAccess::Read, FsAccess::Exec, FsAccess::Write]),
            path()
        )
            .prop_map(|(a, p)| Scope::Fs(a, p)),
        prop::sample::select(vec![NetMode::None, NetMode::Loopback, NetMode::Host])
            .prop_map(Scope::Net),
        (1u16..).prop_map(Scope::NetConnectTcp),
        (1u64..1 << 40).prop_map(|v| Scope::Res(Resource::Mem, v)),
        (1u64..64_000).prop_map(|v| Scope::Res(Resource::Cpu, v)),
        (1u64..100_000).prop_map(|v| Scope::Res(Resource::Pids, v)),
        (1u64..10_000_000).prop_map(|v| Scope::Res(Resource::Time, v)),
        Just(Scope::Sys("ptrace".into())),
        (any::<bool>(), prop::sample::select(vec!["p", "q"])).prop_map(|(w, n)| Scope::Mem {
            write: w,
            namespace: n.into()
        }),
        prop::sample::select(vec!["audit", "spawn"]).prop_map(|r| Scope::Agent(r.into())),
    ]
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn link(
    issuer: &SigningKey,
    subject: Subject,
    parent: Option<&SignedToken>,
    scopes: &[Scope],
    id: u8,
) -> SignedToken {
    let body = TokenBody {
        id: [id; 16],
        issuer: issuer.verifying_key().to_bytes(),
        subject,
        not_before: 0,
        expires: 1_000,
        parent: parent.map(|p| ParentRef {
            id: p.body.id,
            digest: p.digest(),
        }),
        scopes: canonical_scopes(scopes),
        nonce: [id; 16],
    };
    SignedToken::sign(body, issuer).unwrap()
}

/// A chain to build: the root's scopes, then for each further link which of its parent's
/// scopes it keeps (resource ceilings are always kept, so every link narrows), and
/// whether the leaf is held by a name rather than a key.
#[derive(Debug, Clone)]
struct ChainSpec {
    root: Vec<Scope>,
    keeps: Vec<Vec<bool>>,
    named_leaf: bool,
}

fn chain_spec() -> impl Strategy<Value = ChainSpec> {
    (
        prop::collection::vec(scope(), 1..5),
        prop::collection::vec(prop::collection::vec(any::<bool>(), 5), 0..4),
        any::<bool>(),
    )
        .prop_map(|(root, keeps, named_leaf)| ChainSpec {
            root,
            keeps,
            named_leaf,
        })
}

/// The chain `spec` describes, signed by keys 1, 2, ... (key 1 the trusted root).
fn build_chain(spec: &ChainSpec) -> (Capability, [[u8; 32]; 1]) {
    let n = spec.keeps.len() + 1;
    let keys: Vec<SigningKey> = (1..=n as u8 + 1).map(key).collect();
    let mut scopes = canonical_scopes(&spec.root);
    let mut chain: Vec<SignedToken> = Vec::new();
    for i in 0..n {
        if i > 0 {
            let keep = &spec.keeps[i - 1];
            let kept: Vec<Scope> = scopes
                .iter()
                .enumerate()
                .filter(|(j, s)| matches!(s, Scope::Res(..)) || keep[j % keep.len()])
                .map(|(_, s)| s.clone())
                .collect();
            if !kept.is_empty() {
                scopes = kept;
            }
        }
        let subject = if i == n - 1 && spec.named_leaf {
            Subject::Name("agent".into())
        } else {
            Subject::Key(keys[i + 1].verifying_key().to_bytes())
        };
        let t = link(&keys[i], subject, chain.last(), &scopes, i as u8 + 1);
        chain.push(t);
    }
    (Capability { chain }, [keys[0].verifying_key().to_bytes()])
}

/// The bytes a printed capability carries, before base64.
fn raw_of(cap: &Capability) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(&cap.print()[PRINTED_PREFIX.len()..])
        .unwrap()
}

#[derive(Debug, Clone)]
enum Change {
    Flip { at: usize, mask: u8 },
    Truncate { to: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Swap { i: usize, j: usize },
    DropBeforeLeaf { i: usize },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, mask)| Change::Flip { at, mask }),
        1 => any::<usize>().prop_map(|to| Change::Truncate { to }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Change::Insert { at, bytes }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Change::Swap { i, j }),
        1 => any::<usize>().prop_map(|i| Change::DropBeforeLeaf { i }),
    ]
}

proptest! {
    #[test]
    fn scopes_print_and_parse_back(s in scope()) {
        prop_assert_eq!(Scope::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn coverage_is_reflexive_and_transitive(a in scope(), b in scope(), c in scope()) {
        prop_assert!(a.covers(&a));
        if a.covers(&b) && b.covers(&c) {
            prop_assert!(a.covers(&c), "{a} covers {b} covers {c}");
        }
    }

    /// Whatever scopes each link asks for, the chain verifies only when every link narrows
    /// its parent, and then whatever the leaf covers, the root covered too.
    #[test]
    fn a_verified_chain_never_widens(links in prop::collection::vec(prop::collection::vec(scope(), 1..5), 1..5), probe in scope()) {
        let keys: Vec<SigningKey> = (1..=links.len() as u8 + 1).map(key).collect();
        let mut chain: Vec<SignedToken> = Vec::new();
        for (i, scopes) in links.iter().enumerate() {
            let subject = Subject::Key(keys[i + 1].verifying_key().to_bytes());
            let t = link(&keys[i], subject, chain.last(), scopes, i as u8 + 1);
            chain.push(t);
        }
        let cap = Capability { chain };
        let roots = [keys[0].verifying_key().to_bytes()];
        let revoked = HashSet::new();
        let result = verify_capability(&cap, VerifyContext { now: 10, trusted_roots: &roots, revoked: &revoked });
        let narrows = cap.chain.windows(2).all(|w| widening(&w[0].body.scopes, &w[1].body.scopes).is_none());
        prop_assert_eq!(result.is_ok(), narrows);
        if let Ok(grant) = result {
            let root = &cap.chain[0].body.scopes;
            let leaf_covers = grant.scopes.iter().any(|s| s.covers(&probe));
            let root_covers = root.iter().any(|s| s.covers(&probe));
            let is_ceiling_only = matches!(probe, Scope::Res(..));
            prop_assert!(!leaf_covers || root_covers || is_ceiling_only);
        }
    }

    /// Flipping any one byte of a printed capability makes it fail to parse or to verify.
    #[test]
    fn one_flipped_byte_anywhere_is_caught(pos in 5usize..400, bit in 0u8..6) {
        let k = key(1);
        let t = link(&k, Subject::Name("a".into()), None, &[Scope::Res(Resource::Mem, 1 << 20)], 1);
        let printed = Capability { chain: vec![t] }.print();
        let pos = 5 + pos % (printed.len() - 5);
        let mut bytes = printed.into_bytes();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let idx = alphabet.iter().position(|&c| c == bytes[pos]).unwrap();
        bytes[pos] = alphabet[(idx ^ (1 << bit)) % 64];
        let roots = [k.verifying_key().to_bytes()];
        let revoked = HashSet::new();
        if let Ok(cap) = Capability::parse(std::str::from_utf8(&bytes).unwrap()) {
            let ok = verify_capability(&cap, VerifyContext { now: 10, trusted_roots: &roots, revoked: &revoked });
            prop_assert!(ok.is_err(), "a modified token verified");
        }
    }
}

// Each case signs and verifies a chain of up to four links.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A valid chain prints and parses back to itself, link by link, and verifies.
    #[test]
    fn a_valid_chain_round_trips_and_verifies(spec in chain_spec()) {
        let (cap, roots) = build_chain(&spec);
        let parsed = Capability::parse(&cap.print()).unwrap();
        prop_assert_eq!(&parsed, &cap);
        for link in &cap.chain {
            prop_assert_eq!(&TokenBody::decode(&link.body_bytes).unwrap(), &link.body);
        }
        let revoked = HashSet::new();
        let ctx = VerifyContext { now: 10, trusted_roots: &roots, revoked: &revoked };
        prop_assert!(verify_capability(&cap, ctx).is_ok());
    }

    /// A valid chain changed anywhere in its bytes (a byte flipped, cut short, bytes put
    /// in) or in its links (two swapped, one before the leaf dropped) either fails to
    /// parse or fails to verify; each body that still decodes is canonical.
    #[test]
    fn a_changed_chain_is_refused(spec in chain_spec(), change in change()) {
        let (cap, roots) = build_chain(&spec);
        let printed = cap.print();
        let mut raw = URL_SAFE_NO_PAD.decode(&printed[PRINTED_PREFIX.len()..]).unwrap();
        let n = cap.chain.len();
        let changed = match change.clone() {
            Change::Flip { at, mask } => {
                let at = at % raw.len();
                raw[at] ^= mask;
                raw
            }
            Change::Truncate { to } => {
                raw.truncate(to % raw.len());
                raw
            }
            Change::Insert { at, bytes } => {
                let at = at % (raw.len() + 1);
                raw.splice(at..at, bytes);
                raw
            }
            Change::Swap { i, j } => {
                let (i, j) = (i % n, j % n);
                prop_assume!(i != j);
                let mut chain = cap.chain.clone();
                chain.swap(i, j);
                raw_of(&Capability { chain })
            }
            Change::DropBeforeLeaf { i } => {
                prop_assume!(n > 1);
                let mut chain = cap.chain.clone();
                chain.remove(i % (n - 1));
                raw_of(&Capability { chain })
            }
        };
        let text = format!("{PRINTED_PREFIX}{}", URL_SAFE_NO_PAD.encode(&changed));
        if let Ok(parsed) = Capability::parse(&text) {
            for link in &parsed.chain {
                prop_assert_eq!(link.body.encode(), link.body_bytes.clone());
            }
            let revoked = HashSet::new();
            let ctx = VerifyContext { now: 10, trusted_roots: &roots, revoked: &revoked };
            prop_assert!(
                verify_capability(&parsed, ctx).is_err(),
                "a changed chain verified: {:?}", change
            );
        }
    }

    /// One body, changed in its bytes, is refused or decodes to a body that encodes back
    /// to exactly those bytes.
    #[test]
    fn a_changed_body_is_refused_or_canonical(spec in chain_spec(), at in any::<usize>(), mask in 1u8.., cut in any::<bool>()) {
        let (cap, _) = build_chain(&spec);
        let mut bytes = cap.leaf().body_bytes.clone();
        let at = at % bytes.len();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] ^= mask;
        }
        if let Ok(body) = TokenBody::decode(&bytes) {
            prop_assert_eq!(body.encode(), bytes);
        }
    }
}
