//! Ethernet + IPv4 frames built byte by byte, checksums filled in: what the kernel programs'
//! tests and the L4 bench's per-packet cost runs feed `BPF_PROG_TEST_RUN`.
//!
//! Every frame goes from MAC 02:00:00:00:00:01 to 02:00:00:00:00:02, IPv4 id 1, don't fragment,
//! TTL 64; TCP segments have sequence number 0x12345678, no options and window 64240.

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
/// Where the transport header starts in a frame without IPv4 options.
pub const L4: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
/// IP protocol numbers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// TCP flags.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH_ACK: u8 = 0x18;

/// The internet checksum (RFC 1071) of `parts`, concatenated.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 (with `options`, a multiple of 4 bytes) around the transport segment `l4`,
/// checksums filled in (the TCP or UDP one over the pseudo-header too).
pub fn ipv4_frame_with(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    let ip_len = IPV4_HDR_LEN + options.len();
    let mut frame = Vec::with_capacity(ETH_HDR_LEN + ip_len + l4.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4

    let total_len = (ip_len + l4.len()) as u16;
    let mut ip = vec![0u8; ip_len];
    ip[0] = 0x40 | (ip_len / 4) as u8;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&1u16.to_be_bytes()); // id
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64; // ttl
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    ip[20..].copy_from_slice(options);
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    frame.extend_from_slice(&ip);

    let mut segment = l4.to_vec();
    let sum_at = match protocol {
        TCP => Some(16),
        UDP => Some(6),
        _ => None,
    };
    if let Some(at) = sum_at.filter(|at| segment.len() >= at + 2) {
        let pseudo = [
            &src[..],
            &dst[..],
            &[0, protocol],
            &(l4.len() as u16).to_be_bytes(),
        ]
        .concat();
        segment[at..at + 2].copy_from_slice(&[0, 0]);
        let l4_sum = checksum(&[&pseudo, &segment]);
        segment[at..at + 2].copy_from_slice(&l4_sum.to_be_bytes());
    }
    frame.extend_from_slice(&segment);
    frame
}

/// [`ipv4_frame_with`] without IPv4 options.
pub fn ipv4_frame(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_frame_with(src, dst, protocol, &[], l4)
}

/// A frame carrying a TCP segment with `flags` and `payload`.
pub fn tcp(
    src: [u8; 4],
    src_port: u16,
    dst: [u8; 4],
    dst_port: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[0..2].copy_from_slice(&src_port.to_be_bytes());
    segment[2..4].copy_from_slice(&dst_port.to_be_bytes());
    segment[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence number
    segment[12] = 5 << 4; // data offset: 5 words
    segment[13] = flags;
    segment[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
    segment.extend_from_slice(payload);
    ipv4_frame(src, dst, TCP, &segment)
}

/// `frame` (no IPv4 options) with another TTL and the IPv4 checksum to match.
pub fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_HDR_LEN + 8] = ttl;
    out[ETH_HDR_LEN + 10..ETH_HDR_LEN + 12].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&out[ETH_HDR_LEN..L4]]);
    out[ETH_HDR_LEN + 10..ETH_HDR_LEN + 12].copy_from_slice(&sum.to_be_bytes());
    out
}

/// Whether the IPv4 header checksum and the TCP/UDP checksum over the pseudo-header verify.
pub fn checksums_verify(frame: &[u8]) -> bool {
    let ip = &frame[ETH_HDR_LEN..L4];
    let segment = &frame[L4..];
    let pseudo = [
        &frame[ETH_HDR_LEN + 12..ETH_HDR_LEN + 16],
        &frame[ETH_HDR_LEN + 16..L4],
        &[0, frame[ETH_HDR_LEN + 9]],
        &(segment.len() as u16).to_be_bytes(),
    ]
    .concat();
    checksum(&[ip]) == 0 && checksum(&[&pseudo, segment]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify() {
        let frame = tcp([10, 0, 0, 1], 1234, [10, 0, 0, 2], 80, PSH_ACK, b"x");
        assert!(checksums_verify(&frame));
        assert!(checksums_verify(&with_ttl(&frame, 255)));
        assert_eq!(with_ttl(&frame, 255)[ETH_HDR_LEN + 8], 255);
        let mut broken = frame.clone();
        broken[L4 + 20] ^= 1;
        assert!(!checksums_verify(&broken));
    }
}
