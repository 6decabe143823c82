//! The fleet arithmetic of the statistical detectors: plain functions over finite numbers.
//!
//! Callers drop non-finite values before calling; every function here answers `None`
//! rather than a NaN when its input cannot give a number.

/// The constant that makes the MAD of a normal distribution estimate its standard deviation
/// (Iglewicz and Hoaglin's modified z-score).
pub const MAD_Z: f64 = 0.6745;
/// The constant that makes the mean absolute deviation estimate a standard deviation
/// (√(π/2)), used when the MAD is 0.
pub const MEAN_AD_SCALE: f64 = 1.253314;

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// The population standard deviation (divided by n, as Envoy computes it); `None` for no values.
pub fn population_stdev(values: &[f64]) -> Option<f64> {
    let mean = mean(values)?;
    let variance =
        values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
    Some(variance.sqrt())
}

/// The median (mean of the two middle values for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        sorted[mid - 1] / 2.0 + sorted[mid] / 2.0
    })
}

/// A fleet's centre and spread for the modified z-score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RobustSpread {
    pub median: f64,
    /// Median absolute deviation from the median.
    pub mad: f64,
    /// Mean absolute deviation from the median, the fallback when the MAD is 0.
    pub mean_ad: f64,
}

impl RobustSpread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<RobustSpread> {
        let median = median(values)?;
        let deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        Some(RobustSpread {
            median,
            mad: self::median(&deviations)?,
            mean_ad: mean(&deviations)?,
        })
    }

    /// The modified z-score of `x`: 0.6745 × (x − median) / MAD; when the MAD is 0,
    /// (x − median) / (1.253314 × mean absolute deviation); when both are 0 the fleet has
    /// no spread to compare with and every score is 0.
    pub fn z_score(&self, x: f64) -> f64 {
        let score = if self.mad > 0.0 {
            MAD_Z * (x - self.median) / self.mad
        } else if self.mean_ad > 0.0 {
            (x - self.median) / (MEAN_AD_SCALE * self.mean_ad)
        } else {
            0.0
        };
        // Overflow of huge but finite values must not turn into an anomaly.
        if score.is_finite() { score } else { 0.0 }
    }
}

/// The least-squares slope of `points` (x, y), in y units per x unit; `None` with fewer
/// than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    // Centred sums: timestamps near 1.8e9 would lose every digit of precision otherwise.
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    let slope = sxy / sxx;
    (sxx > 0.0 && slope.is_finite()).then_some(slope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_stdev_median_of_a_small_fleet() {
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&v), Some(5.0));
        assert_eq!(population_stdev(&v), Some(2.0));
        assert_eq!(median(&v), Some(4.5));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(population_stdev(&[]), None);
    }

    #[test]
    fn one_value_has_no_spread() {
        assert_eq!(population_stdev(&[7.0]), Some(0.0));
        let spread = RobustSpread::of(&[7.0]).unwrap();
        assert_eq!((spread.median, spread.mad, spread.mean_ad), (7.0, 0.0, 0.0));
        assert_eq!(spread.z_score(7.0), 0.0);
    }

    #[test]
    fn z_score_uses_the_mad_then_the_mean_absolute_deviation() {
        let spread = RobustSpread::of(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!((spread.median, spread.mad), (3.0, 1.0));
        assert!((spread.z_score(100.0) - 0.6745 * 97.0).abs() < 1e-9);
        // Four equal values: the MAD is 0, the mean absolute deviation is 10 / 5 = 2.
        let spread = RobustSpread::of(&[5.0, 5.0, 5.0, 5.0, 15.0]).unwrap();
        assert_eq!((spread.mad, spread.mean_ad), (0.0, 2.0));
        assert!((spread.z_score(15.0) - 10.0 / (1.253314 * 2.0)).abs() < 1e-9);
        assert_eq!(spread.z_score(5.0), 0.0);
    }

    #[test]
    fn slope_of_a_line_and_of_degenerate_series() {
        let t0 = 1.8e9;
        let line: Vec<(f64, f64)> = (0..20)
            .map(|i| (t0 + f64::from(i) * 15.0, 0.02 + 0.001 * f64::from(i) * 15.0))
            .collect();
        assert!((slope(&line).unwrap() - 0.001).abs() < 1e-9);
        assert_eq!(slope(&[(t0, 1.0)]), None);
        assert_eq!(slope(&[(t0, 1.0), (t0, 2.0), (t0, 3.0)]), None);
        assert_eq!(
            slope(&[(t0, 1.0), (t0 + 1.0, 1.0), (t0 + 2.0, 1.0)]),
            Some(0.0)
        );
    }
}
