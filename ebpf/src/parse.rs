//! Header layouts and the IPv4 TCP/UDP parser shared by both programs.
//!
//! Every read is preceded by a bounds check against the end of the packet, which is what the
//! verifier needs to see. Multi-byte fields are read as 16-bit words in network byte order:
//! packet data starts 2-byte aligned (every driver and `BPF_PROG_TEST_RUN` give at least
//! that), so IPv4 and TCP/UDP fields behind a 14-byte Ethernet header are 2-byte aligned, and
//! word loads halve the instructions byte loads take on the per-packet path.
use tether_common::{Counter, Protocol};

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
/// Where the transport header starts: tether only steers IPv4 without options.
pub const L4_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
pub const TCP_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
/// Offset of the checksum in the TCP header.
pub const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum in the UDP header.
pub const UDP_CSUM_OFFSET: usize = 6;

/// The IPv4 ethertype as the 16-bit word loaded from the packet.
const ETH_P_IPV4: u16 = u16::from_ne_bytes([0x08, 0x00]);
/// More-fragments flag and fragment offset bits of the IPv4 flags/fragment field (host order).
pub const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// The fixed 20 bytes of an IPv4 header; `u16` fields hold network-order bytes.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub flags_frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: [u16; 2],
    pub dst: [u16; 2],
}

/// The first four bytes of a TCP or UDP header, network-order bytes.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// A parsed IPv4 TCP or UDP packet. The pointers are inside the packet, checked.
pub struct Packet {
    /// Start of the frame: the Ethernet header.
    pub eth: usize,
    pub ip: *mut Ipv4Hdr,
    /// Start of the transport header; at least [`TCP_HDR_LEN`] (TCP) or [`UDP_HDR_LEN`] (UDP)
    /// bytes of it are inside the packet.
    pub l4: usize,
    /// End of the packet, for re-checking bounds where the verifier needs it.
    pub end: usize,
    pub protocol: u8,
    /// TCP flags byte, 0 for UDP.
    pub tcp_flags: u8,
    /// IPv4 total length (host order): the bytes counted per packet.
    pub total_len: u16,
}

impl Packet {
    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.protocol == Protocol::TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub fn ports(&self) -> *mut Ports {
        self.l4 as *mut Ports
    }

    /// The transport checksum, or `None` for a UDP datagram sent without one (a zero checksum).
    #[inline(always)]
    pub fn l4_csum(&self) -> Option<*mut u16> {
        // One constant-offset bounds check per protocol, for the verifier.
        let check = if self.protocol == Protocol::TCP {
            ptr_at::<u16>(self.l4, self.end, TCP_CSUM_OFFSET)?
        } else {
            ptr_at::<u16>(self.l4, self.end, UDP_CSUM_OFFSET)?
        };
        // SAFETY: ptr_at checked the two bytes are inside the packet.
        if self.protocol == Protocol::UDP && unsafe { *check } == 0 {
            return None;
        }
        Some(check)
    }
}

/// Why a packet is not steered: the [`Counter`] it is counted under.
#[derive(Clone, Copy)]
pub struct Skip(pub u32);

impl Skip {
    /// Truncated and garbage packets are dropped (the stack would drop them too); the others
    /// are well-formed traffic tether does not steer, and pass.
    #[inline(always)]
    pub fn drops(self) -> bool {
        self.0 == Counter::TRUNCATED || self.0 == Counter::GARBAGE
    }
}

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is
/// too short.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parses Ethernet / IPv4 (no options, not a fragment) / TCP or UDP between `start` and `end`.
/// `len` is the whole frame's length: `end - start` in XDP, but more in TC, where the payload
/// of an skb may sit in fragments past `end`.
#[inline(always)]
pub fn parse(start: usize, end: usize, len: usize) -> Result<Packet, Skip> {
    let ether_type = ptr_at::<u16>(start, end, 12).ok_or(Skip(Counter::TRUNCATED))?;
    // SAFETY: ptr_at checked the bytes are inside the packet (so for every read below).
    if unsafe { *ether_type } != ETH_P_IPV4 {
        return Err(Skip(Counter::NOT_IPV4));
    }
    let ip = ptr_at::<Ipv4Hdr>(start, end, ETH_HDR_LEN).ok_or(Skip(Counter::TRUNCATED))?;
    // SAFETY: as above.
    let (version_ihl, total_len, flags_frag, protocol) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).total_len),
            u16::from_be((*ip).flags_frag),
            (*ip).protocol,
        )
    };
    // The common case in one compare: version 4, a 20-byte header.
    if version_ihl != 0x45 {
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || ihl < IPV4_HDR_LEN || usize::from(total_len) < ihl {
            return Err(Skip(Counter::GARBAGE));
        }
        return Err(Skip(if flags_frag & IPV4_FRAGMENT_BITS != 0 {
            Counter::FRAGMENTED
        } else {
            Counter::IP_OPTIONS
        }));
    }
    if usize::from(total_len) < IPV4_HDR_LEN {
        return Err(Skip(Counter::GARBAGE));
    }
    if flags_frag & IPV4_FRAGMENT_BITS != 0 {
        return Err(Skip(Counter::FRAGMENTED));
    }
    // Constant-size checks per protocol, before any check involving the total length:
    // LLVM would otherwise derive the header check from the total-length one and drop it, and
    // the verifier only tracks packet ranges through constant offsets.
    let tcp_flags = match protocol {
        Protocol::TCP => {
            let header = ptr_at::<[u8; TCP_HDR_LEN]>(start, end, L4_OFFSET)
                .ok_or(Skip(Counter::TRUNCATED))?;
            // SAFETY: as above.
            let (data_offset, flags) = unsafe { ((*header)[12] >> 4, (*header)[13]) };
            if data_offset < 5 {
                return Err(Skip(Counter::GARBAGE));
            }
            flags
        }
        Protocol::UDP => {
            ptr_at::<[u8; UDP_HDR_LEN]>(start, end, L4_OFFSET).ok_or(Skip(Counter::TRUNCATED))?;
            0
        }
        _ => return Err(Skip(Counter::NOT_TCP_UDP)),
    };
    // The datagram (not just the frame, which may carry Ethernet padding) must hold the
    // transport header, and the frame the whole datagram.
    let l4_len = if protocol == Protocol::TCP {
        TCP_HDR_LEN
    } else {
        UDP_HDR_LEN
    };
    if usize::from(total_len) < IPV4_HDR_LEN + l4_len || ETH_HDR_LEN + usize::from(total_len) > len
    {
        return Err(Skip(Counter::TRUNCATED));
    }
    Ok(Packet {
        eth: start,
        ip,
        l4: start + L4_OFFSET,
        end,
        protocol,
        tcp_flags,
        total_len,
    })
}
