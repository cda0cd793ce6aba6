//! `ecs-simulator insights`: what the emotional data shows, from a documented simulation run.
//!
//! A population of every [`Archetype`] gets financial histories and days of sensor readings
//! (simulated time) written into a scratch database through the cloud's own code
//! ([`population`]); each person is then assessed by the cloud's own assessor, model and policy,
//! counterfactuals are computed with the same functions ([`counterfactual`]), and the figures
//! come from SQL over what the cloud stored ([`analysis`]). The run writes `findings.json` and SVG charts ([`svg`]) to
//! the output directory; docs/INSIGHTS.md quotes them.
//!
//! Deterministic from `--seed` (and the population's size): people, streams and finances are
//! seeded, times are simulated, and the simulated stretch ends at today's midnight (UTC), so
//! the stream ends at the same hour of the day whenever the command runs (the cloud refuses
//! readings from the future or over 30 days old, so the stretch cannot be fixed in the past).

pub mod analysis;
pub mod counterfactual;
pub mod findings;
pub mod population;
pub mod svg;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use chrono::{DurationRound, TimeDelta, Utc};
use ecs_cloud::keys::{KeyCache, Keyring, MasterKey};
use ecs_edge_agent::sensor::Archetype;
use sqlx::postgres::PgPoolOptions;

use crate::bench::scratch::{ScratchServer, with_scratch};
use findings::{Findings, RunFacts};
use population::Plan;
use svg::{Labels, Points, Series};

/// `ecs-simulator insights` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InsightsArgs {
    #[command(flatten)]
    pub server: ScratchServer,
    /// Directory for findings.json and the charts (created when missing).
    #[arg(long, default_value = "docs/insights")]
    pub out: PathBuf,
    /// Seed of people, streams and finances.
    #[arg(long, default_value_t = 9)]
    pub seed: u64,
    /// Simulated people of each of the five archetypes.
    #[arg(long, default_value_t = 40)]
    pub people_per_archetype: usize,
    /// Simulated days of readings (at most 28: the cloud refuses readings over 30 days old).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=28))]
    pub days: u32,
    /// Simulated minutes between two readings of one phone.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=60))]
    pub reading_minutes: i64,
}

/// Runs the simulation and the analysis on a scratch database and writes the outputs.
pub async fn run(args: &InsightsArgs) -> anyhow::Result<Findings> {
    anyhow::ensure!(
        args.people_per_archetype >= 2,
        "--people-per-archetype must be at least 2 (correlations need pairs)"
    );
    let plan = Plan {
        seed: args.seed,
        people_per_archetype: args.people_per_archetype,
        days: args.days,
        reading_interval: TimeDelta::minutes(args.reading_minutes),
        // Today's midnight (UTC): whole simulated days, nothing in the cloud's future, and the
        // assessment always sees a stream that ended at the same hour of the day.
        end: Utc::now().duration_trunc(TimeDelta::days(1))?,
    };
    let findings = with_scratch(&args.server.database_url, async |scratch, progress| {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(scratch.url())
            .await
            .context("connecting to the scratch database")?;
        // The run's own master key: names and thoughts are sealed as the cloud seals them, and
        // only this analysis opens them again.
        let keys = KeyCache::new(Arc::new(Keyring::new(MasterKey::random(), vec![])));
        let (people, written) = population::simulate(&pool, &plan, &keys, progress).await?;
        progress.note(&format!(
            "{} people, {} readings and {} transactions written; assessing",
            people.len(),
            written.readings,
            written.transactions
        ));
        // One connection for the analysis: its temporary tables live in its session.
        let mut conn = pool.acquire().await?;
        counterfactual::assess(&pool, &people, &mut conn).await?;
        analysis::open_thoughts(&mut conn, &keys, &pool).await?;
        analysis::tabulate(&mut conn, &plan).await?;
        let (readings_stored, transactions_stored) = analysis::stored(&mut conn).await?;
        let (hours, stress_by_hour) = analysis::hours(&mut conn, &plan).await?;
        let findings = Findings {
            run: RunFacts {
                seed: plan.seed,
                people: people.len(),
                people_per_archetype: plan.people_per_archetype,
                days: plan.days,
                reading_interval_minutes: plan.reading_interval.num_minutes(),
                readings_stored,
                transactions_stored,
                purchases_after_intent: written.purchases_after_intent,
                model: "scorecard (built-in cloud/models/scorecard-v1.json)".into(),
            },
            archetypes: analysis::archetypes(&mut conn).await?,
            spending: analysis::spending(&mut conn, &plan).await?,
            hours,
            stress_by_hour,
            credit: analysis::credit(&mut conn).await?,
            guard: analysis::guard(&mut conn).await?,
            people: analysis::people(&mut conn).await?,
        };
        drop(conn);
        pool.close().await;
        Ok(findings)
    })
    .await?;
    write(&args.out, &findings)?;
    Ok(findings)
}

/// The files of a run: findings.json and one SVG per chart.
pub const CHARTS: [&str; 6] = [
    "stress-by-hour.svg",
    "intents-and-purchases-by-hour.svg",
    "intent-vs-spending.svg",
    "stress-vs-outflow.svg",
    "pd-by-archetype.svg",
    "limit-by-archetype.svg",
];

fn write(out: &Path, findings: &Findings) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let save = |name: &str, contents: String| {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    save(
        "findings.json",
        serde_json::to_string_pretty(findings)? + "\n",
    )?;
    for (name, chart) in CHARTS.into_iter().zip(charts(findings)) {
        save(name, chart)?;
    }
    Ok(())
}

/// The charts, in [`CHARTS`] order.
fn charts(f: &Findings) -> Vec<String> {
    let hours: Vec<String> = (0..24).map(|h| format!("{h:02}")).collect();
    let names: Vec<String> = f
        .archetypes
        .iter()
        .map(|a| a.archetype.replace('_', " "))
        .collect();
    let by_archetype = |pick: &dyn Fn(&findings::PersonPoint) -> (f64, f64)| -> Vec<Points> {
        Archetype::ALL
            .iter()
            .map(|a| Points {
                name: a.as_str().replace('_', " "),
                points: f
                    .people
                    .iter()
                    .filter(|p| p.archetype == a.as_str())
                    .map(pick)
                    .collect(),
            })
            .collect()
    };
    let series = |name: &str, values: Vec<f64>| Series {
        name: name.to_owned(),
        values,
    };
    // Both hourly curves as a percentage of their own daily total, so their shapes compare.
    let share_of_day = |values: Vec<f64>| {
        let total: f64 = values.iter().sum();
        values
            .into_iter()
            .map(|v| if total > 0.0 { 100.0 * v / total } else { 0.0 })
            .collect::<Vec<_>>()
    };
    vec![
        svg::lines(
            &Labels {
                title: "Mean stress by hour of day, per archetype",
                x: "hour of day (simulated local time)",
                y: "stress (0-100)",
            },
            &hours,
            &f.stress_by_hour
                .iter()
                .map(|s| series(&s.archetype.replace('_', " "), s.values.clone()))
                .collect::<Vec<_>>(),
        ),
        svg::lines(
            &Labels {
                title: "Purchase intents and discretionary purchases by hour",
                x: "hour of day (simulated local time)",
                y: "% of the day's total",
            },
            &hours,
            &[
                series(
                    "purchase intents",
                    share_of_day(f.hours.iter().map(|h| h.purchase_intent_share).collect()),
                ),
                series(
                    "discretionary purchases",
                    share_of_day(
                        f.hours
                            .iter()
                            .map(|h| h.discretionary_purchases as f64)
                            .collect(),
                    ),
                ),
            ],
        ),
        svg::scatter(
            &Labels {
                title: "Purchase intents vs discretionary spending, per person",
                x: "% of readings with a purchase intent",
                y: "discretionary spending in the stretch, % of monthly income",
            },
            &by_archetype(&|p| {
                (
                    100.0 * p.purchase_intent_share,
                    100.0 * p.discretionary_of_income,
                )
            }),
        ),
        svg::scatter(
            &Labels {
                title: "Mean stress vs outflow / inflow (90 days), per person",
                x: "mean stress (0-100)",
                y: "outflow / inflow",
            },
            &by_archetype(&|p| (p.mean_stress, p.outflow_to_inflow)),
        ),
        svg::bars(
            &Labels {
                title: "Probability of default, with and without emotional data",
                x: "archetype",
                y: "mean PD (%)",
            },
            &names,
            &[
                series(
                    "with the person's emotional data",
                    f.archetypes.iter().map(|a| 100.0 * a.mean_pd).collect(),
                ),
                series(
                    "neutral emotional values",
                    f.archetypes
                        .iter()
                        .map(|a| 100.0 * a.mean_pd_without_emotions)
                        .collect(),
                ),
            ],
        ),
        svg::bars(
            &Labels {
                title: "Mean credit line offered",
                x: "archetype",
                y: "R$",
            },
            &names,
            &[
                series(
                    "no emotional data",
                    f.archetypes
                        .iter()
                        .map(|a| a.mean_limit_without_emotions_brl)
                        .collect(),
                ),
                series(
                    "emotions, guard off",
                    f.archetypes
                        .iter()
                        .map(|a| a.mean_limit_without_guard_brl)
                        .collect(),
                ),
                series(
                    "as offered (guard on)",
                    f.archetypes.iter().map(|a| a.mean_limit_brl).collect(),
                ),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole command on a tiny population against the real Postgres at DATABASE_URL: it
    /// cannot rot silently.
    #[tokio::test]
    async fn a_tiny_run_writes_findings_and_charts_that_show_the_built_in_structure() {
        let out = tempfile::tempdir().unwrap();
        let args = InsightsArgs {
            server: ScratchServer {
                database_url: std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            },
            out: out.path().to_path_buf(),
            seed: 3,
            people_per_archetype: 2,
            days: 1,
            reading_minutes: 10,
        };
        let f = run(&args).await.unwrap();
        assert_eq!(f.run.people, 10);
        // 1 day at one reading every 10 minutes, for each of 10 people.
        assert_eq!(f.run.readings_stored, 10 * 144);
        assert_eq!(f.archetypes.len(), Archetype::ALL.len());
        assert!(f.archetypes.iter().all(|a| a.people == 2));
        assert_eq!(f.hours.len(), 24);
        assert_eq!(f.stress_by_hour.len(), Archetype::ALL.len());
        assert_eq!(f.credit.recomputed_equal, f.credit.people);
        assert_eq!(f.people.len(), 10);
        let of = |a: Archetype| {
            f.archetypes
                .iter()
                .find(|x| x.archetype == a.as_str())
                .unwrap()
        };
        let (calm, anxious) = (of(Archetype::CalmSaver), of(Archetype::AnxiousWorrier));
        assert!(
            anxious.mean_stress > calm.mean_stress,
            "{anxious:?} vs {calm:?}"
        );
        assert!(anxious.outflow_to_inflow > calm.outflow_to_inflow);
        assert!(of(Archetype::IrregularEarner).income_cv > calm.income_cv);
        for name in std::iter::once("findings.json").chain(CHARTS) {
            let written = std::fs::read_to_string(out.path().join(name)).unwrap();
            assert!(!written.is_empty(), "{name}");
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("findings.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["run"]["seed"], 3);
    }
}
