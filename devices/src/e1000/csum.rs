//! Internet checksum (RFC 1071) helpers and the Ethernet FCS.

/// Adds `data` as big-endian 16-bit words to `sum` (an odd last byte is padded with 0).
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds a sum to 16 bits (ones' complement), not inverted.
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of `data`: the inverted folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// Reads a big-endian u16 at `off`, if in bounds.
pub fn get16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Writes a big-endian u16 at `off`; false if out of bounds.
pub fn put16(b: &mut [u8], off: usize, v: u16) -> bool {
    match b.get_mut(off..off.saturating_add(2)) {
        Some(s) if s.len() == 2 => {
            s.copy_from_slice(&v.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// The IEEE 802.3 frame check sequence of `data` (CRC-32), as transmitted (little-endian).
/// crc32fast uses carry-less multiplication where the CPU has it: a byte-at-a-time table made
/// the FCS three quarters of the cost of receiving a full-size frame (devices/benches/e1000.rs).
pub fn fcs(data: &[u8]) -> [u8; 4] {
    crc32fast::hash(data).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
        assert_eq!(fold(add(0, &[0xab])), 0xab00);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(u32::from_le_bytes(fcs(b"123456789")), 0xcbf4_3926);
    }

    #[test]
    fn get_put_bounds() {
        let mut b = [0u8; 3];
        assert!(put16(&mut b, 1, 0x1234));
        assert_eq!(get16(&b, 1), Some(0x1234));
        assert!(!put16(&mut b, 2, 1));
        assert!(!put16(&mut b, usize::MAX, 1));
        assert_eq!(get16(&b, 2), None);
    }
}
