//! The heartbeat `seq`s of one device that are committed but not yet confirmed to the phone,
//! kept as coalesced inclusive ranges so an `inbox/ack {"hb_seq": [[from, to], …]}` stays small
//! however many points it confirms.

use std::collections::BTreeMap;

/// A set of sequence numbers stored as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SeqRanges {
    /// `from → to`, inclusive; no two ranges overlap or touch.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    /// Adds one number, merging it with the ranges it touches.
    pub(crate) fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Adds `from..=to`, merging it with the ranges it overlaps or touches.
    pub(crate) fn insert_range(&mut self, from: u64, to: u64) {
        let (mut from, mut to) = (from.min(to), from.max(to));
        if let Some((&f, &t)) = self.ranges.range(..=from).next_back()
            && t.saturating_add(1) >= from
        {
            self.ranges.remove(&f);
            from = f;
            to = to.max(t);
        }
        while let Some((&f, &t)) = self.ranges.range(from..).next() {
            if f > to.saturating_add(1) {
                break;
            }
            self.ranges.remove(&f);
            to = to.max(t);
        }
        self.ranges.insert(from, to);
    }

    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Removes and returns up to `max` ranges, lowest first.
    pub(crate) fn take(&mut self, max: usize) -> Vec<[u64; 2]> {
        let out: Vec<[u64; 2]> = self.ranges.iter().take(max).map(|(&f, &t)| [f, t]).collect();
        for [f, _] in &out {
            self.ranges.remove(f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::SeqRanges;

    fn of(seqs: &[u64]) -> Vec<[u64; 2]> {
        let mut r = SeqRanges::default();
        for &s in seqs {
            r.insert(s);
        }
        r.take(usize::MAX)
    }

    #[test]
    fn coalesces_in_any_order_and_keeps_gaps() {
        assert_eq!(of(&[]), Vec::<[u64; 2]>::new());
        assert_eq!(of(&[5]), vec![[5, 5]]);
        assert_eq!(of(&[1, 2, 3, 7, 8, 10]), vec![[1, 3], [7, 8], [10, 10]]);
        assert_eq!(of(&[3, 1, 2]), vec![[1, 3]], "a gap filled later joins both sides");
        assert_eq!(of(&[10, 8, 9, 9, 8, 1]), vec![[1, 1], [8, 10]], "duplicates change nothing");
        assert_eq!(of(&[u64::MAX, u64::MAX - 1, 0]), vec![[0, 0], [u64::MAX - 1, u64::MAX]]);
        assert_eq!(of(&[4, 6, 5, 2]), vec![[2, 2], [4, 6]]);
        let mut r = SeqRanges::default();
        for s in [1, 3, 5, 20] {
            r.insert(s);
        }
        r.insert_range(2, 10);
        r.insert_range(12, 11);
        assert_eq!(r.take(10), vec![[1, 12], [20, 20]], "a range swallows and joins what it covers");
    }

    #[test]
    fn take_is_bounded_and_leaves_the_rest() {
        let mut r = SeqRanges::default();
        for s in (1..=20).step_by(2) {
            r.insert(s);
        }
        assert_eq!(r.take(3), vec![[1, 1], [3, 3], [5, 5]]);
        assert_eq!(r.take(100).len(), 7);
        assert!(r.is_empty());
    }
}
