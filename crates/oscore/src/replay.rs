//! The Replay Window of a Recipient Context (RFC 8613 §3.1, §7.4): a sliding window
//! anchored at the highest accepted Partial IV, a bitmap of the `size` latest values.

/// Sliding anti-replay window over received Partial IVs (RFC 8613 §7.4).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u32,
    /// Highest accepted sequence number (or restored floor); `None` before the first.
    highest: Option<u64>,
    /// Bit i set: `highest - i` already received (or below the restored floor).
    bitmap: u128,
}

/// Largest supported window size.
pub const MAX_WINDOW: usize = 128;

impl ReplayWindow {
    /// A fresh window that accepts any first sequence number. `size` must be 1..=128.
    pub(crate) fn new(size: usize) -> Option<Self> {
        if size == 0 || size > MAX_WINDOW {
            return None;
        }
        Some(Self {
            size: size as u32,
            highest: None,
            bitmap: 0,
        })
    }

    /// A window that rejects every sequence number `<= floor` (RFC 8613 Appendix B.1.2).
    pub(crate) fn with_floor(size: usize, floor: u64) -> Option<Self> {
        let mut w = Self::new(size)?;
        w.highest = Some(floor);
        w.bitmap = u128::MAX;
        Some(w)
    }

    /// Whether `seq` would be accepted (not seen, not below the window).
    pub fn check(&self, seq: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if seq > h => true,
            Some(h) => {
                let off = h - seq;
                off < u64::from(self.size) && self.bitmap & (1u128 << off) == 0
            }
        }
    }

    /// Marks `seq` as received. Call only after [`Self::check`] and successful decryption.
    pub(crate) fn update(&mut self, seq: u64) {
        match self.highest {
            Some(h) if seq <= h => {
                let off = h - seq;
                if off < 128 {
                    self.bitmap |= 1u128 << off;
                }
            }
            Some(h) => {
                let shift = seq - h;
                self.bitmap = if shift >= 128 {
                    0
                } else {
                    self.bitmap << shift
                };
                self.bitmap |= 1;
                self.highest = Some(seq);
            }
            None => {
                self.bitmap = 1;
                self.highest = Some(seq);
            }
        }
    }

    /// Highest accepted Partial IV (the value to persist for Appendix B.1.2), if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let mut w = ReplayWindow::new(32).unwrap();
        assert!(w.check(5));
        w.update(5);
        assert!(!w.check(5));
        assert!(w.check(3));
        w.update(40);
        assert!(!w.check(5)); // 35 below: out of window
        assert!(w.check(9));
        assert!(!w.check(8));
        w.update(9);
        assert!(!w.check(9));
        let f = ReplayWindow::with_floor(32, 100).unwrap();
        assert!(!f.check(100) && !f.check(99) && !f.check(0) && f.check(101));
    }
}
