//! Property tests of the capability laws: printing and parsing are inverse, coverage is a
//! preorder, a chain of narrowings never widens whatever its order, and no byte string
//! makes the token decoder panic.

use covenant_policy::scope::{FsAccess, Resource, Scope};
use covenant_policy::token::{
    canonical_scopes, Capability, ParentRef, SignedToken, Subject, TokenBody,
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

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = TokenBody::decode(&bytes);
        let text = format!("cov1.{}", String::from_utf8_lossy(&bytes));
        let _ = Capability::parse(&text);
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
