//! The egress gateway: a sandbox's only way out of its network namespace.
//!
//! The sandbox's namespace holds one device besides `lo`, a TUN device whose other end is
//! this gateway, a userspace TCP/IP stack ([`smoltcp`]) running in the supervising process.
//! Nothing on the host's firewall or routing tables changes: the gateway reaches the
//! outside with ordinary sockets of the supervisor, and when it stops (or its owner dies)
//! the TUN device goes with its last descriptor and the sandbox has no route left.
//!
//! What the gateway lets through, and nothing else:
//! - DNS queries to the gateway's own address, answered for allowed names only, with
//!   addresses from a private pool that stand for (name, upstream address) pairs
//!   ([`names`]); every other name is refused;
//! - TCP connections to such a stand-in address on a port the name allows, whose first
//!   bytes (TLS ClientHello SNI, HTTP Host) name that same name ([`sniff`]); or to an
//!   address inside a granted network.
//!
//! Everything is bounded: connections, buffers, the names answered, pending queries and the
//! event log. Every decision is recorded ([`events`]).

pub mod decide;
mod device;
pub mod dns;
pub mod events;
pub mod gateway;
pub mod link;
pub mod names;
pub mod requests;
pub mod settings;
pub mod sniff;
pub mod steer;

pub use events::{EgressEvent, EgressReport, Verdict};
pub use gateway::{Gateway, GatewayError};
pub use settings::{Settings, SettingsError};
