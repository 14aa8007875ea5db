//! `covenant-ctl run` through `covenantd`: the same request, streamed output, forwarded
//! stdin and signals, and the same exit codes as an embedded run.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use covenant_policy::{compile_request, requested_scopes, Manifest, Subject};
use covenant_supervisor::authority;
use covenant_supervisor::daemon::api::{OutputLine, StdinMode, Stream, SubmitRequest};
use covenant_supervisor::daemon::client::Client;
use covenant_supervisor::home::new_job_id;
use covenant_supervisor::run::EXIT_SETUP;
use std::io::Write;

/// Which side runs the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon when its socket answers, else this process.
    Auto,
    Embedded,
    Daemon,
}

/// The daemon to use for this run, if any.
pub fn daemon_for(mode: Mode) -> anyhow::Result<Option<Client>> {
    let client = Client::new(&covenant_supervisor::daemon::client::default_socket());
    match mode {
        Mode::Embedded => Ok(None),
        Mode::Auto => Ok((client.socket.exists() && client.answers()).then_some(client)),
        Mode::Daemon => {
            if client.answers() {
                Ok(Some(client))
            } else {
                bail!(
                    "--daemon: no covenantd answers at {} (set COVENANT_SOCKET, or use --embedded)",
                    client.socket.display()
                )
            }
        }
    }
}

/// The capability to present: the one given, or one the local operator key signs for
/// exactly this request (the daemon accepts it only if it trusts that key).
fn capability(manifest: &Manifest, cap: Option<&str>) -> anyhow::Result<String> {
    if let Some(arg) = cap {
        return Ok(authority::load_capability(arg)?.print());
    }
    let request = compile_request(manifest, &new_job_id())?;
    let operator = covenant_supervisor::keys::operator_key()?;
    let token = authority::grant(
        &operator,
        Subject::Name("operator".into()),
        &requested_scopes(&request),
        authority::OPERATOR_GRANT_TTL,
    )?;
    Ok(token.print())
}

/// Submits, streams and waits; returns the job's final status as JSON.
pub fn run(
    client: &Client,
    manifest: &Manifest,
    cap: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let request = SubmitRequest {
        manifest: Some(serde_json::to_value(manifest)?),
        manifest_toml: None,
        base_dir: Some(manifest.base_dir.clone()),
        capability: capability(manifest, cap)?,
        argv: None,
        runner: None,
        stdin: StdinMode::Pipe,
    };
    let body = serde_json::to_value(&request)?;
    let mut answer = client.request("POST", "/v1/jobs", Some(&body))?;
    let mut told = false;
    // A full queue or quota is a wait, not a failure: retry as the daemon advises.
    while answer.status == 429 {
        let after = answer.json()["retry_after_s"]
            .as_u64()
            .unwrap_or(1)
            .clamp(1, 60);
        if !told {
            eprintln!("covenant: {}; retrying", answer.error_text());
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_secs(after));
        answer = client.request("POST", "/v1/jobs", Some(&body))?;
    }
    if answer.status != 201 {
        bail!(
            "covenantd refused the run ({}): {}",
            answer.status,
            answer.error_text()
        );
    }
    let id = answer.json()["id"]
        .as_str()
        .context("covenantd answered without a job id")?
        .to_string();
    forward_signals(client, &id)?;
    {
        let (client, id) = (client.clone(), id.clone());
        std::thread::spawn(move || {
            let _ = client.stream_body(&format!("/v1/jobs/{id}/stdin"), std::io::stdin());
        });
    }
    let mut end = None;
    let mut unreadable = None;
    let streamed = client.lines(&format!("/v1/jobs/{id}/output?follow=true"), |line| {
        match serde_json::from_slice::<OutputLine>(line) {
            Ok(OutputLine::Data { stream, data, .. }) => {
                let bytes = match STANDARD.decode(data) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        unreadable = Some(format!("output data is not base64: {e}"));
                        return false;
                    }
                };
                let _ = match stream {
                    Stream::Stdout => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&bytes).and_then(|()| out.flush())
                    }
                    Stream::Stderr => std::io::stderr().write_all(&bytes),
                };
                true
            }
            Ok(OutputLine::End { .. }) => {
                end = Some(());
                false
            }
            Err(e) => {
                unreadable = Some(format!("an output line is not one the API defines: {e}"));
                false
            }
        }
    })?;
    if let Some(why) = unreadable {
        bail!("job {id}: {why}");
    }
    if streamed.status != 200 {
        bail!(
            "job {id}: output: {}",
            String::from_utf8_lossy(&streamed.body)
        );
    }
    let status = client.request("GET", &format!("/v1/jobs/{id}?wait=3600"), None)?;
    if status.status != 200 {
        bail!("job {id}: {}", status.error_text());
    }
    let _ = end;
    Ok(status.json())
}

/// The exit code a final job status stands for.
pub fn exit_code(status: &serde_json::Value) -> i32 {
    status["exit_code"]
        .as_i64()
        .map(|c| c as i32)
        .unwrap_or(EXIT_SETUP)
}

/// SIGINT, SIGTERM and SIGHUP to this process are sent on to the job.
fn forward_signals(client: &Client, id: &str) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    let (client, id) = (client.clone(), id.to_string());
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        let body = serde_json::json!({"signal": (sig as i32).to_string()});
        let _ = client.request("POST", &format!("/v1/jobs/{id}/kill"), Some(&body));
    });
    Ok(())
}
