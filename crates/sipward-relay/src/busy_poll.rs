//! When the relay thread may poll its sockets instead of sleeping (`[relay] spin_us`).
//!
//! Sleeping between packets costs a wake-up per packet: on a virtual machine an idle
//! CPU halts and must be woken by an interrupt, tens of microseconds at the tail. While
//! media flows, polling for a short window after each piece of work takes the next
//! packet without one. Polling is capped at a share of each 10 ms window: a thread under
//! SCHED_FIFO that never sleeps runs into the kernel's real-time throttling (by default
//! 950 ms of every second) and is then stopped for the rest of the second, which is far
//! worse for media than a wake-up.

use std::time::{Duration, Instant};

/// The span the polling share is counted over.
const WINDOW: Duration = Duration::from_millis(10);
/// The most of a window the thread spends awake and still polls (percent). Well below
/// the kernel's default real-time share (95 %): after polling stops the thread still
/// works between its sleeps, and time spent submitting sends inside a wait counts here
/// as asleep.
const MAX_AWAKE_PERCENT: u32 = 70;

/// Decides, before each wait, whether it returns at once. Time is passed in.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    spin: Duration,
    last_work: Option<Instant>,
    window_start: Instant,
    asleep_in_window: Duration,
}

impl BusyPoll {
    /// Polls for `spin` after each piece of work; zero: always sleeps.
    pub(crate) fn new(spin: Duration, now: Instant) -> Self {
        Self {
            spin,
            last_work: None,
            window_start: now,
            asleep_in_window: Duration::ZERO,
        }
    }

    /// Runs one wait, told whether to return at once (`true`) or may sleep, and counts
    /// the time a sleeping wait took as asleep.
    pub(crate) fn wait<R>(&mut self, wait: impl FnOnce(bool) -> R) -> R {
        if self.spin.is_zero() {
            return wait(false);
        }
        let before = Instant::now();
        let polling = self.should_poll(before);
        let result = wait(polling);
        if !polling {
            self.waited(before, Instant::now());
        }
        result
    }

    /// After a wait: it brought work (`found`), so polling goes on for `spin` from now.
    pub(crate) fn found_work(&mut self, found: bool) {
        if found && !self.spin.is_zero() {
            self.worked(Instant::now());
        }
    }

    /// Whether the next wait should return at once rather than sleep.
    pub(crate) fn should_poll(&mut self, now: Instant) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        let Some(last) = self.last_work else {
            return false;
        };
        if now.saturating_duration_since(last) >= self.spin {
            return false;
        }
        self.roll(now);
        let awake = now
            .saturating_duration_since(self.window_start)
            .saturating_sub(self.asleep_in_window);
        awake < WINDOW * MAX_AWAKE_PERCENT / 100
    }

    /// Something was received or commanded at `now`.
    pub(crate) fn worked(&mut self, now: Instant) {
        self.last_work = Some(now);
    }

    /// The thread waited (could sleep) from `from` to `to`.
    pub(crate) fn waited(&mut self, from: Instant, to: Instant) {
        self.roll(from);
        self.asleep_in_window += to.saturating_duration_since(from);
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.asleep_in_window = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn zero_spin_never_polls() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(Duration::ZERO, t0);
        poll.worked(t0);
        assert!(!poll.should_poll(t0 + US));
    }

    #[test]
    fn polls_only_within_the_spin_after_work() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(100 * US, t0);
        assert!(!poll.should_poll(t0), "no work yet: sleep");
        poll.worked(t0);
        assert!(poll.should_poll(t0 + 99 * US));
        assert!(!poll.should_poll(t0 + 100 * US));
        poll.worked(t0 + 150 * US);
        assert!(poll.should_poll(t0 + 200 * US));
    }

    #[test]
    fn stops_polling_when_awake_for_most_of_a_window() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(100 * US, t0);
        // Work every 10 µs, never asleep: polling stops at 70 % of the window.
        let mut last_polled = None;
        for i in 0..1000u32 {
            let now = t0 + i * 10 * US;
            poll.worked(now);
            if poll.should_poll(now + US) {
                last_polled = Some(i);
            }
        }
        let last = last_polled.expect("polled at first");
        assert!(
            (690..700).contains(&last),
            "stopped polling at {last} x 10 µs, not at 70 % of 10 ms"
        );
        // The next window starts with polling allowed again.
        let next = t0 + WINDOW + 5 * US;
        poll.worked(next);
        assert!(poll.should_poll(next + US));
    }

    #[test]
    fn time_asleep_leaves_room_to_poll() {
        let t0 = Instant::now();
        let mut poll = BusyPoll::new(100 * US, t0);
        // Half of the window asleep: at 9.5 ms only 4.5 ms were awake.
        poll.waited(t0, t0 + 5 * Duration::from_millis(1));
        let now = t0 + 9_500 * US;
        poll.worked(now);
        assert!(poll.should_poll(now + US));
    }
}
