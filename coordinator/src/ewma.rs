//! The one moving average of the coordinator: a worker's recent task times, the job's recent
//! step rate, the typical task time that marks stragglers.

/// An exponentially weighted moving average in which each new sample weighs
/// [`Ewma::WEIGHT`]; the first sample is taken as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ewma(Option<f64>);

impl Ewma {
    /// The weight of each new sample.
    pub const WEIGHT: f64 = 0.2;

    /// Adds a sample; returns the new average.
    pub fn add(&mut self, sample: f64) -> f64 {
        let next = match self.0 {
            None => sample,
            Some(old) => (1.0 - Self::WEIGHT) * old + Self::WEIGHT * sample,
        };
        self.0 = Some(next);
        next
    }

    /// The average, if any sample was added.
    pub fn get(&self) -> Option<f64> {
        self.0
    }

    /// The average, 0 before the first sample.
    pub fn value(&self) -> f64 {
        self.0.unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sample_is_taken_as_is_and_later_ones_weigh_a_fifth() {
        let mut a = Ewma::default();
        assert_eq!(a.get(), None);
        assert_eq!(a.value(), 0.0);
        assert_eq!(a.add(10.0), 10.0);
        assert!((a.add(20.0) - 12.0).abs() < 1e-12);
        assert!((a.value() - 12.0).abs() < 1e-12);
    }
}
