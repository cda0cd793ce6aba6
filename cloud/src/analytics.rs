//! Analytics: what the stored data shows, for the operator's dashboard and for each person.
//!
//! Two kinds of view, with different rules:
//!
//! - **Population** views (admin only): emotional trends by hour, the distributions of credit
//!   limits and interest rates, approval rate and reasons, the offer funnel ([`population`]);
//!   ingest rate and lag, connected phones ([`traffic`]). Every figure is computed over a *group* of
//!   distinct people, and is shown only when that group holds at least `k`
//!   ([`MinGroupSize`], `ECS_ANALYTICS_MIN_GROUP`) of them; a smaller bucket is reported as
//!   `suppressed` with its figures withheld, so no chart singles a person out. Buckets are fixed
//!   (every hour of the window, every band, every reason code, every funnel stage), so that a
//!   suppressed bucket says "fewer than k, possibly none", never "someone is here". No total is
//!   given next to suppressed buckets, so a withheld count cannot be recovered by subtraction.
//! - The **personal** view ([`personal`], the person or an admin): the person's own mood by hour,
//!   their offers with the reasons for each, their credit line. Nothing is suppressed: it is their
//!   own data (LGPD Art. 18 and 20).
//!
//! This stage owns its SQL; the API only parses parameters and checks who may look. It only ever
//! reads.

pub mod anonymity;
pub mod personal;
pub mod population;
pub mod traffic;

use sqlx::PgPool;

pub use anonymity::MinGroupSize;

use crate::{Error, error::Result};

/// The analytics stage: a pool to read from and the group size population figures need.
#[derive(Debug, Clone)]
pub struct Analytics {
    pool: PgPool,
    min_group: MinGroupSize,
}

impl Analytics {
    pub fn new(pool: PgPool, min_group: MinGroupSize) -> Self {
        Self { pool, min_group }
    }

    /// The `k` of the population views.
    pub fn min_group(&self) -> MinGroupSize {
        self.min_group
    }
}

/// Look-back windows of the analytics endpoints: a whole number of units between 1 and the
/// endpoint's maximum, parsed once at the edge (`?hours=`, `?days=`, `?minutes=`).
macro_rules! window {
    ($(#[$doc:meta])* $name:ident, $param:literal, default $default:literal, max $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(u32);

        impl $name {
            pub const DEFAULT: Self = Self($default);
            pub const MAX: u32 = $max;

            /// The window a request asked for (`None`: the default), or why it cannot be served.
            pub fn parse(raw: Option<u32>) -> Result<Self> {
                match raw {
                    None => Ok(Self::DEFAULT),
                    Some(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
                    Some(n) => Err(Error::InvalidInput(format!(
                        concat!($param, " must be between 1 and {}, not {}"),
                        Self::MAX,
                        n
                    ))),
                }
            }

            pub fn get(self) -> u32 {
                self.0
            }

            /// For SQL's `make_interval`, which takes `int`.
            fn sql(self) -> i32 {
                // At most MAX, which is far below i32::MAX.
                self.0 as i32
            }
        }
    };
}

window!(
    /// Hours of emotional readings: the current hour and the ones before it (at most 31 days).
    Hours, "hours", default 24, max 744
);
window!(
    /// Days of decisions (offers created in the window; at most a year).
    Days, "days", default 30, max 366
);
window!(
    /// Minutes of ingest: the current minute and the ones before it (at most 6 hours).
    Minutes, "minutes", default 30, max 360
);

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_and_refuse_what_is_out_of_bounds() {
        assert_eq!(Hours::parse(None).unwrap().get(), 24);
        assert_eq!(Hours::parse(Some(1)).unwrap().get(), 1);
        assert_eq!(Hours::parse(Some(744)).unwrap().get(), 744);
        for bad in [0, 745, u32::MAX] {
            let refused = Hours::parse(Some(bad)).unwrap_err();
            assert!(matches!(refused, Error::InvalidInput(_)), "{refused:?}");
            assert!(
                refused
                    .to_string()
                    .contains("hours must be between 1 and 744")
            );
        }
        assert_eq!(Days::parse(None).unwrap().get(), 30);
        assert!(Days::parse(Some(367)).is_err());
        assert_eq!(Minutes::parse(Some(360)).unwrap().get(), 360);
        assert!(Minutes::parse(Some(0)).is_err());
    }
}
