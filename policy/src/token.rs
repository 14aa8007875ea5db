//! Capability tokens: the canonical byte encoding (specified in `docs/capabilities.md`),
//! signing, and the printable form. A printed capability carries its whole delegation
//! chain, root first, so it can be verified with nothing but the trusted root keys and the
//! revocation list.

use crate::plan::hex;
use crate::scope::Scope;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// Domain separation: the first bytes of every signed body.
pub const BODY_MAGIC: &[u8] = b"covenant-capability\0";
/// The version of the body encoding.
pub const TOKEN_VERSION: u8 = 1;
/// Prefix of the printed form.
pub const PRINTED_PREFIX: &str = "cov1.";
/// Longest chain a capability may carry (root included).
pub const MAX_CHAIN: usize = 8;
/// Largest encoded capability accepted, before any parsing.
pub const MAX_PRINTED_LEN: usize = 64 * 1024;

/// Who a token is granted to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A named agent: a bearer token that cannot be attenuated further.
    Name(String),
    /// The holder of an ed25519 key: only that key may attenuate it.
    Key([u8; 32]),
}

impl Subject {
    /// `key:BASE64URL` or a plain name.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        if let Some(key) = text.strip_prefix("key:") {
            return Ok(Subject::Key(decode_key(key)?));
        }
        let valid = !text.is_empty()
            && text.len() <= 255
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@/".contains(c));
        if !valid {
            return Err(TokenError::BadSubject(text.to_string()));
        }
        Ok(Subject::Name(text.to_string()))
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Name(n) => write!(f, "{n}"),
            Subject::Key(k) => write!(f, "key:{}", URL_SAFE_NO_PAD.encode(k)),
        }
    }
}

/// Reference from a delegated token to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentRef {
    pub id: [u8; 16],
    /// sha256 of the parent's body and signature.
    pub digest: [u8; 32],
}

/// The signed content of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBody {
    pub id: [u8; 16],
    pub issuer: [u8; 32],
    pub subject: Subject,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub expires: i64,
    pub parent: Option<ParentRef>,
    /// Sorted by their text, no duplicates.
    pub scopes: Vec<Scope>,
    pub nonce: [u8; 16],
}

/// One link of a chain: its body bytes exactly as signed, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    pub body: TokenBody,
    pub body_bytes: Vec<u8>,
    pub signature: [u8; 64],
}

/// A capability: its chain, root first, the token in force last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub chain: Vec<SignedToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a covenant capability: it must start with `{PRINTED_PREFIX}`")]
    Prefix,
    #[error("capability is {0} bytes, larger than the {MAX_PRINTED_LEN} accepted")]
    TooLarge(usize),
    #[error("capability is not valid base64url: {0}")]
    Base64(String),
    #[error("capability is malformed: {0}")]
    Malformed(String),
    #[error("capability chain has {0} links; at most {MAX_CHAIN} are accepted")]
    ChainTooLong(usize),
    #[error("subject `{0}` is not a name (letters, digits, `-_.@/`) or key:BASE64URL")]
    BadSubject(String),
    #[error("`{0}` is not a base64url ed25519 public key")]
    BadKey(String),
    #[error("a token lists no scopes")]
    NoScopes,
    #[error("scope list: {0}")]
    Scope(String),
    #[error(
        "the validity window is empty: not-before {not_before} is not before expiry {expires}"
    )]
    EmptyWindow { not_before: i64, expires: i64 },
}

/// Decodes a base64url public key.
pub fn decode_key(text: &str) -> Result<[u8; 32], TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| TokenError::BadKey(text.to_string()))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| TokenError::BadKey(text.to_string()))?;
    VerifyingKey::from_bytes(&key).map_err(|_| TokenError::BadKey(text.to_string()))?;
    Ok(key)
}

/// Encodes a public key as base64url.
pub fn encode_key(key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Token ids are printed as 32 hex digits.
pub fn id_text(id: &[u8; 16]) -> String {
    hex(id)
}

/// Canonical form of a scope list: sorted by text, duplicates removed.
pub fn canonical_scopes(scopes: &[Scope]) -> Vec<Scope> {
    let mut v: Vec<(String, Scope)> = scopes.iter().map(|s| (s.to_string(), s.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v.into_iter().map(|(_, s)| s).collect()
}

impl TokenBody {
    /// The canonical bytes that are signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(BODY_MAGIC);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.issuer);
        match &self.subject {
            Subject::Name(n) => {
                out.push(0);
                put_str(&mut out, n);
            }
            Subject::Key(k) => {
                out.push(1);
                out.extend_from_slice(k);
            }
        }
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        match &self.parent {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.id);
                out.extend_from_slice(&p.digest);
            }
        }
        out.extend_from_slice(&(self.scopes.len() as u16).to_be_bytes());
        for s in &self.scopes {
            put_str(&mut out, &s.to_string());
        }
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Parses body bytes, refusing anything that is not exactly canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(BODY_MAGIC.len())? != BODY_MAGIC {
            return Err(malformed("wrong body magic"));
        }
        let version = r.take(1)?[0];
        if version != TOKEN_VERSION {
            return Err(malformed(&format!(
                "token version {version} is not supported (this build reads {TOKEN_VERSION})"
            )));
        }
        let id = r.array::<16>()?;
        let issuer = r.array::<32>()?;
        let subject = match r.take(1)?[0] {
            0 => Subject::parse(&r.string()?)?,
            1 => Subject::Key(r.array::<32>()?),
            t => return Err(malformed(&format!("unknown subject tag {t}"))),
        };
        let not_before = i64::from_be_bytes(r.array::<8>()?);
        let expires = i64::from_be_bytes(r.array::<8>()?);
        let parent = match r.take(1)?[0] {
            0 => None,
            1 => Some(ParentRef {
                id: r.array::<16>()?,
                digest: r.array::<32>()?,
            }),
            t => return Err(malformed(&format!("unknown parent tag {t}"))),
        };
        let count = u16::from_be_bytes(r.array::<2>()?) as usize;
        let mut scopes = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let text = r.string()?;
            scopes.push(Scope::parse(&text).map_err(|e| TokenError::Scope(e.to_string()))?);
        }
        let nonce = r.array::<16>()?;
        if r.pos != bytes.len() {
            return Err(malformed("trailing bytes after the body"));
        }
        let body = TokenBody {
            id,
            issuer,
            subject,
            not_before,
            expires,
            parent,
            scopes,
            nonce,
        };
        if body.encode() != bytes {
            return Err(malformed(
                "body is not in canonical form (scope order, duplicates or spelling)",
            ));
        }
        body.check_shape()?;
        Ok(body)
    }

    /// Checks that do not need keys: scopes present, a non-empty window.
    pub fn check_shape(&self) -> Result<(), TokenError> {
        if self.scopes.is_empty() {
            return Err(TokenError::NoScopes);
        }
        if canonical_scopes(&self.scopes) != self.scopes {
            return Err(malformed("body is not in canonical form (scopes must be sorted by their text, without duplicates)"));
        }
        if self.not_before >= self.expires {
            return Err(TokenError::EmptyWindow {
                not_before: self.not_before,
                expires: self.expires,
            });
        }
        Ok(())
    }
}

fn malformed(what: &str) -> TokenError {
    TokenError::Malformed(what.to_string())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| malformed("truncated"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn string(&mut self) -> Result<String, TokenError> {
        let len = u16::from_be_bytes(self.array::<2>()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
    }
}

impl SignedToken {
    /// Signs `body` with `key`; the body's issuer must be the key's public half.
    pub fn sign(body: TokenBody, key: &SigningKey) -> Result<Self, TokenError> {
        body.check_shape()?;
        if body.issuer != key.verifying_key().to_bytes() {
            return Err(malformed("the issuer is not the signing key's public key"));
        }
        let body_bytes = body.encode();
        let signature = key.sign(&body_bytes).to_bytes();
        Ok(SignedToken {
            body,
            body_bytes,
            signature,
        })
    }

    /// Whether the signature is the issuer's over the body bytes.
    pub fn signature_valid(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.body.issuer) else {
            return false;
        };
        key.verify_strict(&self.body_bytes, &Signature::from_bytes(&self.signature))
            .is_ok()
    }

    /// sha256 of body and signature: what a child's [`ParentRef`] names.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.body_bytes);
        h.update(self.signature);
        h.finalize().into()
    }
}

impl Capability {
    /// The token in force (the last link).
    pub fn leaf(&self) -> &SignedToken {
        self.chain
            .last()
            .expect("a capability has at least one link")
    }

    /// `cov1.` + base64url(count u8, then per link: u32 length, body, 64-byte signature).
    pub fn print(&self) -> String {
        let mut raw = vec![self.chain.len() as u8];
        for link in &self.chain {
            raw.extend_from_slice(&(link.body_bytes.len() as u32).to_be_bytes());
            raw.extend_from_slice(&link.body_bytes);
            raw.extend_from_slice(&link.signature);
        }
        format!("{PRINTED_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Parses the printed form. Checks structure only; see [`crate::verify`] for trust.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_PRINTED_LEN {
            return Err(TokenError::TooLarge(text.len()));
        }
        let b64 = text
            .strip_prefix(PRINTED_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| TokenError::Base64(e.to_string()))?;
        let mut r = Reader {
            bytes: &raw,
            pos: 0,
        };
        let count = r.take(1)?[0] as usize;
        if count == 0 {
            return Err(malformed("the chain is empty"));
        }
        if count > MAX_CHAIN {
            return Err(TokenError::ChainTooLong(count));
        }
        let mut chain = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u32::from_be_bytes(r.array::<4>()?) as usize;
            let body_bytes = r.take(len)?.to_vec();
            let signature = r.array::<64>()?;
            let body = TokenBody::decode(&body_bytes)?;
            chain.push(SignedToken {
                body,
                body_bytes,
                signature,
            });
        }
        if r.pos != raw.len() {
            return Err(malformed("trailing bytes after the chain"));
        }
        Ok(Capability { chain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body(issuer: &SigningKey) -> TokenBody {
        TokenBody {
            id: [7; 16],
            issuer: issuer.verifying_key().to_bytes(),
            subject: Subject::Name("ci".into()),
            not_before: 1000,
            expires: 5000,
            parent: None,
            scopes: canonical_scopes(&[
                Scope::parse("res.mem:1GiB").unwrap(),
                Scope::parse("fs.write:/w").unwrap(),
            ]),
            nonce: [9; 16],
        }
    }

    #[test]
    fn a_capability_round_trips_through_its_printed_form() {
        let k = key(1);
        let cap = Capability {
            chain: vec![SignedToken::sign(body(&k), &k).unwrap()],
        };
        let printed = cap.print();
        assert!(printed.starts_with("cov1."));
        let back = Capability::parse(&printed).unwrap();
        assert_eq!(back, cap);
        assert!(back.leaf().signature_valid());
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let k = key(1);
        let mut b = body(&k);
        b.scopes.reverse();
        let bytes = b.encode();
        assert!(
            matches!(TokenBody::decode(&bytes), Err(TokenError::Malformed(m)) if m.contains("canonical"))
        );
        let mut bytes = body(&k).encode();
        bytes.push(0);
        assert!(TokenBody::decode(&bytes).is_err());
    }

    #[test]
    fn garbage_and_truncation_give_errors_not_panics() {
        let k = key(1);
        let printed = Capability {
            chain: vec![SignedToken::sign(body(&k), &k).unwrap()],
        }
        .print();
        for cut in 0..printed.len() {
            let _ = Capability::parse(&printed[..cut]);
        }
        assert_eq!(Capability::parse("hello"), Err(TokenError::Prefix));
        assert!(matches!(
            Capability::parse("cov1.!!!"),
            Err(TokenError::Base64(_))
        ));
        assert!(Capability::parse("cov1.AA").is_err());
        assert!(matches!(
            Capability::parse(&"x".repeat(MAX_PRINTED_LEN + 1)),
            Err(TokenError::TooLarge(_))
        ));
    }

    #[test]
    fn signing_with_another_key_than_the_issuer_is_refused() {
        let b = body(&key(1));
        assert!(SignedToken::sign(b, &key(2)).is_err());
    }

    #[test]
    fn subjects_parse_names_and_keys() {
        let pk = encode_key(&key(3).verifying_key().to_bytes());
        assert_eq!(
            Subject::parse(&format!("key:{pk}")).unwrap(),
            Subject::Key(key(3).verifying_key().to_bytes())
        );
        assert_eq!(
            Subject::parse("agent-1").unwrap(),
            Subject::Name("agent-1".into())
        );
        assert!(Subject::parse("two words").is_err() && Subject::parse("key:nope").is_err());
    }
}
