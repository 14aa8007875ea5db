//! The gateway's TCP connections: each accepted connection's first bytes held until they
//! name the host (and, on plain HTTP, every request's head until it is checked), an
//! upstream socket of the supervisor's own namespace, and the bytes between the two.

use super::*;

impl State {
    pub(super) fn service_connections(&mut self) {
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            let outcome = self.service(handle);
            match outcome {
                Step::Keep => {}
                Step::Refuse(why) => {
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                    self.finish(handle, Some(why));
                }
                Step::Done => self.finish(handle, None),
            }
        }
    }

    /// Records every connection still open (the run ended, or the gateway failed).
    pub(super) fn finish_all(&mut self) {
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for handle in handles {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.finish(handle, None);
        }
    }

    /// Removes a connection and records it.
    fn finish(&mut self, handle: SocketHandle, refused: Option<Refusal>) {
        let Some(mut conn) = self.conns.remove(&handle) else {
            return;
        };
        self.tuples.remove(&conn.tuple);
        self.large_in_use -= usize::from(conn.large);
        // The socket is removed once the reset or final FIN has gone out.
        self.iface
            .poll(SmolInstant::now(), &mut self.device, &mut self.sockets);
        self.sockets.remove(handle);
        if let Some(mut up) = conn.upstream.take() {
            self.tokens.remove(&up.token);
            let _ = self.poll.registry().deregister(&mut up.stream);
            // Ended any other way than both sides closing: reset, so that the upstream
            // socket (the host's) is not left in TIME_WAIT.
            if !(up.eof && up.shut_write) {
                reset(&up.stream);
            }
        }
        conn.s
            .record_end(&mut self.core, conn.upstream.is_some(), refused);
    }

    fn connect_upstream(registry: &Registry, conn: &mut Conn, token: Token) -> Result<(), Refusal> {
        let mut stream = TcpStream::connect(SocketAddr::V4(conn.s.target.upstream))
            .map_err(|e| Refusal::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| Refusal::Connect(e.to_string()))?;
        conn.upstream = Some(Upstream {
            stream,
            token,
            connected: false,
            readable: false,
            writable: true,
            eof: false,
            shut_write: false,
        });
        Ok(())
    }

    /// One step of one connection: decide its first bytes, connect, move bytes both ways,
    /// pass on half-closes.
    fn service(&mut self, handle: SocketHandle) -> Step {
        let limits = self.core.limits;
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let conn = self
            .conns
            .get_mut(&handle)
            .expect("serviced connections exist");
        let state = socket.state();
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            return Step::Done;
        }
        if state == tcp::State::Listen || state == tcp::State::SynReceived {
            if conn.s.opened.elapsed() > limits.first_bytes_timeout {
                return Step::Refuse(Refusal::FirstBytes("the handshake did not complete"));
            }
            return Step::Keep;
        }
        // The first bytes: held, bounded, until they name the host.
        if conn.s.verdict.is_none() {
            while socket.can_recv() && conn.s.held.len() < MAX_FIRST_BYTES {
                let room = MAX_FIRST_BYTES - conn.s.held.len();
                let _ = socket.recv(|b| {
                    let n = b.len().min(room);
                    conn.s.held.extend_from_slice(&b[..n]);
                    (n, ())
                });
            }
            match decide_first_bytes(&conn.s.target, &conn.s.held, socket.may_recv()) {
                FirstBytes::Wait => {}
                FirstBytes::Allowed { requests } => {
                    conn.s.verdict = Some(true);
                    conn.s.requests = requests;
                }
                FirstBytes::Refused(why) => return Step::Refuse(why),
            }
            if conn.s.verdict.is_none()
                && first_bytes_late(
                    conn.s.opened,
                    &limits,
                    &conn.s.held,
                    conn.upstream.is_some(),
                )
            {
                return Step::Refuse(Refusal::FirstBytes("not complete in time"));
            }
        }
        let server_first =
            conn.s.held.is_empty() && conn.s.opened.elapsed() >= limits.server_first_wait;
        if conn.upstream.is_none() && (conn.s.verdict == Some(true) || server_first) {
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(why) = Self::connect_upstream(self.poll.registry(), conn, token) {
                return Step::Refuse(why);
            }
            self.tokens.insert(token, handle);
        }
        let Some(up) = conn.upstream.as_mut() else {
            return Step::Keep;
        };
        if !up.connected {
            if !up.writable {
                return Step::Keep;
            }
            match up.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Step::Refuse(Refusal::Connect(e.to_string())),
                Ok(None) => {}
            }
            match up.stream.peer_addr() {
                Ok(_) => up.connected = true,
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    up.writable = false;
                    return Step::Keep;
                }
                Err(e) => return Step::Refuse(Refusal::Connect(e.to_string())),
            }
        }
        // Sandbox to upstream, only once the first bytes are decided.
        if conn.s.verdict == Some(true) && up.writable && conn.s.requests.is_some() {
            if let Err(step) = forward_requests(socket, conn) {
                return step;
            }
        } else if conn.s.verdict == Some(true) && up.writable {
            while !conn.s.held.is_empty() {
                match up.stream.write(&conn.s.held) {
                    Ok(n) => {
                        conn.s.bytes_out += n as u64;
                        conn.s.held.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        up.writable = false;
                        break;
                    }
                    Err(_) => {
                        socket.abort();
                        return Step::Done;
                    }
                }
            }
            if conn.s.held.is_empty() {
                conn.s.held = Vec::new();
                while up.writable && socket.can_recv() {
                    let r = socket.recv(|b| match up.stream.write(b) {
                        Ok(n) => (n, Ok(n)),
                        Err(e) => (0, Err(e)),
                    });
                    match r {
                        Ok(Ok(n)) => conn.s.bytes_out += n as u64,
                        Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => up.writable = false,
                        _ => {
                            socket.abort();
                            return Step::Done;
                        }
                    }
                }
                if !socket.may_recv() && !socket.can_recv() && !up.shut_write {
                    let _ = up.stream.shutdown(Shutdown::Write);
                    up.shut_write = true;
                    conn.s.closed_first |= !up.eof;
                }
            }
        }
        let up = conn.upstream.as_mut().expect("connected above");
        // Upstream to sandbox.
        while up.readable && !up.eof && socket.can_send() {
            let r = socket.send(|b| match up.stream.read(b) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => up.eof = true,
                Ok(Ok(n)) => conn.s.bytes_in += n as u64,
                Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => up.readable = false,
                Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                _ => {
                    socket.abort();
                    return Step::Done;
                }
            }
        }
        if up.eof && !conn.closing {
            socket.close();
            conn.closing = true;
        }
        if up.eof && up.shut_write && socket.send_queue() == 0 && !socket.is_open() {
            return Step::Done;
        }
        Step::Keep
    }
}

enum Step {
    Keep,
    Refuse(Refusal),
    Done,
}

/// Sandbox to upstream on a plain HTTP connection: the sandbox's bytes are held (at most
/// [`MAX_FIRST_BYTES`] not yet cleared) until [`Requests`] clears them, so every request
/// head is checked before a byte of it goes upstream. An incomplete head left when the
/// sandbox stops sending never goes.
fn forward_requests(socket: &mut tcp::Socket, conn: &mut Conn) -> Result<(), Step> {
    let Some(requests) = conn.s.requests.as_mut() else {
        return Ok(());
    };
    let Some(up) = conn.upstream.as_mut() else {
        return Ok(());
    };
    loop {
        if conn.s.cleared < conn.s.held.len() {
            let target = &conn.s.target;
            let n = requests
                .clear(&conn.s.held[conn.s.cleared..], |s| {
                    check_first_bytes(target, s)
                })
                .map_err(Step::Refuse)?;
            conn.s.cleared += n;
        }
        while conn.s.cleared > 0 && up.writable {
            match up.stream.write(&conn.s.held[..conn.s.cleared]) {
                Ok(n) => {
                    conn.s.bytes_out += n as u64;
                    conn.s.held.drain(..n);
                    conn.s.cleared -= n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => up.writable = false,
                Err(_) => {
                    socket.abort();
                    return Err(Step::Done);
                }
            }
        }
        if conn.s.cleared > 0 || conn.s.held.len() >= MAX_FIRST_BYTES || !socket.can_recv() {
            break;
        }
        let room = MAX_FIRST_BYTES - conn.s.held.len();
        let held = &mut conn.s.held;
        let _ = socket.recv(|b| {
            let n = b.len().min(room);
            held.extend_from_slice(&b[..n]);
            (n, ())
        });
    }
    if conn.s.held.is_empty() {
        // An idle kept-open connection holds no buffer.
        conn.s.held = Vec::new();
    }
    if !socket.may_recv() && !socket.can_recv() && conn.s.cleared == 0 && !up.shut_write {
        let _ = up.stream.shutdown(Shutdown::Write);
        up.shut_write = true;
        conn.s.closed_first |= !up.eof;
    }
    Ok(())
}
