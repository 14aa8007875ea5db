//! `covenant-ctl enforce -- ARGV`: the first program of a sandbox run by a runtime that
//! cannot apply landlock itself (runc, crun). The runtime has already entered the
//! namespaces, dropped capabilities, set `no_new_privs` and loaded seccomp (which allows
//! the landlock and seccomp calls); this applies the landlock ruleset the runner decided,
//! loads the bundle's own seccomp profile again as the native runner compiles it, and
//! `exec`s the real program. Nothing runs between the two but this.
//!
//! The second filter is there because libseccomp (which runc and crun build theirs with)
//! keeps an unconditional allow of a call and drops the conditional denials of the same
//! call, such as `ioctl` with `TIOCSTI` or `TCSETS`; filters stack, so the stricter reading
//! holds.

use crate::native::landlock::{apply, LandlockPlan};
use covenant_policy::annotations::LandlockPolicy;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Environment variable carrying the ruleset (JSON `LandlockPolicy`).
pub const POLICY_ENV: &str = "COVENANT_LANDLOCK_POLICY";
/// Environment variable carrying what to enforce of it (JSON `LandlockPlan`).
pub const PLAN_ENV: &str = "COVENANT_LANDLOCK_PLAN";
/// Environment variable carrying the bundle's seccomp profile (JSON `linux.seccomp`).
pub const SECCOMP_ENV: &str = "COVENANT_SECCOMP";

/// The `enforce -- ARGV` command of `covenant-ctl` and `covenantd`: returns only when
/// the ruleset could not be applied or ARGV not executed, with exit status 125.
pub fn command(argv: &[String]) -> i32 {
    let error = enforce_and_exec(argv);
    eprintln!("covenant: enforce: {error}");
    125
}

/// Applies the ruleset from the environment and executes `argv`; returns only an error.
pub fn enforce_and_exec(argv: &[String]) -> String {
    let run = || -> Result<std::convert::Infallible, String> {
        // The ruleset and its plan travel together; neither means the runner decided to
        // run without landlock (an accepted degradation).
        let landlock = match (std::env::var(POLICY_ENV), std::env::var(PLAN_ENV)) {
            (Ok(policy), Ok(plan)) => Some((
                serde_json::from_str::<LandlockPolicy>(&policy)
                    .map_err(|e| format!("{POLICY_ENV}: {e}"))?,
                serde_json::from_str::<LandlockPlan>(&plan)
                    .map_err(|e| format!("{PLAN_ENV}: {e}"))?,
            )),
            (Err(_), Err(_)) => None,
            _ => return Err(format!("{POLICY_ENV} and {PLAN_ENV} come together")),
        };
        let seccomp = std::env::var(SECCOMP_ENV)
            .map_err(|_| format!("{SECCOMP_ENV} is not set"))
            .and_then(|json| {
                serde_json::from_str::<oci_spec::runtime::LinuxSeccomp>(&json)
                    .map_err(|e| format!("{SECCOMP_ENV}: {e}"))
            })
            .and_then(|profile| {
                crate::native::seccomp::compile(&profile).map_err(|e| e.to_string())
            })?;
        let program = argv.first().ok_or("nothing to run")?;
        let env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != POLICY_ENV && k != PLAN_ENV && k != SECCOMP_ENV)
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(|_| "a NUL byte in the environment".to_string())
            })
            .collect::<Result<_, _>>()?;
        let path = find_on_path(program)?;
        if let Some((policy, plan)) = &landlock {
            apply(policy, *plan).map_err(|e| format!("{}: {}", e.step, e.detail))?;
        }
        crate::native::seccomp::load(&seccomp).map_err(|e| e.to_string())?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| {
                CString::new(a.as_bytes()).map_err(|_| format!("a NUL byte in argument {a:?}"))
            })
            .collect::<Result<_, _>>()?;
        let e = nix::unistd::execve(&path, &args, &env).unwrap_err();
        Err(format!("exec {program}: {e}"))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn find_on_path(program: &str) -> Result<CString, String> {
    if program.contains('/') {
        return CString::new(program).map_err(|_| "a NUL byte in the program name".to_string());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return CString::new(candidate.as_os_str().as_bytes())
                .map_err(|_| "a NUL byte in PATH".to_string());
        }
    }
    Err(format!("exec {program}: not found on PATH {path}"))
}
