//! The daemon as a whole, below any one connection: its settings ([`config`]), the state
//! every thread shares ([`state`]) with the limits it enforces ([`clients`],
//! [`worker_slots`]) and the blocking connections it must reach ([`live`]), what it reports
//! ([`metrics`], the process's own figures: [`process`]; lines a client can
//! cause, at a bounded rate: [`protocol_api::throttle`]; the logger and where its lines go
//! without holding a loop: [`logger`], [`log_writer`]),
//! how it talks to systemd ([`notify`]), and the main thread's
//! signals and stop ([`supervisor`]). Nothing here knows HTTP/1.1 or the switch: those
//! layers ([`crate::http1`], [`crate::switch`]) build on this one.

pub mod clients;
pub mod config;
pub mod history;
pub mod live;
pub mod log_writer;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod worker_slots;
