//! Simulations around the real components: the all-in-one [`demo`], a [`fleet`] of phones, the
//! [`mobile`] app, the in-process [`stack`] the demo and the end-to-end tests stand on, the
//! [`bench`]marks, and the [`insights`] run behind docs/INSIGHTS.md. People's finances come from
//! [`history`], shaped by the same archetype as their sensor.

pub mod bench;
pub mod demo;
pub mod fleet;
pub mod history;
pub mod insights;
pub mod mobile;
pub mod people;
pub mod stack;
