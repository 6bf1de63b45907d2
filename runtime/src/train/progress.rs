//! The progress display of a training epoch: an indicatif bar on a
//! terminal, else a log line every tenth of an epoch (CI logs, pipes).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// One epoch's progress display.
pub(super) struct Progress {
    /// Shown at all (rank 0 of a data-parallel run, or the only process).
    shown: bool,
    bar: Option<ProgressBar>,
    steps: usize,
    label: String,
}

impl Progress {
    /// The display of epoch `epoch` (from 1) of `epochs`, `steps` steps
    /// long, starting at step `start` (a resumed epoch); nothing unless
    /// `shown`.
    pub(super) fn new(
        epoch: usize,
        epochs: usize,
        steps: usize,
        start: usize,
        shown: bool,
    ) -> Self {
        let label = format!("epoch {epoch}/{epochs}");
        let bar = (shown && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps as u64);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(label.clone());
            bar.set_position(start as u64);
            bar
        });
        Self {
            shown,
            bar,
            steps,
            label,
        }
    }

    /// Shows that `step` steps are done, with `msg` (loss, accuracy, speed).
    pub(super) fn update(&self, step: usize, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(msg.to_string());
            }
            None if !self.shown => {}
            None => {
                let every = (self.steps / 10).max(1);
                if step.is_multiple_of(every) || step == self.steps {
                    eprintln!("{} step {step}/{}: {msg}", self.label, self.steps);
                }
            }
        }
    }

    /// Clears the bar (before the epoch's summary line).
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
