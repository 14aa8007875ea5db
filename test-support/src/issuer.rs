//! A key that signs capabilities, and the trust file that makes a home accept them: what
//! an operator does with `covenant-ctl key gen`, `key trust` and `cap grant`, without the
//! binary.

use covenant_policy::token::{encode_key, SignedToken, TokenBody};
use covenant_policy::{Capability, Scope, Subject};
use ed25519_dalek::SigningKey;
use std::io::Read;
use std::path::Path;

/// A random signing key.
pub struct Issuer {
    key: SigningKey,
}

impl Issuer {
    /// A fresh key from the kernel's random source.
    pub fn random() -> Self {
        Issuer {
            key: SigningKey::from_bytes(&random_bytes()),
        }
    }

    /// The public key, as a token's issuer or a delegation's subject.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Writes `HOME/trust/NAME.pub`: the home's store then trusts what this key signs.
    pub fn trust_in(&self, home: &Path, name: &str) {
        std::fs::create_dir_all(home.join("trust")).unwrap();
        std::fs::write(
            home.join("trust").join(format!("{name}.pub")),
            encode_key(&self.public()) + "\n",
        )
        .unwrap();
    }

    /// A one-link capability for `subject` with `scopes`, valid from `from` to `to` (unix
    /// seconds), printed as the CLI and the API take it.
    pub fn token(&self, subject: Subject, scopes: &[&str], from: i64, to: i64) -> String {
        let mut scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        scopes.sort_by_key(|s| s.to_string());
        let id = random_bytes();
        let body = TokenBody {
            id,
            issuer: self.public(),
            subject,
            not_before: from,
            expires: to,
            parent: None,
            scopes,
            nonce: random_bytes(),
        };
        Capability {
            chain: vec![SignedToken::sign(body, &self.key).unwrap()],
        }
        .print()
    }

    /// A capability for the subject named `name`, valid from a moment ago for an hour.
    pub fn token_for_an_hour(&self, name: &str, scopes: &[&str]) -> String {
        let now = now();
        self.token(Subject::Name(name.into()), scopes, now - 5, now + 3600)
    }
}

/// The time now in unix seconds, as tokens count it.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `N` bytes from `/dev/urandom`.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .expect("/dev/urandom is readable");
    out
}
