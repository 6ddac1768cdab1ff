//! A device's side of feature negotiation (virtio 1.2 §2.2).

/// The feature bits a device offers and the subset of them its driver acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSet {
    avail: u64,
    acked: u64,
}

impl FeatureSet {
    /// Offers `avail`; nothing is acknowledged until the driver says so.
    pub fn new(avail: u64) -> Self {
        FeatureSet { avail, acked: 0 }
    }

    /// The offered bits.
    pub fn avail(&self) -> u64 {
        self.avail
    }

    /// The acknowledged bits, always a subset of the offered ones.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Takes the driver's acknowledgement. A driver must not accept a feature that was not
    /// offered (§2.2.1); one that does has those bits dropped, with a debug line for `device`.
    pub fn ack(&mut self, features: u64, device: &str) {
        let unoffered = features & !self.avail;
        if unoffered != 0 {
            log::debug!("{device}: driver acked unoffered features {unoffered:#x}; ignored");
        }
        self.acked = features & self.avail;
    }

    /// Forgets the acknowledgement (device reset: negotiation starts again).
    pub fn reset(&mut self) {
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_acked_at_first() {
        let f = FeatureSet::new(0b1010);
        assert_eq!((f.avail(), f.acked()), (0b1010, 0));
    }

    #[test]
    fn ack_keeps_only_offered_bits() {
        let mut f = FeatureSet::new(0b1010);
        f.ack(0b0010, "test");
        assert_eq!(f.acked(), 0b0010);
        f.ack(u64::MAX, "test");
        assert_eq!(f.acked(), 0b1010);
        f.ack(0b0101, "test");
        assert_eq!(f.acked(), 0);
        assert_eq!(f.avail(), 0b1010);
    }

    #[test]
    fn a_later_ack_replaces_the_earlier_one() {
        let mut f = FeatureSet::new(0b1111);
        f.ack(0b0011, "test");
        f.ack(0b0100, "test");
        assert_eq!(f.acked(), 0b0100);
    }

    #[test]
    fn reset_forgets_the_ack_but_not_the_offer() {
        let mut f = FeatureSet::new(0b1010);
        f.ack(0b1010, "test");
        f.reset();
        assert_eq!(f, FeatureSet::new(0b1010));
    }
}
