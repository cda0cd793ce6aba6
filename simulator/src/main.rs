//! `ecs-simulator`: the demo, a fleet of phones, the mobile app, the benchmarks.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ecs_cloud::model::ModelKind;
use ecs_edge_agent::BrokerUrl;
use ecs_simulator::{
    bench::{self, BenchKind},
    demo::{self, DemoOptions},
    fleet::{self, FleetOptions},
    insights::{self, InsightsArgs},
    stack::{BrokerChoice, StackOptions},
};
use ecs_telemetry::{LogFormat, LogTarget};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ecs-simulator",
    version,
    about = "Empathic Credit System: simulations"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "ECS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in this process and tell its story (needs only Postgres).
    Demo {
        /// Postgres connection string; the database is created when missing.
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/ecs_demo"
        )]
        database_url: String,
        /// Number of people, each with one phone.
        #[arg(long, env = "ECS_DEMO_DEVICES", default_value_t = 3)]
        devices: usize,
        /// Seconds of streaming.
        #[arg(long, env = "ECS_DEMO_DURATION", default_value_t = 5)]
        duration: u64,
        /// Sensor sample rate per phone, in Hz.
        #[arg(long, env = "ECS_SAMPLE_HZ", default_value_t = 10.0)]
        sample_hz: f64,
        /// Seed for histories, sensors and the random risk model.
        #[arg(long, env = "ECS_DEMO_SEED", default_value_t = 7)]
        seed: u64,
        /// The risk model: the explainable scorecard, or the brief's random mock.
        #[arg(long, env = "ECS_MODEL", value_enum, default_value_t = ModelKind::Scorecard)]
        model: ModelKind,
        /// Use a running third-party broker in plain MQTT (e.g. mqtt://127.0.0.1:1883 for
        /// Mosquitto) instead of the embedded one.
        #[arg(long, env = "ECS_DEMO_EXTERNAL_BROKER")]
        external_broker: Option<String>,
        /// Print a JSON summary as the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Provision people and phones through the API, then keep the phones streaming.
    Fleet {
        #[arg(long, env = "ECS_API_URL", default_value = "http://127.0.0.1:8080")]
        api_url: String,
        /// Admin token of the cloud (prefer ECS_ADMIN_TOKEN_FILE).
        #[arg(long, env = "ECS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long, env = "ECS_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// Broker address for the phones.
        #[arg(long, env = "ECS_MQTT_URL", default_value = "mqtts://127.0.0.1:8883")]
        mqtt_url: String,
        /// Directory of the CA (ca.pem, ca.key) issuing device certificates (for mqtts://).
        #[arg(long, env = "ECS_PKI_DIR")]
        pki_dir: Option<PathBuf>,
        #[arg(long, env = "ECS_FLEET_DEVICES", default_value_t = 5)]
        devices: usize,
        /// Where the phones' buffers, certificates and roster.json live.
        #[arg(long, env = "ECS_FLEET_DIR", default_value = "./ecs-fleet")]
        dir: PathBuf,
        #[arg(long, env = "ECS_SAMPLE_HZ", default_value_t = 10.0)]
        sample_hz: f64,
        #[arg(long, env = "ECS_FLEET_SEED", default_value_t = 1)]
        seed: u64,
    },
    /// The people's mobile app: periodically ask for an offer and accept approved ones.
    Mobile {
        #[arg(long, env = "ECS_API_URL", default_value = "http://127.0.0.1:8080")]
        api_url: String,
        /// The fleet's roster (users, their tokens and devices).
        #[arg(
            long,
            env = "ECS_ROSTER_FILE",
            default_value = "./ecs-fleet/roster.json"
        )]
        roster_file: PathBuf,
        /// Seconds between rounds; a person is assessed at most ECS_ASSESSMENTS_PER_HOUR times an
        /// hour (10 by default), so rounds faster than every 6 minutes meet 429s (logged, not
        /// errors).
        #[arg(long, env = "ECS_MOBILE_INTERVAL_SECS", default_value_t = 360)]
        interval_secs: u64,
        /// Accept every approved open offer the person sees, requested or proactive (for demos:
        /// a person tapping "accept").
        #[arg(long, env = "ECS_MOBILE_AUTO_ACCEPT")]
        auto_accept: bool,
        /// Ask for an offer every round (otherwise the app only shows what the cloud sends).
        #[arg(long, env = "ECS_MOBILE_REQUEST_OFFERS", default_value_t = true,
              action = clap::ArgAction::Set)]
        request_offers: bool,
    },
    /// What the emotional data shows: a population of archetypes simulated into a scratch
    /// database through the cloud's own code, assessed, and summed up in findings.json and
    /// SVG charts (docs/INSIGHTS.md).
    Insights(InsightsArgs),
    /// Measure a component under load (build with --release first).
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
    },
}

fn main() -> ExitCode {
    ecs_telemetry::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo {
            database_url,
            devices,
            duration,
            sample_hz,
            seed,
            model,
            external_broker,
            json,
        } => {
            // The demo's stdout is its report; logs go to stderr, quiet unless RUST_LOG says.
            ecs_telemetry::init_logs_with(cli.log_format, LogTarget::Stderr, "warn,rumqttd=off");
            anyhow::ensure!(devices > 0, "--devices must be at least 1");
            let options = DemoOptions {
                stack: StackOptions {
                    database_url,
                    broker: match external_broker {
                        Some(url) => BrokerChoice::External(url),
                        None => BrokerChoice::Embedded,
                    },
                    model,
                    model_seed: Some(seed),
                },
                devices,
                duration: Duration::from_secs(duration),
                sample_rate_hz: sample_hz,
                seed,
                settle_timeout: Duration::from_secs(60),
            };
            let report = demo::run(&options, &mut |line| println!("{line}")).await?;
            println!();
            if report.ok {
                println!(
                    "All {} readings stored exactly once; every accepted offer reached its phone.",
                    report.readings_stored
                );
            } else {
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Fleet {
            api_url,
            admin_token,
            admin_token_file,
            mqtt_url,
            pki_dir,
            devices,
            dir,
            sample_hz,
            seed,
        } => {
            ecs_telemetry::init_logs(cli.log_format);
            let admin_token = match admin_token_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim_end()
                    .to_owned(),
                None => admin_token.context("set ECS_ADMIN_TOKEN or ECS_ADMIN_TOKEN_FILE")?,
            };
            let mqtt_url: BrokerUrl = mqtt_url.parse()?;
            let shutdown = shutdown_on_signal();
            fleet::run(
                FleetOptions {
                    api_url,
                    admin_token,
                    mqtt_url,
                    pki_dir,
                    devices,
                    dir,
                    sample_rate_hz: sample_hz,
                    seed,
                },
                shutdown,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mobile {
            api_url,
            roster_file,
            interval_secs,
            auto_accept,
            request_offers,
        } => {
            ecs_telemetry::init_logs(cli.log_format);
            let shutdown = shutdown_on_signal();
            let options = ecs_simulator::mobile::app::MobileOptions {
                interval: Duration::from_secs(interval_secs.max(1)),
                auto_accept,
                request_offers,
            };
            ecs_simulator::mobile::app::run(&api_url, &roster_file, options, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Insights(args) => {
            // sqlx warns of every analysis query over a second: expected here, and not news.
            ecs_telemetry::init_logs_with(cli.log_format, LogTarget::Stderr, "warn,sqlx=error");
            let started = std::time::Instant::now();
            let findings = insights::run(&args).await?;
            for line in findings.summary() {
                println!("{line}");
            }
            println!(
                "Wrote {} in {:.0} s.",
                args.out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { kind } => {
            // stdout is the report, as for the demo. The ingest and API benches embed the broker,
            // whose router logs its own connection bookkeeping as errors: quiet, as in the demo.
            let filter = match kind {
                BenchKind::Ingest(_)
                | BenchKind::Api(_)
                | BenchKind::Notify(_)
                | BenchKind::Edge(_) => "warn,rumqttd=off",
                BenchKind::Broker(_) => "warn",
            };
            ecs_telemetry::init_logs_with(cli.log_format, LogTarget::Stderr, filter);
            match kind {
                BenchKind::Broker(args) => {
                    // Ctrl-C drops the benchmark, and with it the broker child (killed on drop).
                    let report = tokio::select! {
                        report = bench::broker::run(&args) => report?,
                        () = ecs_telemetry::shutdown_signal() => {
                            anyhow::bail!("interrupted; the broker child was killed")
                        }
                    };
                    print_report(&report.summary(), &report, args.json)
                }
                // These handle Ctrl-C themselves: they drop their scratch database first.
                BenchKind::Ingest(args) => {
                    let report = bench::ingest::run(&args).await?;
                    print_report(&report.summary(), &report, args.json)
                }
                BenchKind::Api(args) => {
                    let report = bench::api::run(&args).await?;
                    print_report(&report.summary(), &report, args.json)
                }
                BenchKind::Notify(args) => {
                    let report = bench::notify::run(&args).await?;
                    print_report(&report.summary(), &report, args.json)
                }
                BenchKind::Edge(args) => {
                    let report = bench::edge::run(&args).await?;
                    print_report(&report.summary(), &report, args.json)
                }
            }
        }
    }
}

/// A benchmark's readable summary on stdout, and with `json` its whole report as the last line.
fn print_report(
    summary: &[String],
    report: &impl serde::Serialize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    for line in summary {
        println!("{line}");
    }
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        ecs_telemetry::shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
