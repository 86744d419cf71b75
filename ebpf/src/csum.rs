//! Incremental internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Words are 16-bit loads and stores of packet bytes in native byte order: the one's
//! complement sum is byte-order independent (RFC 1071 §2(B)), so no swapping is needed as long
//! as loads and stores agree.

#[inline(always)]
fn finish(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// `~HC + ~m + m'` for a 4-byte field.
#[inline(always)]
fn address_delta(check: u16, from: [u16; 2], to: [u16; 2]) -> u32 {
    u32::from(!check)
        + u32::from(!from[0])
        + u32::from(!from[1])
        + u32::from(to[0])
        + u32::from(to[1])
}

/// The checksum after a 4-byte field (an address) changed from `from` to `to`.
#[inline(always)]
pub fn replace4(check: u16, from: [u16; 2], to: [u16; 2]) -> u16 {
    finish(address_delta(check, from, to))
}

/// The checksum after an address and a port changed: a TCP or UDP checksum, whose
/// pseudo-header covers the address.
#[inline(always)]
pub fn replace4_2(check: u16, from: [u16; 2], to: [u16; 2], from_port: u16, to_port: u16) -> u16 {
    finish(address_delta(check, from, to) + u32::from(!from_port) + u32::from(to_port))
}

/// The checksum after a 2-byte field changed from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    finish(u32::from(!check) + u32::from(!from) + u32::from(to))
}
