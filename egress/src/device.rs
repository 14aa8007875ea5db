//! The stack's device: the TUN device of the sandbox's link, every packet framed by a
//! `virtio_net_hdr` ([`crate::link`]). Packets read and checked by the gateway wait in a
//! queue for the stack; packets the stack sends are written straight to the device.

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant as SmolInstant;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The TUN device as the stack's device: packets read (and checked) by the gateway wait in
/// `rx`; packets the stack sends are written straight to the device.
pub(crate) struct TunDevice {
    pub(crate) fd: OwnedFd,
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// Where outgoing packets are built (reused: no allocation or zeroing per packet).
    scratch: Vec<u8>,
    /// Where incoming packets are read (reused likewise; the gateway takes it while it
    /// reads).
    pub(crate) read_buf: Vec<u8>,
}

pub(crate) struct TunRx(Vec<u8>);
pub(crate) struct TunTx<'a>(RawFd, &'a mut Vec<u8>);

impl RxToken for TunRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for TunTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.1.len() < VNET_HDR_LEN + len {
            self.1.resize(VNET_HDR_LEN + len, 0);
        }
        let (hdr, packet) = self.1[..VNET_HDR_LEN + len].split_at_mut(VNET_HDR_LEN);
        let r = f(packet);
        partial_tcp_checksum(hdr, packet);
        write_framed(self.0, &self.1[..VNET_HDR_LEN + len]);
        r
    }
}

/// Writes one packet with its `virtio_net_hdr` already in front; a full device drops it
/// (TCP sends it again).
fn write_framed(fd: RawFd, framed: &[u8]) {
    // SAFETY: writes from a live buffer to the device descriptor.
    unsafe { libc::write(fd, framed.as_ptr().cast(), framed.len()) };
}

/// Writes one packet whose checksums are complete (a zero `virtio_net_hdr` in front).
pub(crate) fn write_packet(fd: RawFd, packet: &[u8]) {
    let mut framed = Vec::with_capacity(VNET_HDR_LEN + packet.len());
    framed.extend_from_slice(&[0; VNET_HDR_LEN]);
    framed.extend_from_slice(packet);
    write_framed(fd, &framed);
}

/// Fills the `virtio_net_hdr` of an outgoing packet: for TCP, "checksum to be completed"
/// from the TCP header on, which the receiving kernel treats as verified (the stack leaves
/// TCP checksums out; the packet is delivered inside the sandbox's namespace and nowhere
/// else). Anything else carries its own checksums.
fn partial_tcp_checksum(hdr: &mut [u8], packet: &[u8]) {
    hdr.fill(0);
    if packet.len() >= 20 && packet[0] >> 4 == 4 && packet[9] == 6 {
        let ihl = (packet[0] & 0x0f) as u16 * 4;
        hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        hdr[6..8].copy_from_slice(&ihl.to_ne_bytes()); // csum_start
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes()); // csum_offset: TCP checksum
    }
}

impl TunDevice {
    pub(crate) fn new(fd: OwnedFd) -> TunDevice {
        TunDevice {
            fd,
            rx: VecDeque::new(),
            scratch: Vec::new(),
            read_buf: vec![0; VNET_HDR_LEN + MTU + 1],
        }
    }

    /// Reads one packet (with its `virtio_net_hdr`) from the device into `buf`.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into a live, writable buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Device for TunDevice {
    type RxToken<'a> = TunRx;
    type TxToken<'a> = TunTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(TunRx, TunTx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((TunRx(packet), TunTx(self.fd.as_raw_fd(), &mut self.scratch)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TunTx<'_>> {
        Some(TunTx(self.fd.as_raw_fd(), &mut self.scratch))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // Incoming TCP checksums are verified; outgoing ones are left to the header (see
        // `partial_tcp_checksum`).
        caps.checksum.tcp = smoltcp::phy::Checksum::Rx;
        caps
    }
}

const MTU: usize = crate::link::LINK_MTU;
pub(crate) const VNET_HDR_LEN: usize = crate::link::VNET_HDR_LEN;
