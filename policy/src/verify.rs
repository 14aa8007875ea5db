//! Verifying a capability chain into a [`Grant`]: every link's signature, its validity
//! window (with [`CLOCK_SKEW_SECS`] of allowance), revocation, the depth limit, that the
//! root's issuer is trusted, that each link was signed by its parent's subject key, and
//! that each link only narrows its parent. Each refusal names the link (0 = root).

use crate::scope::{ceiling, Resource, Scope};
use crate::token::{encode_key, id_text, Capability, SignedToken, Subject, MAX_CHAIN};
use std::collections::HashSet;

/// Allowance for clocks that disagree, in seconds, on both ends of a validity window.
pub const CLOCK_SKEW_SECS: i64 = 30;

/// What a verified capability grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<Scope>,
    pub subject: Subject,
    /// Ids of the chain, root first.
    pub chain_ids: Vec<[u8; 16]>,
    /// The trusted key the chain starts from.
    pub root_issuer: [u8; 32],
    pub expires: i64,
}

/// What verification trusts and refuses.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext<'a> {
    /// Unix seconds.
    pub now: i64,
    pub trusted_roots: &'a [[u8; 32]],
    pub revoked: &'a HashSet<[u8; 16]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "link {link}: the root issuer {issuer} is not a trusted key (see `covenant-ctl key trust`)"
    )]
    UntrustedIssuer { link: usize, issuer: String },
    #[error("link {link} (token {id}): the signature does not verify")]
    BadSignature { link: usize, id: String },
    #[error("link {link} (token {id}): expired at {expires} (now {now})")]
    Expired {
        link: usize,
        id: String,
        expires: i64,
        now: i64,
    },
    #[error("link {link} (token {id}): not valid before {not_before} (now {now})")]
    NotYetValid {
        link: usize,
        id: String,
        not_before: i64,
        now: i64,
    },
    #[error("link {link} (token {id}): revoked")]
    Revoked { link: usize, id: String },
    #[error("the chain has {0} links; at most {MAX_CHAIN} are accepted")]
    TooDeep(usize),
    #[error("link {link} (token {id}): {reason}")]
    BrokenChain {
        link: usize,
        id: String,
        reason: String,
    },
    #[error("link {link} (token {id}): widens its parent: {reason}")]
    Widened {
        link: usize,
        id: String,
        reason: String,
    },
}

/// Verifies `cap` and returns what it grants.
pub fn verify_capability(cap: &Capability, ctx: VerifyContext<'_>) -> Result<Grant, VerifyError> {
    if cap.chain.len() > MAX_CHAIN {
        return Err(VerifyError::TooDeep(cap.chain.len()));
    }
    let root = &cap.chain[0];
    if !ctx.trusted_roots.contains(&root.body.issuer) {
        return Err(VerifyError::UntrustedIssuer {
            link: 0,
            issuer: encode_key(&root.body.issuer),
        });
    }
    for (link, token) in cap.chain.iter().enumerate() {
        let id = id_text(&token.body.id);
        if !token.signature_valid() {
            return Err(VerifyError::BadSignature { link, id });
        }
        if ctx.revoked.contains(&token.body.id) {
            return Err(VerifyError::Revoked { link, id });
        }
        if ctx.now > token.body.expires.saturating_add(CLOCK_SKEW_SECS) {
            return Err(VerifyError::Expired {
                link,
                id,
                expires: token.body.expires,
                now: ctx.now,
            });
        }
        if ctx.now < token.body.not_before.saturating_sub(CLOCK_SKEW_SECS) {
            return Err(VerifyError::NotYetValid {
                link,
                id,
                not_before: token.body.not_before,
                now: ctx.now,
            });
        }
        match link {
            0 if token.body.parent.is_some() => {
                return Err(VerifyError::BrokenChain {
                    link,
                    id,
                    reason: "the root names a parent".into(),
                })
            }
            0 => {}
            _ => check_delegation(&cap.chain[link - 1], token, link)?,
        }
    }
    let leaf = cap.leaf();
    Ok(Grant {
        scopes: leaf.body.scopes.clone(),
        subject: leaf.body.subject.clone(),
        chain_ids: cap.chain.iter().map(|t| t.body.id).collect(),
        root_issuer: root.body.issuer,
        expires: leaf.body.expires,
    })
}

/// A child must name its parent exactly, be signed by the parent's subject key, live no
/// longer, and narrow every scope.
fn check_delegation(
    parent: &SignedToken,
    child: &SignedToken,
    link: usize,
) -> Result<(), VerifyError> {
    let id = id_text(&child.body.id);
    let broken = |reason: String| VerifyError::BrokenChain {
        link,
        id: id.clone(),
        reason,
    };
    let widened = |reason: String| VerifyError::Widened {
        link,
        id: id.clone(),
        reason,
    };
    let Some(parent_ref) = child.body.parent else {
        return Err(broken("a delegated token must name its parent".into()));
    };
    if parent_ref.id != parent.body.id || parent_ref.digest != parent.digest() {
        return Err(broken(
            "it does not name the token before it in the chain".into(),
        ));
    }
    match &parent.body.subject {
        Subject::Key(holder) if *holder == child.body.issuer => {}
        Subject::Key(_) => {
            return Err(broken(
                "it is not signed by the key its parent was granted to".into(),
            ))
        }
        Subject::Name(n) => {
            return Err(broken(format!(
            "its parent was granted to the name `{n}`, and only key-held tokens can be attenuated"
        )))
        }
    }
    if child.body.expires > parent.body.expires {
        return Err(widened(format!(
            "expires at {}, after its parent ({})",
            child.body.expires, parent.body.expires
        )));
    }
    if child.body.not_before < parent.body.not_before {
        return Err(widened(format!(
            "becomes valid at {}, before its parent ({})",
            child.body.not_before, parent.body.not_before
        )));
    }
    if let Some(extra) = widening(&parent.body.scopes, &child.body.scopes) {
        return Err(widened(extra));
    }
    Ok(())
}

/// Why `child` is not a narrowing of `parent`, if it is not: a scope the parent does not
/// cover, or a resource ceiling the parent has and the child dropped.
pub fn widening(parent: &[Scope], child: &[Scope]) -> Option<String> {
    for scope in child {
        let covered = match scope {
            // A ceiling the parent does not have is a new restriction, hence narrower.
            Scope::Res(kind, _) if ceiling(parent, *kind).is_none() => true,
            // The native runner is no authority (see `missing`).
            Scope::Runner(crate::plan::RunnerChoice::Native) => true,
            _ => parent.iter().any(|p| p.covers(scope)),
        };
        if !covered {
            return Some(format!("`{scope}` is not covered by its parent"));
        }
    }
    for kind in Resource::ALL {
        if let (Some(limit), None) = (ceiling(parent, kind), ceiling(child, kind)) {
            // The ceiling is read from one of the parent's scopes, so it is always found.
            let example = parent
                .iter()
                .find(|s| matches!(s, Scope::Res(k, v) if *k == kind && *v == limit));
            return Some(format!(
                "drops the parent's ceiling `{}`",
                example.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{canonical_scopes, ParentRef, TokenBody};
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn scopes(list: &[&str]) -> Vec<Scope> {
        canonical_scopes(
            &list
                .iter()
                .map(|s| Scope::parse(s).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn token(
        issuer: &SigningKey,
        subject: Subject,
        parent: Option<&SignedToken>,
        list: &[&str],
        window: (i64, i64),
        id: u8,
    ) -> SignedToken {
        let body = TokenBody {
            id: [id; 16],
            issuer: issuer.verifying_key().to_bytes(),
            subject,
            not_before: window.0,
            expires: window.1,
            parent: parent.map(|p| ParentRef {
                id: p.body.id,
                digest: p.digest(),
            }),
            scopes: scopes(list),
            nonce: [id; 16],
        };
        SignedToken::sign(body, issuer).unwrap()
    }

    fn holder(k: &SigningKey) -> Subject {
        Subject::Key(k.verifying_key().to_bytes())
    }

    /// root (key 1) → key 2 → key 3 → name "agent"
    fn chain() -> Capability {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let t0 = token(
            &k1,
            holder(&k2),
            None,
            &["fs.write:/w", "res.mem:1GiB", "net:host"],
            (0, 10_000),
            1,
        );
        let t1 = token(
            &k2,
            holder(&k3),
            Some(&t0),
            &["fs.write:/w/src", "res.mem:512MiB", "net:loopback"],
            (10, 9_000),
            2,
        );
        let t2 = token(
            &k3,
            Subject::Name("agent".into()),
            Some(&t1),
            &["fs.read:/w/src/a", "res.mem:256MiB"],
            (20, 8_000),
            3,
        );
        Capability {
            chain: vec![t0, t1, t2],
        }
    }

    fn ctx<'a>(roots: &'a [[u8; 32]], revoked: &'a HashSet<[u8; 16]>) -> VerifyContext<'a> {
        VerifyContext {
            now: 100,
            trusted_roots: roots,
            revoked,
        }
    }

    #[test]
    fn a_narrowing_chain_verifies_to_the_leaf_scopes() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let grant = verify_capability(&chain(), ctx(&roots, &none)).unwrap();
        assert_eq!(
            grant.scopes,
            scopes(&["fs.read:/w/src/a", "res.mem:256MiB"])
        );
        assert_eq!(grant.chain_ids.len(), 3);
        assert_eq!(grant.subject, Subject::Name("agent".into()));
    }

    #[test]
    fn each_refusal_names_its_link() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let other_roots = [key(9).verifying_key().to_bytes()];
        assert!(matches!(
            verify_capability(&chain(), ctx(&other_roots, &none)),
            Err(VerifyError::UntrustedIssuer { link: 0, .. })
        ));

        let mut forged = chain();
        forged.chain[1].signature[0] ^= 1;
        assert!(matches!(
            verify_capability(&forged, ctx(&roots, &none)),
            Err(VerifyError::BadSignature { link: 1, .. })
        ));

        let revoked: HashSet<[u8; 16]> = [[1u8; 16]].into();
        assert!(matches!(
            verify_capability(&chain(), ctx(&roots, &revoked)),
            Err(VerifyError::Revoked { link: 0, .. })
        ));

        let late = VerifyContext {
            now: 8_000 + CLOCK_SKEW_SECS + 1,
            ..ctx(&roots, &none)
        };
        assert!(matches!(
            verify_capability(&chain(), late),
            Err(VerifyError::Expired { link: 2, .. })
        ));
        let skewed = VerifyContext {
            now: 8_000 + CLOCK_SKEW_SECS,
            ..ctx(&roots, &none)
        };
        assert!(
            verify_capability(&chain(), skewed).is_ok(),
            "the skew allowance holds"
        );
        let early = VerifyContext {
            now: -CLOCK_SKEW_SECS - 1,
            ..ctx(&roots, &none)
        };
        assert!(matches!(
            verify_capability(&chain(), early),
            Err(VerifyError::NotYetValid { link: 0, .. })
        ));
    }

    #[test]
    fn an_egress_child_may_only_narrow_its_parent() {
        let scopes = |list: &[&str]| -> Vec<Scope> {
            list.iter().map(|s| Scope::parse(s).unwrap()).collect()
        };
        let parent = scopes(&[
            "net.egress:*.example.com:80,443",
            "net.egress:10.0.0.0/8:5432",
        ]);
        for narrower in [
            &["net.egress:api.example.com:443"][..],
            &["net.egress:*.a.example.com:80"],
            &["net.egress:10.20.0.0/16:5432", "net:egress"],
        ] {
            assert_eq!(widening(&parent, &scopes(narrower)), None, "{narrower:?}");
        }
        for wider in [
            &["net.egress:example.com:443"][..],
            &["net.egress:api.example.com:22"],
            &["net.egress:10.0.0.0/7:5432"],
            &["net:host"],
        ] {
            assert!(widening(&parent, &scopes(wider)).is_some(), "{wider:?}");
        }
    }

    #[test]
    fn widening_children_are_refused() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let (k1, k2) = (key(1), key(2));
        let t0 = token(
            &k1,
            holder(&k2),
            None,
            &["fs.write:/w", "res.mem:1GiB"],
            (0, 10_000),
            1,
        );
        for (list, window) in [
            (&["fs.write:/", "res.mem:1GiB"][..], (0, 10_000)),
            (&["fs.write:/w", "res.mem:2GiB"][..], (0, 10_000)),
            (&["fs.write:/w"][..], (0, 10_000)),
            (
                &["fs.write:/w", "res.mem:1GiB", "net:host"][..],
                (0, 10_000),
            ),
            (&["fs.write:/w", "res.mem:1GiB"][..], (0, 20_000)),
        ] {
            let t1 = token(&k2, Subject::Name("a".into()), Some(&t0), list, window, 2);
            let cap = Capability {
                chain: vec![t0.clone(), t1],
            };
            assert!(
                matches!(
                    verify_capability(&cap, ctx(&roots, &none)),
                    Err(VerifyError::Widened { link: 1, .. })
                ),
                "{list:?} {window:?}"
            );
        }
        let t1 = token(
            &k2,
            Subject::Name("a".into()),
            Some(&t0),
            &["fs.write:/w", "res.mem:1GiB", "res.pids:10"],
            (0, 10_000),
            2,
        );
        assert!(
            verify_capability(
                &Capability {
                    chain: vec![t0.clone(), t1]
                },
                ctx(&roots, &none)
            )
            .is_ok(),
            "adding a ceiling narrows"
        );
    }

    #[test]
    fn only_the_subject_key_may_attenuate_and_names_cannot() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let t0 = token(&k1, holder(&k2), None, &["fs.write:/w"], (0, 10_000), 1);
        let stranger = token(
            &k3,
            Subject::Name("a".into()),
            Some(&t0),
            &["fs.write:/w"],
            (0, 10_000),
            2,
        );
        let cap = Capability {
            chain: vec![t0, stranger],
        };
        assert!(matches!(
            verify_capability(&cap, ctx(&roots, &none)),
            Err(VerifyError::BrokenChain { link: 1, .. })
        ));
        let named = token(
            &k1,
            Subject::Name("ci".into()),
            None,
            &["fs.write:/w"],
            (0, 10_000),
            1,
        );
        let child = token(
            &k1,
            Subject::Name("a".into()),
            Some(&named),
            &["fs.write:/w"],
            (0, 10_000),
            2,
        );
        let cap = Capability {
            chain: vec![named, child],
        };
        assert!(matches!(
            verify_capability(&cap, ctx(&roots, &none)),
            Err(VerifyError::BrokenChain { link: 1, .. })
        ));
    }

    #[test]
    fn a_child_must_name_the_parent_before_it() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let mut c = chain();
        let t0b = token(
            &key(1),
            holder(&key(2)),
            None,
            &["fs.write:/w", "res.mem:1GiB", "net:host"],
            (0, 10_000),
            7,
        );
        c.chain[0] = t0b;
        assert!(matches!(
            verify_capability(&c, ctx(&roots, &none)),
            Err(VerifyError::BrokenChain { link: 1, .. })
        ));
    }

    /// Each attenuation refusal, with every field of the error: a two-link chain whose
    /// root (key 1, held by key 2) grants `fs.write:/w`, `res.mem:1GiB` from 100 to
    /// 10,000, and whose child changes one thing.
    #[test]
    fn every_attenuation_refusal_is_exact() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let granted = ["fs.write:/w", "res.mem:1GiB"];
        let root = token(&k1, holder(&k2), None, &granted, (100, 10_000), 1);
        let named_root = token(
            &k1,
            Subject::Name("ci".into()),
            None,
            &granted,
            (100, 10_000),
            1,
        );
        let other_root = token(&k1, holder(&k2), None, &granted, (100, 10_000), 7);
        let child = |parent: Option<&SignedToken>, signer: &SigningKey, list: &[&str], window| {
            token(signer, Subject::Name("a".into()), parent, list, window, 2)
        };
        let id = id_text(&[2; 16]);
        let broken = |reason: &str| VerifyError::BrokenChain {
            link: 1,
            id: id.clone(),
            reason: reason.into(),
        };
        let widened = |reason: &str| VerifyError::Widened {
            link: 1,
            id: id.clone(),
            reason: reason.into(),
        };
        let cases = [
            (
                root.clone(),
                child(None, &k2, &granted, (100, 10_000)),
                broken("a delegated token must name its parent"),
            ),
            (
                root.clone(),
                child(Some(&other_root), &k2, &granted, (100, 10_000)),
                broken("it does not name the token before it in the chain"),
            ),
            (
                root.clone(),
                child(Some(&root), &k3, &granted, (100, 10_000)),
                broken("it is not signed by the key its parent was granted to"),
            ),
            (
                named_root.clone(),
                child(Some(&named_root), &k1, &granted, (100, 10_000)),
                broken(
                    "its parent was granted to the name `ci`, and only key-held tokens can be attenuated",
                ),
            ),
            (
                root.clone(),
                child(Some(&root), &k2, &granted, (100, 10_001)),
                widened("expires at 10001, after its parent (10000)"),
            ),
            (
                root.clone(),
                child(Some(&root), &k2, &granted, (99, 10_000)),
                widened("becomes valid at 99, before its parent (100)"),
            ),
            (
                root.clone(),
                child(Some(&root), &k2, &["fs.write:/", "res.mem:1GiB"], (100, 10_000)),
                widened("`fs.write:/` is not covered by its parent"),
            ),
            (
                root.clone(),
                child(Some(&root), &k2, &["fs.write:/w", "res.mem:2GiB"], (100, 10_000)),
                widened("`res.mem:2GiB` is not covered by its parent"),
            ),
            (
                root.clone(),
                child(
                    Some(&root),
                    &k2,
                    &["fs.write:/w", "res.mem:1GiB", "net:host"],
                    (100, 10_000),
                ),
                widened("`net:host` is not covered by its parent"),
            ),
            (
                root.clone(),
                child(Some(&root), &k2, &["fs.write:/w"], (100, 10_000)),
                widened("drops the parent's ceiling `res.mem:1GiB`"),
            ),
        ];
        for (parent, child, expected) in cases {
            let cap = Capability {
                chain: vec![parent, child],
            };
            assert_eq!(verify_capability(&cap, ctx(&roots, &none)), Err(expected));
        }
    }

    /// The refusals of the chain as a whole and of each link's own validity, exact.
    #[test]
    fn every_chain_and_link_refusal_is_exact() {
        let roots = [key(1).verifying_key().to_bytes()];
        let none = HashSet::new();
        let id = |n: u8| id_text(&[n; 16]);
        let check = |cap: &Capability, c: VerifyContext<'_>, expected: VerifyError| {
            assert_eq!(verify_capability(cap, c), Err(expected));
        };
        check(
            &chain(),
            ctx(&[key(9).verifying_key().to_bytes()], &none),
            VerifyError::UntrustedIssuer {
                link: 0,
                issuer: encode_key(&key(1).verifying_key().to_bytes()),
            },
        );
        let mut forged = chain();
        forged.chain[2].signature[10] ^= 1;
        check(
            &forged,
            ctx(&roots, &none),
            VerifyError::BadSignature { link: 2, id: id(3) },
        );
        let revoked: HashSet<[u8; 16]> = [[2u8; 16]].into();
        check(
            &chain(),
            ctx(&roots, &revoked),
            VerifyError::Revoked { link: 1, id: id(2) },
        );
        let now = 8_000 + CLOCK_SKEW_SECS + 1;
        check(
            &chain(),
            VerifyContext {
                now,
                ..ctx(&roots, &none)
            },
            VerifyError::Expired {
                link: 2,
                id: id(3),
                expires: 8_000,
                now,
            },
        );
        let now = -CLOCK_SKEW_SECS - 1;
        check(
            &chain(),
            VerifyContext {
                now,
                ..ctx(&roots, &none)
            },
            VerifyError::NotYetValid {
                link: 0,
                id: id(1),
                not_before: 0,
                now,
            },
        );
        // A root that names a parent, as if a chain were cut below its real root.
        let c = chain();
        let cut = Capability {
            chain: c.chain[1..].to_vec(),
        };
        check(
            &cut,
            ctx(&[key(2).verifying_key().to_bytes()], &none),
            VerifyError::BrokenChain {
                link: 0,
                id: id(2),
                reason: "the root names a parent".into(),
            },
        );
        let long = Capability {
            chain: vec![c.chain[0].clone(); MAX_CHAIN + 1],
        };
        check(
            &long,
            ctx(&roots, &none),
            VerifyError::TooDeep(MAX_CHAIN + 1),
        );
        assert_eq!(
            VerifyError::TooDeep(9).to_string(),
            "the chain has 9 links; at most 8 are accepted"
        );
    }
}
