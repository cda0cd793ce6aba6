//! Simulations around the real components: the all-in-one [`demo`], a [`fleet`] of phones, the
//! [`mobile`] app, the in-process [`stack`] the demo and the end-to-end tests stand on, and the
//! [`bench`]marks.

pub mod bench;
pub mod demo;
pub mod fleet;
pub mod history;
pub mod mobile;
pub mod people;
pub mod stack;
