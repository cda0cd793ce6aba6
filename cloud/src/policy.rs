//! Credit policy: from a probability of default and the person's situation to an offer.
//!
//! Pure and deterministic: the same inputs always give the same decision, so the rules can be read,
//! tested and audited. Money is integer cents and rates are integer basis points throughout; the
//! only float is the model's probability, converted to basis points once, at the door.

use ecs_protocol::CreditType;
use serde::Serialize;

use crate::finance::FinancialFeatures;

/// Why a decision came out as it did. Stored with the offer and shown to the person, who can
/// contest an automated decision (LGPD Art. 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The probability of default is above what the policy lends at.
    ProbabilityOfDefaultTooHigh,
    /// No income in the financial window: nothing to size a limit on.
    NoIncomeHistory,
    /// Income arrived in fewer months than the policy wants; the limit is halved.
    IrregularIncome,
    /// Signs of distress (stress, financial worry): the limit is halved, never raised.
    VulnerabilityCap,
    /// The person has not consented to emotional data; only financial data was used.
    EmotionalDataNotUsed,
    /// The computed limit is under the smallest line the policy offers.
    LimitBelowMinimum,
    /// The limit was capped at the policy's maximum.
    LimitCappedAtMaximum,
    /// The rate was capped at the policy's maximum.
    RateCappedAtMaximum,
    /// Risk is low and income regular: a long-term line.
    LongTermEligible,
    /// The amount asked for is above the approved line: the offer prices the whole line.
    RequestedAmountReduced,
    /// The term asked for is longer than the policy allows for the credit type.
    TermCappedAtMaximum,
}

impl ReasonCode {
    /// Every code, in declaration order (analytics lists each, counted or not).
    pub const ALL: [ReasonCode; 11] = [
        ReasonCode::ProbabilityOfDefaultTooHigh,
        ReasonCode::NoIncomeHistory,
        ReasonCode::IrregularIncome,
        ReasonCode::VulnerabilityCap,
        ReasonCode::EmotionalDataNotUsed,
        ReasonCode::LimitBelowMinimum,
        ReasonCode::LimitCappedAtMaximum,
        ReasonCode::RateCappedAtMaximum,
        ReasonCode::LongTermEligible,
        ReasonCode::RequestedAmountReduced,
        ReasonCode::TermCappedAtMaximum,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::ProbabilityOfDefaultTooHigh => "probability_of_default_too_high",
            ReasonCode::NoIncomeHistory => "no_income_history",
            ReasonCode::IrregularIncome => "irregular_income",
            ReasonCode::VulnerabilityCap => "vulnerability_cap",
            ReasonCode::EmotionalDataNotUsed => "emotional_data_not_used",
            ReasonCode::LimitBelowMinimum => "limit_below_minimum",
            ReasonCode::LimitCappedAtMaximum => "limit_capped_at_maximum",
            ReasonCode::RateCappedAtMaximum => "rate_capped_at_maximum",
            ReasonCode::LongTermEligible => "long_term_eligible",
            ReasonCode::RequestedAmountReduced => "requested_amount_reduced",
            ReasonCode::TermCappedAtMaximum => "term_capped_at_maximum",
        }
    }
}

/// Emotional signals the policy protects people with (never exploits): high values only ever
/// lower a limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Wellbeing {
    /// Share of recent readings under high stress, 0–1.
    pub stress_share: f64,
    /// Recent intensity of financial-worry thoughts, 0–1.
    pub financial_worry: f64,
}

/// The policy's parameters. Rates are annual, in basis points.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditPolicy {
    pub max_pd_bps: i64,
    pub long_term_max_pd_bps: i64,
    /// Limit as a percentage of monthly income at zero risk; falls linearly to 0 at `max_pd_bps`.
    pub max_income_multiple_pct: i64,
    pub min_limit_cents: i64,
    pub max_limit_cents: i64,
    /// Limits are rounded down to a multiple of this.
    pub limit_step_cents: i64,
    pub min_months_with_inflow: i64,
    pub long_term_min_months_with_inflow: i64,
    pub long_term_min_limit_cents: i64,
    pub cost_of_funds_bps: i64,
    /// Loss given default, percent: expected loss = PD × LGD.
    pub loss_given_default_pct: i64,
    pub margin_bps: i64,
    pub max_rate_bps: i64,
    pub stress_share_threshold: f64,
    pub financial_worry_threshold: f64,
    /// Default terms, when the request names none.
    pub short_term_months: i32,
    pub long_term_months: i32,
    /// Longest terms a request may ask for.
    pub short_term_max_months: i32,
    pub long_term_max_months: i32,
}

impl Default for CreditPolicy {
    fn default() -> Self {
        Self {
            max_pd_bps: 2_500,
            long_term_max_pd_bps: 800,
            max_income_multiple_pct: 300,
            min_limit_cents: 20_000,
            max_limit_cents: 5_000_000,
            limit_step_cents: 1_000,
            min_months_with_inflow: 2,
            long_term_min_months_with_inflow: 3,
            long_term_min_limit_cents: 300_000,
            cost_of_funds_bps: 1_200,
            loss_given_default_pct: 60,
            margin_bps: 600,
            max_rate_bps: 6_000,
            stress_share_threshold: 0.5,
            financial_worry_threshold: 0.4,
            short_term_months: 6,
            long_term_months: 24,
            short_term_max_months: 12,
            long_term_max_months: 48,
        }
    }
}

/// The outcome for one applicant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approved: bool,
    pub credit_limit_cents: i64,
    /// What is priced: the amount asked for, at most the line (the whole line when the request
    /// names no amount; 0 when declined).
    pub principal_cents: i64,
    pub interest_rate_bps: i32,
    pub credit_type: CreditType,
    pub term_months: i32,
    pub reasons: Vec<ReasonCode>,
}

/// A probability as whole basis points, clamped to 0–10 000 (NaN counts as certain default).
pub fn pd_to_bps(pd: f64) -> i64 {
    if pd.is_nan() {
        return 10_000;
    }
    (pd.clamp(0.0, 1.0) * 10_000.0).round() as i64
}

impl CreditPolicy {
    /// Decides on an offer. `wellbeing` is `None` when emotional data may not be used.
    pub fn decide(
        &self,
        probability_of_default: f64,
        finance: &FinancialFeatures,
        wellbeing: Option<Wellbeing>,
    ) -> Decision {
        let pd_bps = pd_to_bps(probability_of_default);
        let mut reasons = Vec::new();
        if wellbeing.is_none() {
            reasons.push(ReasonCode::EmotionalDataNotUsed);
        }
        let rate = self.rate_bps(pd_bps, &mut reasons);

        if pd_bps > self.max_pd_bps {
            reasons.push(ReasonCode::ProbabilityOfDefaultTooHigh);
            return self.decline(rate, reasons);
        }
        let monthly_income = finance.monthly_inflow_cents();
        if monthly_income <= 0 {
            reasons.push(ReasonCode::NoIncomeHistory);
            return self.decline(rate, reasons);
        }

        let multiple_pct =
            self.max_income_multiple_pct * (self.max_pd_bps - pd_bps) / self.max_pd_bps;
        let mut limit = monthly_income.saturating_mul(multiple_pct) / 100;
        if finance.months_with_inflow < self.min_months_with_inflow {
            limit /= 2;
            reasons.push(ReasonCode::IrregularIncome);
        }
        if let Some(w) = wellbeing
            && (w.stress_share >= self.stress_share_threshold
                || w.financial_worry >= self.financial_worry_threshold)
        {
            limit /= 2;
            reasons.push(ReasonCode::VulnerabilityCap);
        }
        if limit > self.max_limit_cents {
            limit = self.max_limit_cents;
            reasons.push(ReasonCode::LimitCappedAtMaximum);
        }
        limit -= limit % self.limit_step_cents;
        if limit < self.min_limit_cents {
            reasons.push(ReasonCode::LimitBelowMinimum);
            return self.decline(rate, reasons);
        }

        let long_term = pd_bps <= self.long_term_max_pd_bps
            && finance.months_with_inflow >= self.long_term_min_months_with_inflow
            && limit >= self.long_term_min_limit_cents;
        let (credit_type, term_months) = if long_term {
            reasons.push(ReasonCode::LongTermEligible);
            (CreditType::LongTerm, self.long_term_months)
        } else {
            (CreditType::ShortTerm, self.short_term_months)
        };
        Decision {
            approved: true,
            credit_limit_cents: limit,
            principal_cents: limit,
            interest_rate_bps: rate,
            credit_type,
            term_months,
            reasons,
        }
    }

    /// [`CreditPolicy::decide`], then shaped by what the person asked for: an amount (priced up
    /// to the line) and a term (up to the type's maximum). Asking never changes the line, the
    /// rate or the type, so a request cannot talk the policy into more credit.
    pub fn decide_for(
        &self,
        probability_of_default: f64,
        finance: &FinancialFeatures,
        wellbeing: Option<Wellbeing>,
        amount_cents: Option<i64>,
        term_months: Option<i32>,
    ) -> Decision {
        let mut d = self.decide(probability_of_default, finance, wellbeing);
        if !d.approved {
            return d;
        }
        if let Some(amount) = amount_cents {
            if amount > d.credit_limit_cents {
                d.reasons.push(ReasonCode::RequestedAmountReduced);
            } else {
                d.principal_cents = amount.max(1);
            }
        }
        if let Some(term) = term_months {
            let max = match d.credit_type {
                CreditType::ShortTerm => self.short_term_max_months,
                CreditType::LongTerm => self.long_term_max_months,
            };
            if term > max {
                d.term_months = max;
                d.reasons.push(ReasonCode::TermCappedAtMaximum);
            } else {
                d.term_months = term.max(1);
            }
        }
        d
    }

    /// Risk-based price: cost of funds + expected loss (PD × LGD) + margin, capped.
    fn rate_bps(&self, pd_bps: i64, reasons: &mut Vec<ReasonCode>) -> i32 {
        let rate =
            self.cost_of_funds_bps + pd_bps * self.loss_given_default_pct / 100 + self.margin_bps;
        let capped = if rate > self.max_rate_bps {
            reasons.push(ReasonCode::RateCappedAtMaximum);
            self.max_rate_bps
        } else {
            rate
        };
        // Bounded by max_rate_bps, which is far below i32::MAX.
        i32::try_from(capped).unwrap_or(i32::MAX)
    }

    fn decline(&self, rate: i32, reasons: Vec<ReasonCode>) -> Decision {
        Decision {
            approved: false,
            credit_limit_cents: 0,
            principal_cents: 0,
            interest_rate_bps: rate,
            credit_type: CreditType::ShortTerm,
            term_months: self.short_term_months,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_code_is_listed_once_in_order() {
        // Exhaustive: a new code fails to compile here until it has a place in `ALL`.
        let position = |code: ReasonCode| match code {
            ReasonCode::ProbabilityOfDefaultTooHigh => 0,
            ReasonCode::NoIncomeHistory => 1,
            ReasonCode::IrregularIncome => 2,
            ReasonCode::VulnerabilityCap => 3,
            ReasonCode::EmotionalDataNotUsed => 4,
            ReasonCode::LimitBelowMinimum => 5,
            ReasonCode::LimitCappedAtMaximum => 6,
            ReasonCode::RateCappedAtMaximum => 7,
            ReasonCode::LongTermEligible => 8,
            ReasonCode::RequestedAmountReduced => 9,
            ReasonCode::TermCappedAtMaximum => 10,
        };
        for (i, code) in ReasonCode::ALL.into_iter().enumerate() {
            assert_eq!(position(code), i, "{code:?}");
        }
    }

    fn salary(monthly_cents: i64, months: i64) -> FinancialFeatures {
        FinancialFeatures {
            inflow_cents: monthly_cents * 3,
            outflow_cents: monthly_cents * 2,
            transaction_count: 30,
            months_with_inflow: months,
            discretionary_outflow_cents: 0,
        }
    }

    fn calm() -> Option<Wellbeing> {
        Some(Wellbeing::default())
    }

    #[test]
    fn a_low_risk_regular_earner_gets_a_long_term_line() {
        let d = CreditPolicy::default().decide(0.02, &salary(500_000, 3), calm());
        assert!(d.approved);
        assert_eq!(d.credit_type, CreditType::LongTerm);
        assert_eq!(d.term_months, 24);
        // 300 % × (2500 − 200) / 2500 = 276 % of R$5,000.
        assert_eq!(d.credit_limit_cents, 1_380_000);
        // 1200 + 200 × 60 % + 600.
        assert_eq!(d.interest_rate_bps, 1_920);
        assert_eq!(d.reasons, vec![ReasonCode::LongTermEligible]);
    }

    #[test]
    fn too_risky_is_declined_with_a_reason_and_no_limit() {
        let d = CreditPolicy::default().decide(0.30, &salary(500_000, 3), calm());
        assert!(!d.approved);
        assert_eq!(d.credit_limit_cents, 0);
        assert!(d.reasons.contains(&ReasonCode::ProbabilityOfDefaultTooHigh));
    }

    #[test]
    fn no_income_is_declined() {
        let d = CreditPolicy::default().decide(0.01, &FinancialFeatures::default(), calm());
        assert!(!d.approved);
        assert_eq!(d.reasons, vec![ReasonCode::NoIncomeHistory]);
    }

    #[test]
    fn more_risk_never_means_more_credit_or_a_cheaper_rate() {
        let policy = CreditPolicy::default();
        let finance = salary(400_000, 3);
        let mut previous = policy.decide(0.0, &finance, calm());
        for pd_bps in (50..=2_500).step_by(50) {
            let d = policy.decide(pd_bps as f64 / 10_000.0, &finance, calm());
            assert!(
                d.credit_limit_cents <= previous.credit_limit_cents,
                "at {pd_bps} bps"
            );
            assert!(
                d.interest_rate_bps >= previous.interest_rate_bps,
                "at {pd_bps} bps"
            );
            previous = d;
        }
    }

    #[test]
    fn distress_halves_the_limit_and_says_so() {
        let policy = CreditPolicy::default();
        let finance = salary(500_000, 3);
        let calm_offer = policy.decide(0.05, &finance, calm());
        let stressed = Some(Wellbeing {
            stress_share: 0.7,
            financial_worry: 0.0,
        });
        let d = policy.decide(0.05, &finance, stressed);
        assert!(d.reasons.contains(&ReasonCode::VulnerabilityCap));
        assert_eq!(d.credit_limit_cents, calm_offer.credit_limit_cents / 2);
    }

    #[test]
    fn limits_are_capped_and_rounded_and_rates_capped() {
        let policy = CreditPolicy::default();
        let rich = policy.decide(0.0, &salary(10_000_000, 3), calm());
        assert_eq!(rich.credit_limit_cents, policy.max_limit_cents);
        assert!(rich.reasons.contains(&ReasonCode::LimitCappedAtMaximum));
        let odd = policy.decide(0.1234, &salary(123_457, 3), calm());
        assert_eq!(odd.credit_limit_cents % policy.limit_step_cents, 0);
        let certain_default = policy.decide(1.0, &salary(500_000, 3), calm());
        assert_eq!(certain_default.interest_rate_bps, 6_000);
        assert!(
            certain_default
                .reasons
                .contains(&ReasonCode::RateCappedAtMaximum)
        );
    }

    #[test]
    fn without_consent_the_decision_says_emotional_data_was_not_used() {
        let d = CreditPolicy::default().decide(0.05, &salary(500_000, 3), None);
        assert!(d.reasons.contains(&ReasonCode::EmotionalDataNotUsed));
    }

    #[test]
    fn irregular_income_halves_and_a_tiny_limit_is_declined() {
        let policy = CreditPolicy::default();
        let d = policy.decide(0.05, &salary(500_000, 1), calm());
        assert!(d.reasons.contains(&ReasonCode::IrregularIncome));
        assert_eq!(d.credit_type, CreditType::ShortTerm);
        let tiny = policy.decide(0.2, &salary(10_000, 3), calm());
        assert!(!tiny.approved);
        assert!(tiny.reasons.contains(&ReasonCode::LimitBelowMinimum));
    }

    #[test]
    fn a_request_shapes_the_price_but_never_the_line() {
        let policy = CreditPolicy::default();
        let finance = salary(500_000, 3);
        let plain = policy.decide(0.02, &finance, calm());
        let small = policy.decide_for(0.02, &finance, calm(), Some(100_000), Some(12));
        assert_eq!(small.credit_limit_cents, plain.credit_limit_cents);
        assert_eq!(small.interest_rate_bps, plain.interest_rate_bps);
        assert_eq!((small.principal_cents, small.term_months), (100_000, 12));
        let greedy = policy.decide_for(0.02, &finance, calm(), Some(i64::MAX), Some(120));
        assert_eq!(greedy.principal_cents, plain.credit_limit_cents);
        assert_eq!(greedy.term_months, policy.long_term_max_months);
        assert!(greedy.reasons.contains(&ReasonCode::RequestedAmountReduced));
        assert!(greedy.reasons.contains(&ReasonCode::TermCappedAtMaximum));
        let declined = policy.decide_for(0.9, &finance, calm(), Some(100_000), Some(12));
        assert_eq!(declined.principal_cents, 0);
    }

    #[test]
    fn nan_probability_is_treated_as_certain_default() {
        assert_eq!(pd_to_bps(f64::NAN), 10_000);
        assert!(
            !CreditPolicy::default()
                .decide(f64::NAN, &salary(500_000, 3), calm())
                .approved
        );
    }
}
