//! `ecs-simulator bench notify`: how long from a person accepting an offer (the request sent)
//! to their phone holding the notification that the new limit is in force, against how long
//! one MQTT hop through Mosquitto takes at the same rate.
//!
//! One run, on a scratch database of its own ([`with_scratch`]):
//! 1. **stack**: the demo's system in this process ([`Stack`]: embedded broker over mutual TLS,
//!    the cloud with its worker and notifier), and `--people` people provisioned through the
//!    API, each with a phone (a real edge agent) online.
//! 2. **accepts** ([`accepts`]): in rounds, every person asks for an offer (not timed), then
//!    the approved offers are accepted at a steady `--rate`; each accept's clock starts when its
//!    request is sent and stops at the time the phone's inbox stamped the `offer_applied`
//!    notification on arrival (same process, same clock; the inbox keeps milliseconds).
//!    Everything the path holds is in the figure: the accept's transaction and NOTIFY, the
//!    worker's wake-up and transaction, the notifier's pass, the broker, TLS, the phone.
//! 3. **reference** ([`reference`]): the same number of QoS 1 messages at the same rate through
//!    Mosquitto, publisher and subscriber in this process: the floor a notification over MQTT
//!    cannot go under.
//!
//! A notification that has not arrived `--settle-secs` after its round's last accept is lost.

pub mod accepts;
pub mod reference;
pub mod report;

use anyhow::{Context, bail};

use self::report::{NotifyReport, RunSettings};
use crate::bench::progress::Progress;
use crate::bench::scratch::{ScratchDatabase, ScratchServer, with_scratch};
use crate::stack::with_ready_stack;

/// Assessments the stack's cloud allows a person per hour (`ECS_ASSESSMENTS_PER_HOUR` in
/// `stack::cloud_settings`): each round costs every person one.
const ASSESSMENTS_PER_PERSON: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct NotifyBenchArgs {
    // `--database-url`: the server the scratch database is made on.
    #[command(flatten)]
    pub server: ScratchServer,
    /// People, each with one phone online.
    #[arg(long, default_value_t = 25)]
    pub people: usize,
    /// Offers accepted in all (spread over the people, in rounds of one accept per person).
    #[arg(long, default_value_t = 200)]
    pub accepts: usize,
    /// Accepts per second within a round.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long a round waits for its last notifications before counting them lost.
    #[arg(long, default_value_t = 30)]
    pub settle_secs: u64,
    /// The reference broker (plain MQTT).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mosquitto: String,
    /// Print a JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl NotifyBenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.people == 0 || self.accepts == 0 || self.settle_secs == 0 {
            bail!("--people, --accepts and --settle-secs must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000.0) {
            bail!("--rate must be within (0, 10000] accepts per second");
        }
        if self.rounds() > ASSESSMENTS_PER_PERSON {
            bail!(
                "{} accepts over {} people is {} rounds, and each person may be assessed {} \
                 times an hour: raise --people",
                self.accepts,
                self.people,
                self.rounds(),
                ASSESSMENTS_PER_PERSON
            );
        }
        Ok(())
    }

    fn rounds(&self) -> usize {
        self.accepts.div_ceil(self.people)
    }
}

/// Runs the benchmark. The scratch database is dropped however the run ends (Ctrl-C included).
pub async fn run(args: &NotifyBenchArgs) -> anyhow::Result<NotifyReport> {
    crate::bench::warn_if_debug_build();
    args.check()?;
    with_scratch(&args.server.database_url, async |scratch, progress| {
        run_in(args, scratch, progress).await
    })
    .await
}

async fn run_in(
    args: &NotifyBenchArgs,
    scratch: &ScratchDatabase,
    progress: &Progress,
) -> anyhow::Result<NotifyReport> {
    let measured = with_ready_stack(scratch.url(), async |stack| {
        accepts::run(stack, args, progress).await
    })
    .await?;

    let bar = progress.timer("mosquitto");
    let reference = reference::run(&args.mosquitto, args.accepts, args.rate).await;
    bar.finish_and_clear();
    let reference = reference.with_context(|| {
        format!(
            "measuring the reference on Mosquitto at {} (is it running?)",
            args.mosquitto
        )
    })?;
    Ok(NotifyReport::new(
        RunSettings {
            people: args.people,
            accepts: args.accepts,
            rate: args.rate,
            release_build: !cfg!(debug_assertions),
        },
        &measured,
        reference,
    ))
}
