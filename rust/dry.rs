//! DRY, "don't repeat yourself" (koboldcpp PR 982 by pi6am, as llama.cpp ships it in
//! `llama_sampler_dry_apply`): a token that would extend a repeat of the history of length
//! `n >= allowed_length` loses `multiplier * base^(n - allowed_length)` from its logit.
//! Sequence breakers (token-id sequences) end the repeat a match may reach back over.
//!
//! The cost is linear in the scanned history: the repeat lengths of every suffix come from a
//! Z-function run backwards over it, not from a search per token of the vocabulary.

use crate::elem::Real;
use crate::filter::each_position_where;
use crate::patch::Logits;

/// The sequence breakers of a row, indexed by their first token (the "head"; llama.cpp's
/// processed multimap from head to tail).
#[derive(Debug, Default, Clone)]
pub struct Breakers {
    /// `(head, start, end)`: the tail is `tails[start..end]`; sorted by head.
    heads: Vec<(u32, usize, usize)>,
    tails: Vec<u32>,
}

impl Breakers {
    /// The breakers given as non-empty sequences of valid ids.
    pub fn new<'a>(seqs: impl Iterator<Item = &'a [i64]>) -> Self {
        let mut b = Breakers::default();
        for seq in seqs {
            if let Some((&head, tail)) = seq.split_first() {
                let start = b.tails.len();
                b.tails.extend(tail.iter().map(|&t| t as u32));
                b.heads.push((head as u32, start, b.tails.len()));
            }
        }
        b.heads.sort_unstable();
        b
    }

    /// The tails of the breakers that start with `head`.
    #[inline(always)]
    fn tails_of(&self, head: u32) -> impl Iterator<Item = &[u32]> {
        let lo = self.heads.partition_point(|h| h.0 < head);
        self.heads[lo..]
            .iter()
            .take_while(move |h| h.0 == head)
            .map(|&(_, a, b)| &self.tails[a..b])
    }

    /// Whether `token` alone is a breaker (such tokens are never penalised).
    #[inline(always)]
    fn is_single(&self, token: u32) -> bool {
        self.tails_of(token).any(|t| t.is_empty())
    }
}

/// The DRY parameters of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dry {
    /// 0 is off.
    pub multiplier: f64,
    /// At least 1.
    pub base: f64,
    /// Repeats shorter than this are free.
    pub allowed_length: usize,
    /// How many of the last history ids are scanned: -1 all, 0 none (off).
    pub last_n: i64,
}

impl Dry {
    /// Whether DRY changes anything.
    pub fn is_on(&self) -> bool {
        self.multiplier != 0.0 && self.last_n != 0
    }
}

/// Reusable buffers of the DRY scan.
#[derive(Debug, Default)]
pub(crate) struct DryScratch {
    repeat: Vec<usize>,
    cands: Vec<usize>,
    ends: Vec<(u32, usize)>,
}

/// Applies DRY to the row `y` for the history `history` (valid ids, oldest first).
pub(crate) fn apply<F: Real>(
    y: &mut (impl Logits<F> + ?Sized),
    history: &[u32],
    breakers: &Breakers,
    d: &Dry,
    s: &mut DryScratch,
) {
    if !d.is_on() {
        return;
    }
    let n = match usize::try_from(d.last_n) {
        Ok(n) => n.min(history.len()),
        Err(_) => history.len(),
    };
    if n <= d.allowed_length {
        return;
    }
    let tokens = &history[history.len() - n..];
    // `rat(i)`: the i-th id from the end, as llama.cpp's ring buffer reads it.
    let rat = |i: usize| tokens[n - 1 - i];

    // 1. The nearest breaker from the end limits how far back a repeat may reach; a breaker
    //    is matched head first, its tail towards the end. The longest breaker starting at a
    //    position wins.
    let mut rep_limit = n;
    for i in 0..n {
        let longest = breakers
            .tails_of(rat(i))
            .filter(|t| t.len() <= i && t.iter().enumerate().all(|(o, &id)| id == rat(i - o - 1)))
            .map(|t| t.len())
            .max();
        if let Some(len) = longest {
            rep_limit = i - len;
            break;
        }
    }
    if rep_limit < d.allowed_length {
        return;
    }

    // 2. repeat[p]: how many ids ending at position p equal the ids ending the history (at
    //    most rep_limit). Only positions ending in the history's last `allowed_length` ids
    //    matter; they are usually few, found by one comparison pass and extended backwards.
    //    When extending them could cost more than a few passes (a history of one repeated
    //    token), the Z-function does it in linear time.
    let last = n - 1;
    let cands = &mut s.cands;
    cands.clear();
    if d.allowed_length >= 1 {
        let end = tokens[last];
        each_position_where(&tokens[..last], |t| t == end, |p| cands.push(p));
    }
    // 3. The id after a repeat of length >= allowed_length would extend it: keep the longest
    //    repeat per id.
    let ends = &mut s.ends;
    ends.clear();
    if d.allowed_length >= 1 && cands.len().saturating_mul(rep_limit) <= 4 * n {
        for &p in cands.iter() {
            let reach = rep_limit.min(p + 1);
            let mut m = 1;
            while m < reach && tokens[p - m] == tokens[last - m] {
                m += 1;
            }
            if m >= d.allowed_length {
                ends.push((tokens[p + 1], m));
            }
        }
    } else {
        let repeat = &mut s.repeat;
        repeat.clear();
        repeat.resize(n, 0);
        z_repeats(tokens, rep_limit, repeat);
        for (p, &len) in repeat[..last].iter().enumerate() {
            if len >= d.allowed_length {
                ends.push((tokens[p + 1], len));
            }
        }
    }
    if ends.is_empty() {
        return;
    }
    ends.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    ends.dedup_by_key(|e| e.0);

    // 4. The penalties; the exponent is clamped so that base^exponent stays a finite f32
    //    (llama.cpp computes the bound in f32: FLT_MAX's log over log(base)).
    let max_exponent = if d.base > 1.000001 {
        (88.722_84_f32 / (d.base as f32).ln()) as usize
    } else {
        0
    };
    for &(token, len) in ends.iter() {
        if breakers.is_single(token) {
            continue;
        }
        let mut e = len - d.allowed_length;
        if max_exponent > 0 && e > max_exponent {
            e = max_exponent;
        }
        let penalty = d.multiplier * d.base.powi(e as i32);
        let j = token as usize;
        y.set(j, y.get(j) - F::of(penalty));
    }
}

/// `repeat[p]` for every position p < n - 1 by the Z-function of the reversed window
/// (llama.cpp's "Z-algorithm in reverse"). Values above `rep_limit` are cut there, which the
/// Z-box reasoning tolerates (the cut only ever applies at or above rep_limit).
fn z_repeats(tokens: &[u32], rep_limit: usize, repeat: &mut [usize]) {
    let n = tokens.len();
    let last = n - 1;
    // `rat(i)`: the i-th id from the end, as llama.cpp's ring buffer reads it.
    let rat = |i: usize| tokens[last - i];
    let (mut lt, mut rt) = (0usize, 0usize);
    for k in 1..n {
        if k > rt {
            let mut m = 0;
            while m + k < n && rat(m) == rat(m + k) {
                m += 1;
            }
            repeat[last - k] = m.min(rep_limit);
            if m > 0 {
                lt = k;
                rt = k + m - 1;
            }
        } else {
            let pair = repeat[last - (k - lt)];
            let right = rt - k + 1;
            if pair < right {
                repeat[last - k] = pair.min(rep_limit);
            } else {
                let mut j = rt + 1;
                while j < n && rat(j) == rat(j - k) {
                    j += 1;
                }
                repeat[last - k] = (j - k).min(rep_limit);
                lt = k;
                rt = j - 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hist: &[u32], vocab: usize, d: Dry, breakers: &[&[i64]]) -> Vec<f64> {
        let mut y = vec![0.0f64; vocab];
        let b = Breakers::new(breakers.iter().copied());
        apply(&mut y[..], hist, &b, &d, &mut DryScratch::default());
        y.iter().map(|v| -v).collect()
    }

    fn dry(multiplier: f64, base: f64, allowed_length: usize, last_n: i64) -> Dry {
        Dry {
            multiplier,
            base,
            allowed_length,
            last_n,
        }
    }

    /// The repeat lengths against a naive suffix match, on every short history over 3 ids.
    #[test]
    fn matches_a_naive_scan() {
        let d = dry(1.0, 2.0, 1, -1);
        for len in 2..9u32 {
            for code in 0..3u32.pow(len) {
                let hist: Vec<u32> = (0..len).map(|i| code / 3u32.pow(i) % 3).collect();
                let got = run(&hist, 3, d, &[]);
                let mut want = vec![0.0; 3];
                let n = hist.len();
                let mut best = [0usize; 3];
                for p in 0..n - 1 {
                    let mut m = 0;
                    while m <= p && hist[p - m] == hist[n - 1 - m] {
                        m += 1;
                    }
                    let t = hist[p + 1] as usize;
                    best[t] = best[t].max(m);
                }
                for t in 0..3 {
                    if best[t] >= 1 {
                        want[t] = 2f64.powi(best[t] as i32 - 1);
                    }
                }
                assert_eq!(got, want, "{hist:?}");
            }
        }
    }

    /// Both routes of step 2 (candidates extended backwards, and the Z-function that takes
    /// over when the candidates are many: small alphabets) against a naive suffix match, with
    /// breakers and a window, on longer random histories.
    #[test]
    fn both_routes_match_a_naive_scan() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for case in 0..300 {
            let alphabet = [2u64, 3, 8, 50][case % 4];
            let n = 2 + next(300) as usize;
            let hist: Vec<u32> = (0..n).map(|_| next(alphabet) as u32).collect();
            let allowed = 1 + next(3) as usize;
            let last_n = if case % 5 == 0 { (n / 2) as i64 } else { -1 };
            let breaker = [next(alphabet + 2) as i64];
            let breakers: &[&[i64]] = if case % 3 == 0 { &[&breaker] } else { &[] };
            let got = run(
                &hist,
                alphabet as usize,
                dry(1.0, 1.5, allowed, last_n),
                breakers,
            );
            // Naive: the window, the nearest breaker from the end, then per position the
            // common suffix with the window's end.
            let w = if last_n < 0 {
                n
            } else {
                (last_n as usize).min(n)
            };
            let t = &hist[n - w..];
            let limit = (0..w)
                .find(|&i| breakers.iter().any(|b| b[0] as u32 == t[w - 1 - i]))
                .unwrap_or(w);
            let mut best = vec![0usize; alphabet as usize];
            for p in 0..w.saturating_sub(1) {
                let mut m = 0;
                while m <= p && m < limit && t[p - m] == t[w - 1 - m] {
                    m += 1;
                }
                let next_id = t[p + 1] as usize;
                best[next_id] = best[next_id].max(m);
            }
            let mut want = vec![0.0; alphabet as usize];
            for (id, &len) in best.iter().enumerate() {
                let single = breakers.iter().any(|b| b[0] as usize == id);
                if w > allowed && limit >= allowed && len >= allowed && !single {
                    want[id] = 1.5f64.powi((len - allowed) as i32);
                }
            }
            for (g, w_) in got.iter().zip(&want) {
                assert!(
                    (g - w_).abs() <= 1e-9 * w_.max(1.0),
                    "{hist:?} {got:?} {want:?}"
                );
            }
        }
    }

    /// llama.cpp's comment example: a b c c b c y a b c.
    #[test]
    fn the_upstream_example_and_breakers() {
        let (a, b, c, y) = (0u32, 1, 2, 3);
        let hist = [a, b, c, c, b, c, y, a, b, c];
        let got = run(&hist, 4, dry(1.0, 2.0, 1, -1), &[]);
        // c extends "a b c" (3), b extends "c" (1), y extends "b c" (2).
        assert_eq!(got, vec![0.0, 1.0, 4.0, 2.0]);
        // A single-token breaker is never penalised; y as a breaker limits repeats to the 3
        // ids after it, and a b as a breaker (head a, 2 from the end... of "a b c") to 1.
        assert_eq!(run(&hist, 4, dry(1.0, 2.0, 1, -1), &[&[2]])[2], 0.0);
        assert_eq!(
            run(&hist, 4, dry(1.0, 2.0, 1, -1), &[&[3]]),
            vec![0.0, 1.0, 4.0, 0.0]
        );
        assert_eq!(
            run(&hist, 4, dry(1.0, 2.0, 1, -1), &[&[0, 1]]),
            vec![0.0, 1.0, 1.0, 1.0]
        );
        // The window: only the last 4 ids (y a b c) are scanned.
        assert_eq!(run(&hist, 4, dry(1.0, 2.0, 1, 4), &[]), vec![0.0; 4]);
        assert_eq!(run(&hist, 4, dry(1.0, 2.0, 1, 0), &[]), vec![0.0; 4]);
    }
}

#[cfg(test)]
pub(crate) mod probe {
    use super::*;

    /// A history like the benchmark's (`benches/compare.py` `make_history`): fresh random ids
    /// with copied spans and breaker ids, ending inside a copy. Run under callgrind:
    /// `cargo test --release --lib dry::probe -- --ignored`.
    pub(crate) fn bench_history(n: usize, v: u32, seed: u64) -> Vec<u32> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let heads = [198u32, 25, 1, 9, 510];
        let mut row: Vec<u32> = Vec::new();
        while row.len() < n - 32 {
            if row.len() >= 64 && next() % 2 == 0 {
                let start = (next() % (row.len() as u64 - 4)) as usize;
                let len = 4 + (next() % 61) as usize;
                let end = (start + len).min(row.len());
                row.extend_from_within(start..end);
            } else {
                for _ in 0..8 + next() % 57 {
                    let t = if next() % 60 == 0 {
                        heads[(next() % 5) as usize]
                    } else {
                        (next() % v as u64) as u32
                    };
                    row.push(t);
                }
            }
        }
        let start = (next() % (row.len() as u64 - 64)) as usize;
        while row.len() < n {
            let take = (n - row.len()).min(row.len() - start);
            row.extend_from_within(start..start + take);
        }
        row.truncate(n);
        row
    }

    #[test]
    #[ignore]
    fn dry_cost_probe() {
        let breakers = Breakers::new([&[198i64][..], &[25], &[1], &[9], &[510, 25]].into_iter());
        let d = Dry {
            multiplier: 0.8,
            base: 1.75,
            allowed_length: 2,
            last_n: -1,
        };
        let mut s = DryScratch::default();
        let mut y = vec![0.0f32; 128_256];
        let mut total = 0.0f32;
        for r in 0..64u64 {
            let h = bench_history(4096, 128_256, 0x9E37_79B9 + r);
            let t0 = std::time::Instant::now();
            apply(&mut y[..], &h, &breakers, &d, &mut s);
            total += t0.elapsed().as_secs_f32();
        }
        eprintln!("dry apply: {:.2} us per row", total / 64.0 * 1e6);
        assert!(y.iter().any(|&v| v < 0.0));
    }
}
