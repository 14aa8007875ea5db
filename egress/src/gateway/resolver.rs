//! The gateway's DNS: queries from the sandbox answered for allowed names only, with a
//! stand-in address per (name, upstream address) pair, from the upstream resolver's
//! answers; everything else refused, and every query recorded.

use super::*;

impl Core {
    /// Queues an answer for the data path to send.
    fn reply_udp(&mut self, client: SocketAddrV4, payload: &[u8]) {
        self.answers.push((client, payload.to_vec()));
    }

    fn query_event(
        &self,
        name: Option<String>,
        refused: Option<&Refusal>,
        address: Option<String>,
    ) {
        self.record(EgressEvent {
            kind: EventKind::Query,
            verdict: Verdict::refused_if(refused.is_some()),
            name,
            address,
            port: Some(53),
            bytes_out: 0,
            bytes_in: 0,
            reason: refused.map(|r| r.to_string()),
        });
    }

    pub(super) fn handle_query(&mut self, client: SocketAddrV4, payload: &[u8]) {
        match dns::handle_query(payload, &self.rules) {
            QueryAction::Drop => self.drop_packet(|d| d.udp += 1),
            QueryAction::Reply {
                bytes,
                name,
                refused,
            } => {
                self.reply_udp(client, &bytes);
                if refused.is_some() {
                    self.query_event(name, refused.as_ref(), None);
                }
            }
            QueryAction::Forward(question) => {
                let refuse = if self.pending.len() >= self.limits.max_pending_queries {
                    Some((
                        ResponseCode::ServFail,
                        Refusal::Upstream("too many queries waiting".into()),
                    ))
                } else if !self.forwarded.contains(&question.name)
                    && self.forwarded.len() >= self.limits.max_forwarded_names
                {
                    Some((ResponseCode::Refused, Refusal::TooManyNames))
                } else {
                    None
                };
                if let Some((code, why)) = refuse {
                    self.reply_udp(client, &dns::error_answer(&question, code));
                    return self.query_event(Some(question.name), Some(&why), None);
                }
                self.forwarded.insert(question.name.clone());
                let id = self.next_query_id();
                let query = dns::upstream_query(id, &question.name);
                if let Err(e) = self.resolver.send(&query) {
                    self.reply_udp(
                        client,
                        &dns::error_answer(&question, ResponseCode::ServFail),
                    );
                    return self.query_event(
                        Some(question.name),
                        Some(&Refusal::Upstream(e.to_string())),
                        None,
                    );
                }
                self.pending.insert(
                    id,
                    Pending {
                        question,
                        client,
                        deadline: Instant::now() + self.limits.query_timeout,
                    },
                );
            }
        }
    }

    fn next_query_id(&mut self) -> u16 {
        loop {
            self.query_count += 1;
            let mixed = (self.query_seed ^ self.query_count.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .rotate_left((self.query_count % 61) as u32);
            let id = (mixed ^ (mixed >> 16) ^ (mixed >> 32)) as u16;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn read_resolver(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let n = match self.resolver.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => return,
            };
            if n < 2 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            self.answer_from_upstream(p, id, &buf[..n]);
        }
    }

    fn answer_from_upstream(&mut self, p: Pending, id: u16, bytes: &[u8]) {
        let name = p.question.name.clone();
        let addresses = match dns::upstream_addresses(bytes, id, &name) {
            Ok(a) => a,
            Err(why) => {
                let code = match &why {
                    Refusal::Upstream(t) if t == dns::NXDOMAIN => ResponseCode::NXDomain,
                    _ => ResponseCode::ServFail,
                };
                self.reply_udp(p.client, &dns::error_answer(&p.question, code));
                return self.query_event(Some(name), Some(&why), None);
            }
        };
        let mut standins = Vec::new();
        let mut refusal = None;
        for ip in &addresses {
            if let Err(why) = upstream_reachable(*ip, None, &self.rules, &self.settings) {
                // Rebinding: an allowed name may not lead to a range never reached.
                self.query_event(Some(name.clone()), Some(&why), Some(ip.to_string()));
                refusal = Some(why);
                continue;
            }
            match self.names.standin_for(&name, *ip) {
                Some(s) => standins.push(s),
                None => refusal = Some(Refusal::TooManyNames),
            }
        }
        if standins.is_empty() && !addresses.is_empty() {
            self.reply_udp(
                p.client,
                &dns::error_answer(&p.question, ResponseCode::Refused),
            );
            if let Some(Refusal::TooManyNames) = refusal {
                self.query_event(Some(name), Some(&Refusal::TooManyNames), None);
            }
            return;
        }
        self.reply_udp(p.client, &dns::answer(&p.question, &standins));
        let answered: Vec<String> = addresses
            .iter()
            .filter(|ip| upstream_reachable(**ip, None, &self.rules, &self.settings).is_ok())
            .map(|ip| ip.to_string())
            .collect();
        self.query_event(Some(name), None, Some(answered.join(",")));
    }

    pub(super) fn expire_queries(&mut self) {
        let now = Instant::now();
        let expired: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.reply_udp(
                    p.client,
                    &dns::error_answer(&p.question, ResponseCode::ServFail),
                );
                self.query_event(
                    Some(p.question.name),
                    Some(&Refusal::Upstream("no answer in time".into())),
                    None,
                );
            }
        }
    }
}
