//! The main thread once the daemon runs: it waits for signals, ends blocking connections
//! that sit idle, and runs the stop: every event loop and worker told at once, the grace
//! period, then whatever is left closed.

use crate::daemon::notify::Notifier;
use crate::daemon::state::Shared;
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(0);
/// While stopping: how often to look whether everything has finished.
const STOP_CHECK: Duration = Duration::from_millis(20);
/// After the grace period: how long to wait for plugins to return from their dead sockets.
const FINAL_WAIT: Duration = Duration::from_secs(2);

/// Gives the heap back once open connections have fallen well below their peak ([`sys`]'s
/// `trim_heap`): after 2,400 TLS connections of one address had come and gone, the
/// daemon's RSS stayed at 85-141 MiB instead of 9.5, for good (an attacker's review), which
/// a container's memory limit counts. Looked at on the supervisor's tick (a second at
/// most); trims when connections fell by [`HeapTrim::FALL`] and to half their peak, and
/// at most every [`HeapTrim::EVERY`].
///
/// [`sys`]: crate::sys
struct HeapTrim {
    /// The most connections open at a look since the last trim.
    peak: usize,
    last: Option<Instant>,
}

impl HeapTrim {
    const FALL: usize = 256;
    const EVERY: Duration = Duration::from_secs(10);

    /// Whether to trim now, with `open` connections: the decision, apart from the call.
    fn look(&mut self, open: usize, now: Instant) -> bool {
        self.peak = self.peak.max(open);
        let fell = self.peak - open >= Self::FALL && open <= self.peak / 2;
        let due = self.last.is_none_or(|last| now >= last + Self::EVERY);
        if !(fell && due) {
            return false;
        }
        self.peak = open;
        self.last = Some(now);
        true
    }
}

/// Why the daemon ended other than by a stop signal.
#[derive(Debug)]
pub struct Failed(pub String);

/// Runs until the stop is over. `loops` are the event-loop threads.
pub fn run(
    shared: &'static Shared,
    mut signals: Signals,
    loops: Vec<JoinHandle<io::Result<()>>>,
    notifier: &Notifier,
) -> Result<(), Failed> {
    let mut poll = Poll::new().map_err(|e| Failed(e.to_string()))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| Failed(e.to_string()))?;
    let mut events = Events::with_capacity(8);
    // Blocking connections are checked for idleness a few times per idle period.
    let reap_every =
        (shared.config.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_reap = Instant::now() + reap_every;
    let mut next_watchdog = notifier
        .watchdog_every()
        .map(|every| Instant::now() + every);
    // The stop signal that came and when its stop begins (after SWITCHYARD_STOP_DELAY_MS).
    let mut stop_at: Option<(i32, Instant)> = None;
    let mut heap = HeapTrim {
        peak: 0,
        last: None,
    };
    loop {
        let wait = match (shared.stop_deadline(), stop_at) {
            (Some(_), _) => STOP_CHECK,
            (None, Some((_, at))) => at.min(next_reap).saturating_duration_since(Instant::now()),
            (None, None) => next_reap.saturating_duration_since(Instant::now()),
        };
        let wait = next_watchdog.map_or(wait, |at| {
            wait.min(at.saturating_duration_since(Instant::now()))
        });
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Failed(format!("waiting for signals: {e}")));
            }
        }
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_watchdog, notifier.watchdog_every()) {
            if now >= at {
                notifier.send("WATCHDOG=1");
                next_watchdog = Some(now + every);
            }
        }
        if !events.is_empty() {
            on_signal(shared, &mut signals, now, notifier, &mut stop_at);
        }
        if let Some((signal, at)) = stop_at {
            if now >= at && !shared.is_stopping() {
                stop(shared, signal, now);
            }
        }
        if now >= next_reap {
            let ended = shared.live.end_idle(shared.config.idle);
            for _ in 0..ended {
                shared.metrics.ended_idle();
            }
            next_reap = now + reap_every;
            if heap.look(shared.open_connections(), now) {
                let began = Instant::now();
                crate::sys::trim_heap();
                log::debug!(
                    "connections fell to {}: heap given back in {:?}",
                    shared.open_connections(),
                    began.elapsed()
                );
            }
        }
        if let Some(loop_failed) = loops.iter().position(|l| l.is_finished()) {
            if !shared.is_stopping() {
                let why = finished_why(loops, loop_failed);
                return Err(Failed(format!("event loop {loop_failed} ended: {why}")));
            }
        }
        let Some(deadline) = shared.stop_deadline() else {
            continue;
        };
        if loops.iter().all(JoinHandle::is_finished) && shared.worker_slots.busy() == 0 {
            log::info!(
                "stopped: every connection finished; {}",
                shared.metrics.summary()
            );
            return Ok(());
        }
        if now >= deadline {
            end_everything(shared, loops);
            log::info!("stopped; {}", shared.metrics.summary());
            return Ok(());
        }
    }
}

fn finished_why(mut loops: Vec<JoinHandle<io::Result<()>>>, index: usize) -> String {
    match loops.swap_remove(index).join() {
        Ok(Ok(())) => "without an error".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "it panicked".into(),
    }
}

fn on_signal(
    shared: &'static Shared,
    signals: &mut Signals,
    now: Instant,
    notifier: &Notifier,
    stop_at: &mut Option<(i32, Instant)>,
) {
    let pending: Vec<i32> = signals.pending().collect();
    for signal in pending {
        match (signal, *stop_at) {
            (libc::SIGHUP, None) => reload(shared, notifier),
            (libc::SIGHUP, Some(_)) => log::warn!("SIGHUP while stopping: no reload"),
            (_, None) => {
                notifier.send("STOPPING=1");
                shared.drain();
                let delay = shared.config.stop_delay;
                if !delay.is_zero() {
                    log::info!(
                        "stop signal {signal}: /readyz answers 503; new connections are served for {delay:?} more (SWITCHYARD_STOP_DELAY_MS), then the stop begins"
                    );
                }
                *stop_at = Some((signal, now + delay));
            }
            (_, Some(_)) if !shared.is_stopping() => {
                log::warn!("second stop signal: the stop begins now");
                *stop_at = Some((signal, now));
            }
            (_, Some(_)) => {
                log::warn!("second stop signal: closing everything now");
                shared.stop(now);
            }
        }
    }
}

/// SIGHUP: the plugin folder read again as a new generation, which new requests are routed
/// with from now on; connections already switched keep theirs. Told to systemd as
/// `RELOADING=1` then `READY=1` (`Type=notify` or `notify-reload`).
fn reload(shared: &'static Shared, notifier: &Notifier) {
    notifier.send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
    if let Some(tls) = &shared.tls {
        reload_certificates(shared, tls);
    }
    let current = shared.registry();
    match crate::plugin::reload(&shared.config.plugin_dir, current) {
        Ok((next, report)) => {
            let ok = report.failed.is_empty();
            let next: &'static crate::plugin::Registry = Box::leak(Box::new(next));
            shared.set_registry(next);
            shared.metrics.reloaded(ok);
            match ok {
                true => log::info!("{}", report.summary(next.generation)),
                false => log::error!("{}", report.summary(next.generation)),
            }
        }
        Err(why) => {
            shared.metrics.reloaded(false);
            log::error!(
                "reload failed: {why}; generation {} serves on",
                current.generation
            );
        }
    }
    notifier.send("READY=1");
}

/// The certificates and keys read again: new handshakes use them; a set that does not
/// load leaves the one in service (and counts as a failed reload).
fn reload_certificates(shared: &Shared, tls: &crate::tls::Tls) {
    match tls.reload() {
        Ok(warnings) => {
            for warning in warnings {
                log::warn!("{warning}");
            }
            log::info!(
                "TLS certificates read again; new handshakes use: {}",
                tls.describe().join("; ")
            );
        }
        Err(why) => {
            shared.metrics.reloaded(false);
            log::error!("TLS certificates not reloaded: {why}; the ones in service stay");
        }
    }
}

/// The stop begins: the listeners close, connections are told, the grace period runs.
fn stop(shared: &'static Shared, signal: i32, now: Instant) {
    let grace = shared.config.shutdown_grace;
    let metrics = &shared.metrics;
    let http = metrics
        .http_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(0);
    let upgraded = metrics
        .event_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(0) as usize
        + shared.worker_slots.busy();
    // Stopping before the line says so: a request read after the line is answered as
    // stopping (a test that waited for the line saw a loop not yet told, on a loaded host).
    shared.stop(now + grace);
    log::info!(
        "stopping (signal {signal}): no new connections; {http} HTTP and {upgraded} upgraded connection(s) get up to {grace:?} to finish",
    );
}

/// The grace period is over: end what is left, give plugins a moment to return.
fn end_everything(shared: &'static Shared, loops: Vec<JoinHandle<io::Result<()>>>) {
    let metrics = &shared.metrics;
    let http = metrics
        .http_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(0);
    let upgraded = metrics
        .event_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(0) as usize
        + shared.live.len();
    log::warn!("grace period over: closing {http} HTTP and {upgraded} upgraded connection(s)");
    shared.end();
    for handle in loops {
        let _ = handle.join();
    }
    let until = Instant::now() + FINAL_WAIT;
    while shared.worker_slots.busy() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if shared.worker_slots.busy() > 0 {
        log::warn!(
            "{} plugin call(s) still running; exiting anyway",
            shared.worker_slots.busy()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_trimmed_once_connections_fell_far_and_to_half_their_peak() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut heap = HeapTrim {
            peak: 0,
            last: None,
        };
        assert!(!heap.look(2_000, at(0)));
        assert!(!heap.look(1_100, at(1)), "not yet half");
        assert!(heap.look(900, at(2)), "2,000 to 900");
        assert!(!heap.look(0, at(3)), "not again within ten seconds");
        assert!(heap.look(0, at(12)), "900 to 0, ten seconds on");
        assert!(!heap.look(200, at(30)));
        assert!(!heap.look(0, at(31)), "a fall of 200 is not worth it");
    }
}
