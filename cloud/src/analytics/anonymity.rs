//! The group-size threshold (k-anonymity) of the population views.

use std::{fmt, str::FromStr};

/// The smallest number of distinct people a population figure may be computed over (`k`).
///
/// At least 2: a "group" of one is a person. Configured by `ECS_ANALYTICS_MIN_GROUP`
/// (default 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinGroupSize(u32);

impl MinGroupSize {
    pub const DEFAULT: Self = Self(10);
    pub const SMALLEST: u32 = 2;

    pub fn new(k: u32) -> Result<Self, String> {
        if k < Self::SMALLEST {
            return Err(format!(
                "the minimum group size must be at least {}, not {k}: a group of one is a person",
                Self::SMALLEST
            ));
        }
        Ok(Self(k))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// Whether a figure over `people` distinct people may be shown.
    pub fn admits(self, people: i64) -> bool {
        people >= i64::from(self.0)
    }

    /// `figure` if it is computed over enough people, else nothing: the one place a population
    /// figure is let through or withheld.
    pub fn reveal<T>(self, people: i64, figure: T) -> Option<T> {
        self.admits(people).then_some(figure)
    }
}

impl Default for MinGroupSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for MinGroupSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k = s
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number of people"))?;
        Self::new(k)
    }
}

impl fmt::Display for MinGroupSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_shown_from_k_people_on() {
        let k = MinGroupSize::new(3).unwrap();
        assert!(!k.admits(0));
        assert!(!k.admits(2));
        assert!(k.admits(3));
        assert_eq!(k.reveal(2, 1.5), None);
        assert_eq!(k.reveal(3, 1.5), Some(1.5));
    }

    #[test]
    fn a_group_of_one_is_refused() {
        assert!(MinGroupSize::new(1).is_err());
        assert!("0".parse::<MinGroupSize>().is_err());
        assert!("ten".parse::<MinGroupSize>().is_err());
        assert_eq!("2".parse::<MinGroupSize>().unwrap().get(), 2);
        assert_eq!(MinGroupSize::default().to_string(), "10");
    }
}
