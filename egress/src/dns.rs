//! The gateway's DNS: one question per query, answered for allowed names only. A queries
//! for an allowed name are resolved upstream and answered with stand-in addresses
//! ([`crate::names`]); other types for an allowed name get an empty answer (so clients use
//! IPv4 and A records), and every other name is refused without a packet leaving. A name
//! longer than [`MAX_QUERY_NAME`] is refused even under an allowed wildcard: long names are
//! how data is tunnelled through DNS.

pub use crate::decide::MAX_QUERY_NAME;
use crate::decide::{Refusal, Rules};
use covenant_policy::egress::normalize_name;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
use std::net::Ipv4Addr;

/// How an upstream "no such name" is reported (and passed on to the client as NXDOMAIN).
pub const NXDOMAIN: &str = "no such name (NXDOMAIN)";
/// TTL of answered stand-ins: they stay valid for the whole run.
pub const ANSWER_TTL: u32 = 300;

/// A client's question, kept to build its answer.
#[derive(Debug, Clone)]
pub struct Question {
    pub id: u16,
    /// Normalised name.
    pub name: String,
    query: Query,
    recursion_desired: bool,
}

/// What to do with a client's query.
#[derive(Debug)]
pub enum QueryAction {
    /// Resolve `question.name` upstream (A).
    Forward(Question),
    /// Answer at once; `refused` says why when the answer is a refusal.
    Reply {
        bytes: Vec<u8>,
        name: Option<String>,
        refused: Option<Refusal>,
    },
    /// Not a DNS query at all: no answer.
    Drop,
}

/// Decides a client's query.
pub fn handle_query(packet: &[u8], rules: &Rules) -> QueryAction {
    let Ok(msg) = Message::from_vec(packet) else {
        return QueryAction::Drop;
    };
    if msg.message_type() != MessageType::Query {
        return QueryAction::Drop;
    }
    let refuse = |code: ResponseCode, name: Option<String>, why: Refusal| {
        let mut reply = Message::error_msg(msg.id(), msg.op_code(), code);
        reply.add_queries(msg.queries().iter().take(1).cloned());
        QueryAction::Reply {
            bytes: reply.to_vec().unwrap_or_default(),
            name,
            refused: Some(why),
        }
    };
    if msg.op_code() != OpCode::Query || msg.queries().len() != 1 {
        return refuse(
            ResponseCode::FormErr,
            None,
            Refusal::MalformedQuery("not one standard question"),
        );
    }
    let query = msg.queries()[0].clone();
    let raw = query.name().to_ascii();
    let raw = raw.strip_suffix('.').unwrap_or(&raw).to_string();
    if raw.len() > MAX_QUERY_NAME {
        return refuse(
            ResponseCode::Refused,
            Some(raw.chars().take(MAX_QUERY_NAME).collect()),
            Refusal::NameTooLong { len: raw.len() },
        );
    }
    let Ok(name) = normalize_name(&raw) else {
        return refuse(
            ResponseCode::Refused,
            Some(raw),
            Refusal::MalformedQuery("not a host name"),
        );
    };
    if !rules.name_allowed(&name) {
        return refuse(ResponseCode::Refused, Some(name), Refusal::NameNotAllowed);
    }
    let question = Question {
        id: msg.id(),
        name,
        query,
        recursion_desired: msg.recursion_desired(),
    };
    match question.query.query_type() {
        RecordType::A => QueryAction::Forward(question),
        _ => QueryAction::Reply {
            bytes: answer(&question, &[]),
            name: Some(question.name.clone()),
            refused: None,
        },
    }
}

/// The query the gateway sends upstream for `name`.
pub fn upstream_query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    if let Ok(n) = Name::from_ascii(format!("{name}.")) {
        msg.add_query(Query::query(n, RecordType::A));
    }
    msg.to_vec().unwrap_or_default()
}

/// The IPv4 addresses of an upstream answer to [`upstream_query`]`(id, name)`.
pub fn upstream_addresses(bytes: &[u8], id: u16, name: &str) -> Result<Vec<Ipv4Addr>, Refusal> {
    let msg =
        Message::from_vec(bytes).map_err(|_| Refusal::Upstream("unreadable answer".into()))?;
    if msg.id() != id || msg.message_type() != MessageType::Response {
        return Err(Refusal::Upstream("answer to another query".into()));
    }
    let asked = msg
        .queries()
        .first()
        .map(|q| q.name().to_ascii().to_ascii_lowercase());
    if asked.as_deref() != Some(&format!("{name}.")) {
        return Err(Refusal::Upstream("answer for another name".into()));
    }
    if msg.response_code() == ResponseCode::NXDomain {
        return Err(Refusal::Upstream(NXDOMAIN.into()));
    }
    if msg.response_code() != ResponseCode::NoError {
        return Err(Refusal::Upstream(msg.response_code().to_string()));
    }
    let mut out: Vec<Ipv4Addr> = msg
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(16);
    Ok(out)
}

/// The answer to `question`: A records for `addresses` (none: an empty answer).
pub fn answer(question: &Question, addresses: &[Ipv4Addr]) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_id(question.id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(question.recursion_desired)
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_query(question.query.clone());
    if question.query.query_type() == RecordType::A {
        for ip in addresses {
            msg.add_answer(Record::from_rdata(
                question.query.name().clone(),
                ANSWER_TTL,
                RData::A(A(*ip)),
            ));
        }
    }
    msg.to_vec().unwrap_or_default()
}

/// An error answer to `question`.
pub fn error_answer(question: &Question, code: ResponseCode) -> Vec<u8> {
    let mut msg = Message::error_msg(question.id, OpCode::Query, code);
    msg.set_recursion_desired(question.recursion_desired)
        .add_query(question.query.clone());
    msg.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_policy::EgressRule;

    fn rules() -> Rules {
        Rules::new(vec![
            EgressRule::parse("api.test").unwrap(),
            EgressRule::parse("*.cdn.test").unwrap(),
        ])
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn code(bytes: &[u8]) -> ResponseCode {
        Message::from_vec(bytes).unwrap().response_code()
    }

    #[test]
    fn allowed_a_queries_are_forwarded_others_refused() {
        match handle_query(&query("API.test.", RecordType::A), &rules()) {
            QueryAction::Forward(q) => assert_eq!(q.name, "api.test"),
            other => panic!("{other:?}"),
        }
        match handle_query(&query("x.cdn.test.", RecordType::AAAA), &rules()) {
            QueryAction::Reply {
                bytes,
                refused: None,
                ..
            } => {
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!(m.response_code(), ResponseCode::NoError);
                assert!(m.answers().is_empty());
            }
            other => panic!("{other:?}"),
        }
        for (name, why) in [
            ("evil.test.", Refusal::NameNotAllowed),
            ("cdn.test.", Refusal::NameNotAllowed),
        ] {
            match handle_query(&query(name, RecordType::A), &rules()) {
                QueryAction::Reply {
                    bytes,
                    refused: Some(r),
                    ..
                } => {
                    assert_eq!(code(&bytes), ResponseCode::Refused);
                    assert_eq!(r, why);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            handle_query(b"\x01\x02", &rules()),
            QueryAction::Drop
        ));
    }

    #[test]
    fn long_names_are_refused_even_under_an_allowed_wildcard() {
        let long = format!("{}.{}.cdn.test.", "a".repeat(63), "b".repeat(63));
        match handle_query(&query(&long, RecordType::A), &rules()) {
            QueryAction::Reply {
                bytes,
                refused: Some(Refusal::NameTooLong { .. }),
                ..
            } => assert_eq!(code(&bytes), ResponseCode::Refused),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_answers_become_stand_in_answers() {
        let q = match handle_query(&query("api.test.", RecordType::A), &rules()) {
            QueryAction::Forward(q) => q,
            other => panic!("{other:?}"),
        };
        let up = upstream_query(99, &q.name);
        let mut resp = Message::from_vec(&up).unwrap();
        resp.set_message_type(MessageType::Response);
        resp.add_answer(Record::from_rdata(
            Name::from_ascii("api.test.").unwrap(),
            60,
            RData::A(A(Ipv4Addr::new(127, 77, 0, 10))),
        ));
        let bytes = resp.to_vec().unwrap();
        assert_eq!(
            upstream_addresses(&bytes, 99, "api.test").unwrap(),
            vec![Ipv4Addr::new(127, 77, 0, 10)]
        );
        assert!(upstream_addresses(&bytes, 98, "api.test").is_err());
        assert!(upstream_addresses(&bytes, 99, "other.test").is_err());
        let reply = answer(&q, &[Ipv4Addr::new(198, 18, 0, 1)]);
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.id(), 7);
        assert_eq!(m.answers().len(), 1);
    }
}
