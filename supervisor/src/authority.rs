//! Issuing and checking capabilities on this host: granting, attenuating, verifying
//! against the trust store and revocation list, and authorising a run's request.

use crate::keys::{self, KeyError};
use covenant_policy::token::{
    canonical_scopes, encode_key, ParentRef, SignedToken, TokenBody, TokenError,
};
use covenant_policy::verify::widening;
use covenant_policy::{
    authorise, compile_request, requested_scopes, verify_capability, Authorisation, AuthoriseError,
    Capability, CompileError, Grant, Manifest, SandboxPlan, Scope, Subject, VerifyContext,
    VerifyError,
};
use ed25519_dalek::SigningKey;
use std::time::Duration;

/// How long the operator's self-grant for one embedded run is valid.
pub const OPERATOR_GRANT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("capability: {0}")]
    Token(TokenError),
    #[error("capability refused: {0}")]
    Verify(VerifyError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Refused(#[from] AuthoriseError),
    #[error("attenuation: {0}")]
    Attenuation(String),
    #[error(transparent)]
    Image(#[from] covenant_images::store::ImageError),
    #[error("cannot read capability file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(transparent)]
    Path(#[from] crate::host_paths::PlanRefused),
}

impl From<TokenError> for AuthorityError {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<VerifyError> for AuthorityError {
    fn from(e: VerifyError) -> Self {
        Self::Verify(e)
    }
}

type Result<T> = std::result::Result<T, AuthorityError>;

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads a capability given as a file path or as the printed token itself.
pub fn load_capability(arg: &str) -> Result<Capability> {
    let text = if arg
        .trim_start()
        .starts_with(covenant_policy::token::PRINTED_PREFIX)
    {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).map_err(|error| AuthorityError::Read {
            path: arg.to_string(),
            error,
        })?
    };
    Ok(Capability::parse(&text)?)
}

/// Issues a root token: `issuer` grants `subject` these scopes for `ttl` from now.
pub fn grant(
    issuer: &SigningKey,
    subject: Subject,
    scopes: &[Scope],
    ttl: Duration,
) -> Result<Capability> {
    let now = now();
    let body = TokenBody {
        id: keys::random_bytes()?,
        issuer: issuer.verifying_key().to_bytes(),
        subject,
        not_before: now,
        expires: now.saturating_add(ttl.as_secs() as i64),
        parent: None,
        scopes: canonical_scopes(scopes),
        nonce: keys::random_bytes()?,
    };
    Ok(Capability {
        chain: vec![SignedToken::sign(body, issuer)?],
    })
}

/// Narrows `parent` with `holder`, the key the parent was granted to. The child lives at
/// most `ttl` and never past its parent; a widening child is refused here, before signing.
pub fn attenuate(
    parent: &Capability,
    holder: &SigningKey,
    subject: Subject,
    scopes: &[Scope],
    ttl: Duration,
) -> Result<Capability> {
    let leaf = parent.leaf();
    match &leaf.body.subject {
        Subject::Key(k) if *k == holder.verifying_key().to_bytes() => {}
        Subject::Key(k) => {
            return Err(AuthorityError::Attenuation(format!(
                "the parent was granted to key:{}, not to this key",
                encode_key(k)
            )))
        }
        Subject::Name(n) => {
            return Err(AuthorityError::Attenuation(format!(
                "the parent was granted to the name `{n}`; only a token granted to a key can be attenuated"
            )))
        }
    }
    let scopes = canonical_scopes(scopes);
    if let Some(reason) = widening(&leaf.body.scopes, &scopes) {
        return Err(AuthorityError::Attenuation(reason));
    }
    let now = now();
    let body = TokenBody {
        id: keys::random_bytes()?,
        issuer: holder.verifying_key().to_bytes(),
        subject,
        not_before: now.max(leaf.body.not_before),
        expires: now
            .saturating_add(ttl.as_secs() as i64)
            .min(leaf.body.expires),
        parent: Some(ParentRef {
            id: leaf.body.id,
            digest: leaf.digest(),
        }),
        scopes,
        nonce: keys::random_bytes()?,
    };
    let mut chain = parent.chain.clone();
    chain.push(SignedToken::sign(body, holder)?);
    Ok(Capability { chain })
}

/// Keys a capability may chain to on this host: the trust store and the operator key.
pub fn trusted_roots() -> Result<Vec<[u8; 32]>> {
    let mut roots: Vec<[u8; 32]> = keys::trusted_keys()?.into_iter().map(|(_, k)| k).collect();
    roots.push(keys::operator_key()?.verifying_key().to_bytes());
    Ok(roots)
}

/// Verifies `cap` against this host's trust store and revocation list.
pub fn verify(cap: &Capability) -> Result<Grant> {
    verify_against(cap, &trusted_roots()?)
}

fn verify_against(cap: &Capability, roots: &[[u8; 32]]) -> Result<Grant> {
    let revoked = keys::revoked()?;
    Ok(verify_capability(
        cap,
        VerifyContext {
            now: now(),
            trusted_roots: roots,
            revoked: &revoked,
        },
    )?)
}

/// Compiles and authorises a run: with a capability, the request must lie within what it
/// grants; without one, the local operator key grants exactly what is requested, and the
/// plan records that it was operator-authorised. Host paths are authorised by name and
/// only then opened (without following symlinks) and recorded in the plan.
pub fn authorise_run(
    manifest: &Manifest,
    job_id: &str,
    capability: Option<&Capability>,
) -> Result<SandboxPlan> {
    authorise_compiled(compile_request(manifest, job_id)?, capability)
}

/// [`authorise_run`] for a request already compiled.
pub fn authorise_compiled(
    request: SandboxPlan,
    capability: Option<&Capability>,
) -> Result<SandboxPlan> {
    match capability {
        Some(cap) => {
            let grant = verify(cap)?;
            let authorisation = capability_authorisation(&grant);
            let mut plan = authorise(request, &grant, authorisation)?;
            crate::images::resolve_rootfs(&mut plan)?;
            crate::host_paths::check_plan(&mut plan)?;
            Ok(plan)
        }
        None => {
            let operator = keys::operator_key()?;
            let scopes = requested_scopes(&request);
            let cap = grant(
                &operator,
                Subject::Name("operator".into()),
                &scopes,
                OPERATOR_GRANT_TTL,
            )?;
            let roots = [operator.verifying_key().to_bytes()];
            let revoked = Default::default();
            let grant = verify_capability(
                &cap,
                VerifyContext {
                    now: now(),
                    trusted_roots: &roots,
                    revoked: &revoked,
                },
            )?;
            let authorisation = Authorisation::Operator {
                key: encode_key(&roots[0]),
            };
            let mut plan = authorise(request, &grant, authorisation)?;
            crate::images::resolve_rootfs(&mut plan)?;
            crate::host_paths::check_plan(&mut plan)?;
            Ok(plan)
        }
    }
}

/// Verifies `cap` as the daemon does: against the trust store alone (the operator key
/// counts only when it has been trusted explicitly) and the revocation list.
pub fn verify_for_daemon(cap: &Capability) -> Result<Grant> {
    let roots: Vec<[u8; 32]> = keys::trusted_keys()?.into_iter().map(|(_, k)| k).collect();
    verify_against(cap, &roots)
}

/// The plan for `manifest` under a grant already verified, with images resolved.
pub fn authorise_granted(
    manifest: &Manifest,
    job_id: &str,
    grant: &Grant,
    authorisation: Authorisation,
) -> Result<SandboxPlan> {
    let request = compile_request(manifest, job_id)?;
    let mut plan = authorise(request, grant, authorisation)?;
    crate::images::resolve_rootfs(&mut plan)?;
    crate::host_paths::check_plan(&mut plan)?;
    Ok(plan)
}

/// How a verified grant is recorded in a plan.
pub fn capability_authorisation(grant: &Grant) -> Authorisation {
    Authorisation::Capability {
        subject: grant.subject.to_string(),
        root_issuer: encode_key(&grant.root_issuer),
        chain: grant
            .chain_ids
            .iter()
            .map(covenant_policy::token::id_text)
            .collect(),
    }
}
