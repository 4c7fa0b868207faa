//! Progress of long command-line runs, on stderr, and only when stderr is a
//! terminal: a pipe or a log file gets no bar, no escape codes, nothing but
//! the messages it always gets.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` input bytes (a spinner counting bytes when the total
/// is unknown), hidden unless stderr is a terminal.
pub fn bytes(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(
                "{wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                .expect("a valid template"),
        ),
    };
    // Redrawn on a timer too, so a slow block still shows the run is alive.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
