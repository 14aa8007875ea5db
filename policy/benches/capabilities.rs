//! `cargo bench -p covenant-policy`: verification of a capability with a 4-link chain,
//! and compiling a manifest under the grant it yields. Target: each under 200 µs.
//! Prints the median of 2,000 timed runs after 200 warm-up runs.

use covenant_policy::scope::Scope;
use covenant_policy::token::{
    canonical_scopes, Capability, ParentRef, SignedToken, Subject, TokenBody,
};
use covenant_policy::{
    authorise, compile_request, verify_capability, Authorisation, Manifest, VerifyContext,
};
use ed25519_dalek::SigningKey;
use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

const TARGET: Duration = Duration::from_micros(200);

fn median(mut f: impl FnMut()) -> Duration {
    for _ in 0..200 {
        f();
    }
    let mut samples: Vec<Duration> = (0..2_000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let keys: Vec<SigningKey> = (1..=5u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let ws = std::env::temp_dir().canonicalize().unwrap();
    let scopes = |mem: &str| {
        canonical_scopes(&[
            Scope::parse(&format!("fs.write:{}", ws.display())).unwrap(),
            Scope::parse(&format!("res.mem:{mem}")).unwrap(),
            Scope::parse("res.pids:128").unwrap(),
            Scope::parse("net:loopback").unwrap(),
        ])
    };
    let mut chain: Vec<SignedToken> = Vec::new();
    for (i, mem) in ["2GiB", "1GiB", "512MiB", "256MiB"].iter().enumerate() {
        let subject = Subject::Key(keys[i + 1].verifying_key().to_bytes());
        let body = TokenBody {
            id: [i as u8; 16],
            issuer: keys[i].verifying_key().to_bytes(),
            subject,
            not_before: 0,
            expires: i64::MAX / 2,
            parent: chain.last().map(|p| ParentRef {
                id: p.body.id,
                digest: p.digest(),
            }),
            scopes: scopes(mem),
            nonce: [i as u8; 16],
        };
        chain.push(SignedToken::sign(body, &keys[i]).unwrap());
    }
    let cap = Capability { chain };
    let printed = cap.print();
    let roots = [keys[0].verifying_key().to_bytes()];
    let revoked = HashSet::new();
    let ctx = VerifyContext {
        now: 1_000,
        trusted_roots: &roots,
        revoked: &revoked,
    };

    let verify = median(|| {
        let cap = Capability::parse(black_box(&printed)).unwrap();
        black_box(verify_capability(&cap, ctx).unwrap());
    });
    let grant = verify_capability(&cap, ctx).unwrap();
    let mut manifest = Manifest::parse(&format!(
        "version = 1\ncommand = [\"cargo\", \"test\"]\nworkspace = \"{}\"\nnet = \"loopback\"\n[limits]\nmemory = \"128MiB\"\n",
        ws.display()
    ))
    .unwrap();
    manifest.base_dir = ws.clone();
    let compile = median(|| {
        let request = compile_request(black_box(&manifest), "job-bench").unwrap();
        black_box(
            authorise(
                request,
                &grant,
                Authorisation::Operator { key: String::new() },
            )
            .unwrap(),
        );
    });
    println!("{:<44} {:>10} {:>8}", "operation", "median µs", "target");
    for (name, d) in [
        ("parse + verify a 4-link capability", verify),
        ("compile a manifest under a grant", compile),
    ] {
        let verdict = if d <= TARGET { "met" } else { "MISSED" };
        println!("{name:<44} {:>10.1} {verdict:>8}", d.as_secs_f64() * 1e6);
    }
}
