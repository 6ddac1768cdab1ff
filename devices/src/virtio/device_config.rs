//! The device configuration space as the driver reads it (virtio 1.2 §2.5, §4.1.4.6).

/// Copies the bytes of `config` from `offset` into `data`. The transport's window is larger than
/// any device's structure and the guest may read anywhere in it: bytes past the end of the
/// structure read as zero.
pub fn read(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).map_or(config.len(), |o| o.min(config.len()));
    let present = &config[start..];
    let n = present.len().min(data.len());
    data[..n].copy_from_slice(&present[..n]);
    data[n..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: [u8; 6] = [1, 2, 3, 4, 5, 6];

    fn read_at(offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xaa; len];
        read(&CONFIG, offset, &mut data);
        data
    }

    #[test]
    fn reads_inside_the_structure() {
        assert_eq!(read_at(0, 6), CONFIG);
        assert_eq!(read_at(2, 2), [3, 4]);
        assert_eq!(read_at(5, 1), [6]);
        assert_eq!(read_at(3, 0), [0u8; 0]);
    }

    #[test]
    fn bytes_past_the_end_read_as_zero() {
        assert_eq!(read_at(4, 4), [5, 6, 0, 0]);
        assert_eq!(read_at(6, 2), [0, 0]);
        assert_eq!(read_at(0x1000, 4), [0; 4]);
        assert_eq!(read_at(u64::MAX, 8), [0; 8]);
    }

    /// The same as reading byte by byte, `offset + i` overflowing included.
    #[test]
    fn matches_a_bytewise_read() {
        let offsets = [0, 1, 5, 6, 7, u64::from(u32::MAX), u64::MAX - 3, u64::MAX];
        for offset in offsets {
            for len in 0..10 {
                let want: Vec<u8> = (0..len as u64)
                    .map(|i| {
                        offset
                            .checked_add(i)
                            .and_then(|o| usize::try_from(o).ok())
                            .and_then(|o| CONFIG.get(o))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                assert_eq!(read_at(offset, len), want, "offset {offset:#x} len {len}");
            }
        }
    }
}
