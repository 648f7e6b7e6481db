//! Sorted runs of `(key, tag)` entries, front-coded: each key is stored as the length it
//! shares with the key before it and the bytes that differ. Index keys are long and alike
//! (`out/wf-abc-123/step-456/out.tgz`), so a run costs about a sixth of the keys' text; a full
//! key is stored every [`RESTART`] entries, where a search starts decoding.

use std::cmp::Ordering;

/// Entries between full keys: the most a lookup decodes after its binary search.
const RESTART: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the bytes that differ from the previous key, in `Run::bytes`.
    off: u32,
    /// Bytes shared with the previous key (0 at a restart).
    shared: u16,
    /// Bytes that differ.
    len: u16,
    tag: u32,
}

/// An immutable sorted run. Keys may repeat (one entry per tag).
#[derive(Debug, Default)]
pub(super) struct Run {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// The longest key a run stores; longer ones are refused by the builder's caller.
pub(super) const MAX_KEY: usize = u16::MAX as usize;

impl Run {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, for the index's size gauge.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    /// Builds a run from entries in key order.
    #[cfg(test)]
    pub(super) fn build<'k>(sorted: impl IntoIterator<Item = (&'k [u8], u32)>) -> Run {
        let mut b = Builder::default();
        for (k, t) in sorted {
            b.push(k, t);
        }
        b.finish()
    }

    fn full_key(&self, restart: usize) -> &[u8] {
        let e = self.entries[restart * RESTART];
        &self.bytes[e.off as usize..e.off as usize + e.len as usize]
    }

    /// A cursor at the first entry whose key is not less than `target`.
    pub(super) fn seek(&self, target: &[u8]) -> Cursor<'_> {
        let restarts = self.entries.len().div_ceil(RESTART);
        // The last restart whose key is below the target: the first entry >= target is in
        // its group or at the next restart.
        let p = partition_point(restarts, |r| self.full_key(r) < target);
        let mut c = Cursor {
            run: self,
            next: p.saturating_sub(1) * RESTART,
            key: Vec::new(),
        };
        while c.peek().is_some_and(|(k, _)| k < target) {
            c.advance();
        }
        c
    }

    pub(super) fn cursor(&self) -> Cursor<'_> {
        Cursor {
            run: self,
            next: 0,
            key: Vec::new(),
        }
    }
}

fn partition_point(n: usize, mut below: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Reads a run forward from a position; `key` holds the key of the entry before `next`.
#[derive(Debug)]
pub(super) struct Cursor<'r> {
    run: &'r Run,
    next: usize,
    key: Vec<u8>,
}

impl Cursor<'_> {
    /// The key and tag at the cursor, decoded into the cursor's buffer, without moving.
    pub(super) fn peek(&mut self) -> Option<(&[u8], u32)> {
        let e = *self.run.entries.get(self.next)?;
        self.key.truncate(e.shared as usize);
        self.key
            .extend_from_slice(&self.run.bytes[e.off as usize..e.off as usize + e.len as usize]);
        Some((&self.key, e.tag))
    }

    pub(super) fn advance(&mut self) {
        self.next += 1;
    }

    /// The entry at the cursor, then moves past it.
    pub(super) fn next_entry(&mut self) -> Option<(&[u8], u32)> {
        self.peek()?;
        self.next += 1;
        Some((&self.key, self.run.entries[self.next - 1].tag))
    }
}

#[derive(Default)]
pub(super) struct Builder {
    run: Run,
    prev: Vec<u8>,
}

impl Builder {
    /// Appends an entry; keys must come in order and be at most [`MAX_KEY`] bytes.
    pub(super) fn push(&mut self, key: &[u8], tag: u32) {
        debug_assert!(key.len() <= MAX_KEY);
        debug_assert!(self.prev.as_slice() <= key || self.run.entries.is_empty());
        let shared = if self.run.entries.len().is_multiple_of(RESTART) {
            0
        } else {
            self.prev
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let off = u32::try_from(self.run.bytes.len()).expect("a run holds less than 4 GiB");
        self.run.bytes.extend_from_slice(&key[shared..]);
        self.run.entries.push(Entry {
            off,
            shared: shared as u16,
            len: (key.len() - shared) as u16,
            tag,
        });
        self.prev.clear();
        self.prev.extend_from_slice(key);
    }

    pub(super) fn finish(mut self) -> Run {
        self.run.bytes.shrink_to_fit();
        self.run.entries.shrink_to_fit();
        self.run
    }
}

/// Merges runs into one, in key order, keeping the entries `keep` accepts.
pub(super) fn merge(runs: &[&Run], mut keep: impl FnMut(u32) -> bool) -> Run {
    let mut cursors: Vec<Cursor<'_>> = runs.iter().map(|r| r.cursor()).collect();
    let mut out = Builder::default();
    loop {
        // The cursor with the smallest key (few runs: a linear pick is cheapest).
        let mut best: Option<usize> = None;
        for i in 0..cursors.len() {
            if cursors[i].peek().is_none() {
                continue;
            }
            best = match best {
                Some(b) if cursors[i].key.cmp(&cursors[b].key) != Ordering::Less => Some(b),
                _ => Some(i),
            };
        }
        let Some(b) = best else { break };
        let (k, t) = cursors[b].next_entry().expect("peeked");
        if keep(t) {
            out.push(k, t);
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(run: &Run) -> Vec<(String, u32)> {
        let mut c = run.cursor();
        let mut out = Vec::new();
        while let Some((k, t)) = c.next_entry() {
            out.push((String::from_utf8(k.to_vec()).unwrap(), t));
        }
        out
    }

    #[test]
    fn a_run_reads_back_and_seeks() {
        let mut input: Vec<String> = (0..100).map(|i| format!("out/wf-{i:03}/a.tgz")).collect();
        input.push("out/wf-050/a.tgz".into());
        input.sort();
        let run = Run::build(
            input
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_bytes(), i as u32)),
        );
        let back: Vec<String> = keys(&run).into_iter().map(|(k, _)| k).collect();
        assert_eq!(back, input);
        assert!(run.bytes.len() < input.iter().map(String::len).sum::<usize>() / 2);
        for probe in [
            "",
            "out/wf-050/a.tgz",
            "out/wf-050/",
            "out/wf-0505",
            "zzz",
            "out/wf-017",
        ] {
            let mut c = run.seek(probe.as_bytes());
            let got = c
                .peek()
                .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap());
            let want = input.iter().find(|k| k.as_str() >= probe).cloned();
            assert_eq!(got, want, "seek {probe}");
        }
        let mut c = run.seek(b"out/wf-050/a.tgz");
        assert_eq!(c.next_entry().map(|(_, t)| t), Some(50));
        assert_eq!(c.next_entry().map(|(_, t)| t), Some(51), "the repeated key");
        assert!(Run::default().seek(b"x").peek().is_none());
    }

    #[test]
    fn merging_keeps_order_and_drops_what_it_is_told() {
        let a = Run::build([(&b"a"[..], 1), (b"c", 3), (b"e", 5)]);
        let b = Run::build([(&b"b"[..], 2), (b"c", 4), (b"d", 6)]);
        let m = merge(&[&a, &b], |t| t != 6);
        let got: Vec<_> = keys(&m)
            .into_iter()
            .map(|(k, t)| format!("{k}{t}"))
            .collect();
        assert_eq!(got, ["a1", "b2", "c3", "c4", "e5"]);
    }
}
