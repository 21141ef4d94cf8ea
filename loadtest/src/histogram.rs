//! Latency histograms: one shape for every lane and process, and the
//! `(value, count)` pairs a worker sends them back as (hdrhistogram's own
//! serialization is not worth a dependency feature for a few thousand pairs).

use hdrhistogram::Histogram;

/// 1 ms to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("constant histogram bounds are valid")
}

/// A histogram as `(value, count)` pairs.
pub type HistPairs = Vec<(u64, u64)>;

pub fn hist_pairs(h: &Histogram<u64>) -> HistPairs {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &HistPairs) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.max(1), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_carry_a_histogram_across_processes() {
        let mut h = new_histogram();
        for ms in [1, 5, 5, 200, 3_000] {
            h.record(ms).unwrap();
        }
        let mut back = new_histogram();
        add_pairs(&mut back, &hist_pairs(&h));
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), 5);
        assert_eq!(back.max(), h.max());
    }
}
