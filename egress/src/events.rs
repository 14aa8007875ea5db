//! What the gateway decided, for the audit log and the run report. Events are kept in a
//! bounded log (past the bound only the totals grow) and handed over in one batch, so a
//! chatty build cannot flood the store.

use serde::{Deserialize, Serialize};

/// The most events one run keeps; past this only the totals count.
pub const MAX_EVENTS: usize = 4096;
/// The most refusals the run report lists.
pub const MAX_REPORTED_REFUSALS: usize = 100;
/// The most bytes of one text field of an event: names, SNI and Host values come from the
/// sandbox, and every kept event goes to the audit log.
pub const MAX_FIELD_BYTES: usize = 300;

/// `text` cut to [`MAX_FIELD_BYTES`] (on a character boundary, marked with `...`), with
/// control characters replaced, so that one event stays small in the audit log.
fn bounded(text: String) -> String {
    let clean = |t: &str| -> String {
        t.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    };
    if text.len() <= MAX_FIELD_BYTES && !text.chars().any(char::is_control) {
        return text;
    }
    let mut end = text.len().min(MAX_FIELD_BYTES - 3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = clean(&text[..end]);
    if end < text.len() {
        out.push_str("...");
    }
    // A replaced character may be wider than what it replaced.
    while out.len() > MAX_FIELD_BYTES {
        out.pop();
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Refused,
}

impl Verdict {
    /// `Refused` when `refused`, else `Allowed`.
    pub fn refused_if(refused: bool) -> Verdict {
        if refused {
            Verdict::Refused
        } else {
            Verdict::Allowed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A TCP connection.
    Connect,
    /// A DNS query.
    Query,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEvent {
    pub kind: EventKind,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The real (upstream) address, or the address the sandbox asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Bytes from the sandbox upstream.
    #[serde(default)]
    pub bytes_out: u64,
    /// Bytes from upstream to the sandbox.
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Packets dropped before any decision, by what they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub udp: u64,
    /// UDP to port 443 (QUIC): clients fall back to TCP.
    pub quic: u64,
    pub icmp: u64,
    pub ipv6: u64,
    /// Fragments, spoofed sources, other protocols, malformed packets.
    pub other: u64,
}

/// The gateway's totals and events for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressReport {
    pub connections_allowed: u64,
    pub connections_refused: u64,
    pub queries_answered: u64,
    pub queries_refused: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub dropped: Dropped,
    /// The most connections open at once.
    pub peak_connections: u64,
    /// The first refusals, for the report.
    pub refused: Vec<EgressEvent>,
    /// Every event kept, in order.
    pub events: Vec<EgressEvent>,
    /// Events past [`MAX_EVENTS`], counted only.
    pub events_dropped: u64,
    /// Set when the gateway stopped before the run ended (the sandbox lost its network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl EgressReport {
    /// Records one event into the totals and the bounded lists.
    pub fn record(&mut self, mut event: EgressEvent) {
        event.name = event.name.map(bounded);
        event.address = event.address.map(bounded);
        event.reason = event.reason.map(bounded);
        match (event.kind, event.verdict) {
            (EventKind::Connect, Verdict::Allowed) => self.connections_allowed += 1,
            (EventKind::Connect, Verdict::Refused) => self.connections_refused += 1,
            (EventKind::Query, Verdict::Allowed) => self.queries_answered += 1,
            (EventKind::Query, Verdict::Refused) => self.queries_refused += 1,
        }
        self.bytes_out += event.bytes_out;
        self.bytes_in += event.bytes_in;
        if event.verdict == Verdict::Refused && self.refused.len() < MAX_REPORTED_REFUSALS {
            self.refused.push(event.clone());
        }
        if self.events.len() < MAX_EVENTS {
            self.events.push(event);
        } else {
            self.events_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_the_sandbox_chose_is_bounded_in_every_event() {
        // A 16 KiB SNI of control characters, refused 4,096 times, went into the audit log
        // whole: some 400 MiB of escaped JSON per run.
        let sni = "\u{1}".repeat(16 * 1024);
        let why = crate::decide::Refusal::SniMismatch { sni: sni.clone() };
        let mut r = EgressReport::default();
        r.record(EgressEvent {
            kind: EventKind::Connect,
            verdict: Verdict::Refused,
            name: Some(format!("é{sni}")),
            address: Some(sni.clone()),
            port: Some(443),
            bytes_out: 0,
            bytes_in: 0,
            reason: Some(why.to_string()),
        });
        for e in [&r.events[0], &r.refused[0]] {
            for field in [&e.name, &e.address, &e.reason] {
                let text = field.as_deref().unwrap();
                assert!(text.len() <= MAX_FIELD_BYTES, "{} bytes", text.len());
                assert!(!text.chars().any(char::is_control), "{text:?}");
            }
            assert!(e.reason.as_deref().unwrap().starts_with("SNI `"));
        }
        // Ordinary text is kept as it is.
        assert_eq!(bounded("api.test".into()), "api.test");
    }

    #[test]
    fn the_log_is_bounded_and_the_totals_are_not() {
        let mut r = EgressReport::default();
        for i in 0..(MAX_EVENTS + 10) {
            r.record(EgressEvent {
                kind: EventKind::Connect,
                verdict: if i % 2 == 0 {
                    Verdict::Allowed
                } else {
                    Verdict::Refused
                },
                name: None,
                address: None,
                port: Some(443),
                bytes_out: 1,
                bytes_in: 2,
                reason: None,
            });
        }
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!(r.events_dropped, 10);
        assert_eq!(r.refused.len(), MAX_REPORTED_REFUSALS);
        assert_eq!(
            r.connections_allowed + r.connections_refused,
            MAX_EVENTS as u64 + 10
        );
        assert_eq!(r.bytes_in, 2 * (MAX_EVENTS as u64 + 10));
    }
}
