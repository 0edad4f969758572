//! Latency percentiles and the RESULT line.

use std::time::Duration;

pub fn percentile(sorted_micros: &[u32], p: f64) -> u32 {
    if sorted_micros.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted_micros.len() - 1) as f64).round() as usize;
    sorted_micros[rank.min(sorted_micros.len() - 1)]
}

pub fn report(pairs: &[(&str, String)]) {
    let line: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
}

pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}
