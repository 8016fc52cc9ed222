//! The `-m statistic --probability` values upstream writes, and how the kernel reads them back.

/// What upstream writes for the i-th of n random rules: `1/(n-i)` with 10 decimals.
pub fn written(remaining: usize) -> String {
    format!("{:.10}", 1.0 / remaining as f64)
}

/// What `iptables-save` prints for a rule written with `written(remaining)`: the kernel keeps a
/// 31-bit fixed-point value, and libxt_statistic prints it back with 11 decimals.
pub fn saved(remaining: usize) -> String {
    let p: f64 = written(remaining).parse().expect("formatted float parses");
    // libxt_statistic: lround(0x80000000 * p), printed as value / 0x80000000 with "%.11f".
    let fixed = (2_147_483_648.0 * p).round();
    format!("{:.11}", fixed / 2_147_483_648.0)
}

/// Caches `saved(n)` for n = 1..=max, since every service with n endpoints repeats the same values.
#[derive(Debug, Default)]
pub struct ProbabilityCache {
    values: Vec<String>,
}

impl ProbabilityCache {
    /// The saved form for `remaining` endpoints left to choose from (≥ 2).
    pub fn get(&mut self, remaining: usize) -> &str {
        while self.values.len() <= remaining {
            let n = self.values.len();
            self.values
                .push(if n == 0 { String::new() } else { saved(n) });
        }
        &self.values[remaining]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_form_matches_upstream() {
        assert_eq!(written(2), "0.5000000000");
        assert_eq!(written(3), "0.3333333333");
        assert_eq!(written(100001), "0.0000099999");
    }

    #[test]
    fn saved_form_matches_the_kernel_round_trip() {
        // Values observed from iptables-save on this kernel.
        assert_eq!(saved(2), "0.50000000000");
        assert_eq!(saved(3), "0.33333333349");
        assert_eq!(saved(10), "0.10000000009");
    }

    #[test]
    fn cache_agrees_with_direct_computation() {
        let mut c = ProbabilityCache::default();
        for n in (2..50).rev() {
            assert_eq!(c.get(n), saved(n));
        }
    }
}
