//! Summary statistics of one measurement's repeated runs: what every figure in the report is.

use serde::{Deserialize, Serialize};

/// min / median / max / mean / sample standard deviation of a measurement's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for a single run.
    pub stddev: f64,
}

impl Summary {
    /// The summary of `values`; None if there are none or any is not finite (a failed parse
    /// must not turn into a plausible-looking figure).
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let mean = v.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Summary {
            runs: n,
            min: v[0],
            median,
            max: v[n - 1],
            mean,
            stddev,
        })
    }
}

/// The relative spread of `values`: (max - min) / median, as a percentage. How unevenly several
/// guests running the same work at once fared.
pub fn spread_percent(values: &[f64]) -> Option<f64> {
    let s = Summary::of(values)?;
    (s.median > 0.0).then(|| (s.max - s.min) / s.median * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_median_is_the_middle_value() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.runs, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        assert_eq!(s.mean, 2.0);
        assert!((s.stddev - 1.0).abs() < 1e-12);
    }

    #[test]
    fn even_count_median_is_the_mean_of_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.5);
        assert_eq!(s.mean, 4.5);
        // sample variance: (12.25 + 0.25 + 2.25 + 30.25) / 3 = 15
        assert!((s.stddev - 15f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn a_single_run_has_no_spread() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.stddev), (7.5, 7.5, 7.5, 0.0));
    }

    #[test]
    fn empty_or_non_finite_input_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::INFINITY]), None);
    }

    #[test]
    fn spread_is_range_over_median() {
        assert_eq!(spread_percent(&[90.0, 100.0, 110.0]), Some(20.0));
        assert_eq!(spread_percent(&[5.0, 5.0]), Some(0.0));
        assert_eq!(spread_percent(&[0.0, 0.0, 1.0]), None);
    }
}
