//! A small log-bucketed histogram of microsecond values (HDR-like, about 3 % precision).
//!
//! Values below 64 get a bucket each; above, every power of two is split into 32 buckets, so a
//! bucket is at most 1/32 of its value wide. Buckets are atomics: every connection task records
//! into the same histogram without locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two above [`LINEAR`].
const SUB: u64 = 32;
/// Values below this have a bucket each.
const LINEAR: u64 = 64;
/// Enough buckets for values up to 2^44 µs (about 200 days).
const BUCKETS: usize = (LINEAR + (44 - 6 + 1) * SUB) as usize;

/// Index of the bucket holding `v`.
fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - u64::from(v.leading_zeros()); // >= 6
    let shift = exp - 5;
    let top = v >> shift; // 32..=63
    let idx = LINEAR + (exp - 6) * SUB + (top - SUB);
    (idx as usize).min(BUCKETS - 1)
}

/// Largest value that falls in bucket `idx`.
pub fn upper(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx;
    }
    let exp = (idx - LINEAR) / SUB + 6;
    let top = (idx - LINEAR) % SUB + SUB;
    let shift = exp - 5;
    ((top + 1) << shift) - 1
}

/// A concurrent histogram of non-negative integers (microseconds here).
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn record(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Forgets everything recorded.
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.sum.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            max: self.max.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A frozen histogram.
pub struct Snapshot {
    counts: Vec<u64>,
    max: u64,
    sum: u64,
}

impl Snapshot {
    /// Number of values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values (exact).
    pub fn mean(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.sum as f64 / n as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding it, never above
    /// the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }

    /// Non-empty buckets as `[upper edge, count]` pairs, for merging histograms elsewhere.
    pub fn sparse(&self) -> Vec<[u64; 2]> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| [upper(i), *c])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut prev = None;
        for i in 0..BUCKETS {
            let u = upper(i);
            if let Some(p) = prev {
                assert!(u > p, "bucket {i}");
            }
            assert_eq!(index(u), i, "upper of {i} = {u}");
            if u >= LINEAR && i + 1 < BUCKETS {
                assert_eq!(index(u + 1), i + 1);
                let lower = prev.unwrap() + 1;
                assert!((u - lower) as f64 / lower as f64 <= 1.0 / 32.0 + 1e-9);
            }
            prev = Some(u);
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.quantile(0.5);
        assert!((485..=516).contains(&p50), "{p50}");
        assert_eq!(s.quantile(1.0), 1000);
        assert!(s.quantile(0.99) >= 990);
    }
}
