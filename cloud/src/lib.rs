//! The cloud side of the Empathic Credit System.
//!
//! One module per stage of the data's way: [`ingest`] takes device uplinks from the broker and
//! commits them (updating [`features`] in the same transaction), [`model`] turns features into a
//! probability of default, [`policy`] turns that into an offer, [`offers`] applies accepted offers
//! in the background, [`notify`] tells the phone, [`api`] is the REST surface and [`auth`] guards
//! it. [`mqtt`] is the one connection to the broker, through which [`revocations`] tells the broker
//! which devices to cut off; [`app`] wires it all from a [`config::Settings`]. What ingest could
//! never store waits in [`dead_letters`] for an operator to look at and replay. [`analytics`] reads
//! what the data shows (population figures only over groups of at least k people), and
//! [`dashboard`] draws it in the browser.

pub mod analytics;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod dead_letters;
pub mod devices;
pub mod docs;
pub mod error;
pub mod features;
pub mod finance;
pub mod group_commit;
pub mod http_server;
pub mod idempotency;
pub mod ingest;
pub mod keys;
pub mod model;
pub mod mqtt;
pub mod notify;
pub mod offers;
pub mod outbox;
pub mod partitions;
pub mod people;
pub mod policy;
pub mod pricing;
pub mod privacy;
pub mod proactive;
pub mod retention;
pub mod revocations;

pub use error::Error;

/// The embedded schema migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
