//! What an `exec-shared:` route's program wrote that some client has not taken yet: one
//! copy for the route, each client at its own place in it (an offset into everything the
//! program wrote since the route started), as a log is read by many readers.
//!
//! A copy per client cost the route what its clients held together: 1,000 clients that
//! never read held 373 MiB (an attacker's review). Kept once, the backlog holds what lies
//! between the slowest client and the program, which the broadcaster bounds by dropping a
//! client that falls too far behind. No I/O here: the broadcaster writes what
//! [`Backlog::after`] gives it and says how far each client got.

use std::collections::VecDeque;

/// Below this, a backlog's memory is kept for the next burst rather than given back.
const KEEP: usize = 64 * 1024;

#[derive(Default)]
pub struct Backlog {
    bytes: VecDeque<u8>,
    /// Where `bytes` begins in all the output since the route started.
    start: u64,
}

impl Backlog {
    /// Where the output ends so far: a client that has taken this much has it all.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// More output, after all before it.
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
    }

    /// What a client that has taken `from` bytes takes next: the rest of the output, or a
    /// first part of it (the backlog wraps around; the next call gives what follows).
    /// Empty once `from` is the end. `from` is never before what was forgotten: a client
    /// there would have held it.
    pub fn after(&self, from: u64) -> &[u8] {
        debug_assert!(from >= self.start, "a client is behind what was forgotten");
        let at = (from.saturating_sub(self.start) as usize).min(self.bytes.len());
        let (first, second) = self.bytes.as_slices();
        match at < first.len() {
            true => &first[at..],
            false => &second[at - first.len()..],
        }
    }

    /// Forgets what every client has taken (all before `oldest`, the slowest client's
    /// place; the end when there is no client), and gives the memory of a burst back once
    /// it is gone.
    pub fn forget_before(&mut self, oldest: u64) {
        let taken = (oldest.saturating_sub(self.start) as usize).min(self.bytes.len());
        self.bytes.drain(..taken);
        self.start += taken as u64;
        if self.bytes.capacity() > KEEP && self.bytes.capacity() > 4 * self.bytes.len() {
            self.bytes.shrink_to(self.bytes.len().max(KEEP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything from `from` to the end, as a client taking piece after piece gets it.
    fn all_after(backlog: &Backlog, mut from: u64) -> Vec<u8> {
        let mut got = Vec::new();
        while from < backlog.end() {
            let piece = backlog.after(from);
            assert!(!piece.is_empty());
            got.extend_from_slice(piece);
            from += piece.len() as u64;
        }
        got
    }

    #[test]
    fn each_reader_gets_the_output_from_its_own_place_in_order() {
        let mut backlog = Backlog::default();
        backlog.push(b"hello ");
        let slow = 0;
        let fast = backlog.end();
        backlog.push(b"world\n");
        assert_eq!(all_after(&backlog, slow), b"hello world\n");
        assert_eq!(all_after(&backlog, fast), b"world\n");
        assert!(backlog.after(backlog.end()).is_empty(), "caught up");
    }

    #[test]
    fn what_every_reader_took_is_forgotten_and_places_stay_valid() {
        let mut backlog = Backlog::default();
        backlog.push(b"0123456789");
        backlog.forget_before(4);
        assert_eq!((backlog.bytes.len(), backlog.end()), (6, 10));
        assert_eq!(all_after(&backlog, 4), b"456789");
        assert_eq!(all_after(&backlog, 7), b"789");
        backlog.push(b"ab");
        backlog.forget_before(backlog.end());
        assert_eq!((backlog.bytes.len(), backlog.end()), (0, 12));
        assert!(backlog.after(12).is_empty());
    }

    /// Pushed and forgotten in turns, the bytes wrap around inside the backlog: a reader
    /// still gets them in order, in two pieces.
    #[test]
    fn output_that_wraps_around_comes_in_order() {
        let mut backlog = Backlog::default();
        let mut reader = 0u64;
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for round in 0..200u32 {
            let chunk: Vec<u8> = (0..997u32).map(|i| (round * 7 + i) as u8).collect();
            backlog.push(&chunk);
            expected.extend_from_slice(&chunk);
            // Take part of what waits, then forget it.
            let piece = backlog.after(reader);
            let n = piece.len().min(900);
            got.extend_from_slice(&piece[..n]);
            reader += n as u64;
            backlog.forget_before(reader);
        }
        got.extend(all_after(&backlog, reader));
        assert_eq!(got, expected);
    }

    #[test]
    fn a_bursts_memory_is_given_back_once_taken() {
        let mut backlog = Backlog::default();
        backlog.push(&vec![7u8; 4 << 20]);
        backlog.forget_before(backlog.end());
        assert!(
            backlog.bytes.capacity() <= 4 * KEEP,
            "{}",
            backlog.bytes.capacity()
        );
    }
}
