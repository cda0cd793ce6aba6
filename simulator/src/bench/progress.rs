//! Progress bars on stderr, drawn only when a person is watching: piped into a file or a CI
//! log, a bar is noise between the report lines.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Bars when stderr is a terminal, none otherwise.
    pub fn for_stderr() -> Self {
        Self {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// A bar counting up to `total` (hidden when not on a terminal, so callers never check).
    pub fn counter(&self, what: &str, total: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        // The template is a constant, so only a typo could make it fail; a plain bar will do then.
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} {elapsed} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_owned());
        bar
    }

    /// A spinner for a wait whose length is known only in time.
    pub fn timer(&self, what: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{prefix:>16} {spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A line between the bars, for the person watching; nothing when nobody is.
    pub fn note(&self, line: &str) {
        if self.enabled {
            eprintln!("{line}");
        }
    }
}
