//! Stages that match the end of the history against token sequences: sequence biases and
//! multi-token bans (Hugging Face `SequenceBiasLogitsProcessor`, `NoBadWordsLogitsProcessor`)
//! and no-repeat n-grams (`NoRepeatNGramLogitsProcessor`). Each costs a few compares per
//! sequence or per history id, never a pass over the vocabulary.

use crate::elem::Real;
use crate::filter::each_position_where;
use crate::patch::Logits;

/// Adds `b` to the logit `e`: `-inf` bans, a banned or masked token stays masked, and NaN
/// stays NaN so that the row check still sees bad input.
#[inline(always)]
pub(crate) fn add_bias<F: Real>(e: &mut F, b: f64) {
    let biased = *e + F::of(b);
    *e = if e.is_nan() {
        *e
    } else if b == f64::NEG_INFINITY || biased.is_nan() {
        F::neg_infinity()
    } else {
        biased
    };
}

/// Hugging Face's sequence bias on the row `y`: a one-id sequence always adds its bias; a
/// longer one adds it to its last id when the history ends with the rest (transformers 5.24's
/// rule; up to 5.0 a sequence longer than the history was skipped even when the history was
/// exactly its prefix).
pub(crate) fn sequence_bias<'a, F: Real>(
    y: &mut (impl Logits<F> + ?Sized),
    history: &[u32],
    seqs: impl Iterator<Item = (&'a [i64], f64)>,
) {
    for (seq, bias) in seqs {
        let Some((&last, prefix)) = seq.split_last() else {
            continue;
        };
        let applies = prefix.is_empty()
            || (prefix.len() <= history.len()
                && history[history.len() - prefix.len()..]
                    .iter()
                    .zip(prefix)
                    .all(|(&h, &s)| h as i64 == s));
        if applies {
            let mut e = y.get(last as usize);
            add_bias(&mut e, bias);
            y.set(last as usize, e);
        }
    }
}

/// Bans (`-inf`) every id that would complete an `n`-gram already in the history: the ids
/// that followed an earlier occurrence of the history's last `n - 1` ids (with `n = 1`, every
/// id of the history).
pub(crate) fn no_repeat_ngram<F: Real>(
    y: &mut (impl Logits<F> + ?Sized),
    history: &[u32],
    n: usize,
) {
    let len = history.len();
    if n == 0 || len + 1 < n {
        return;
    }
    let prefix = &history[len + 1 - n..];
    let Some(&first) = prefix.first() else {
        // n = 1: every id of the history is an n-gram of its own.
        for &j in history {
            if !y.get(j as usize).is_nan() {
                y.set(j as usize, F::neg_infinity());
            }
        }
        return;
    };
    // A start is ruled out by its first id almost always: find those first, then compare.
    each_position_where(
        &history[..len + 1 - n],
        |id| id == first,
        |start| {
            if history[start..start + n - 1] == *prefix {
                let j = history[start + n - 1] as usize;
                if !y.get(j).is_nan() {
                    y.set(j, F::neg_infinity());
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore]
    fn ngram_cost_probe() {
        let mut y = vec![0.0f32; 128_256];
        let (mut scan, mut check) = (0.0f32, 0.0f32);
        let mut ids = Vec::new();
        for r in 0..64u64 {
            let h = crate::dry::probe::bench_history(4096, 128_256, 0x9E37_79B9 + r);
            let wide: Vec<i64> = h.iter().map(|&t| t as i64).collect();
            let t0 = std::time::Instant::now();
            crate::penalty::valid_history(&wide, 128_256, 0, &mut ids).unwrap();
            check += t0.elapsed().as_secs_f32();
            let t0 = std::time::Instant::now();
            no_repeat_ngram(&mut y[..], &ids, 3);
            scan += t0.elapsed().as_secs_f32();
        }
        eprintln!(
            "per row: valid_history {:.2} us, no_repeat_ngram {:.2} us",
            check / 64.0 * 1e6,
            scan / 64.0 * 1e6
        );
        assert!(y.iter().any(|v| v.is_infinite()));
    }

    #[test]
    fn sequence_bias_follows_hugging_face() {
        let ninf = f64::NEG_INFINITY;
        let mut y = vec![0.0f64; 4];
        let seqs: [(&[i64], f64); 4] = [
            (&[1], 0.5),
            (&[2, 3], -1.0),
            (&[1, 2, 3], 2.0),
            (&[0, 3], ninf),
        ];
        sequence_bias(&mut y[..], &[1, 2], seqs.iter().copied());
        // [2, 3] matches (the history ends with 2) and so does [1, 2, 3]: the history is
        // exactly its prefix; the biases add up.
        assert_eq!(y, vec![0.0, 0.5, 0.0, 1.0]);
        let mut y = vec![0.0f64; 4];
        sequence_bias(&mut y[..], &[2, 2], seqs.iter().copied());
        assert_eq!(y, vec![0.0, 0.5, 0.0, -1.0]);
        let mut y = vec![0.0f64; 4];
        sequence_bias(&mut y[..], &[2, 0], seqs.iter().copied());
        assert_eq!(y, vec![0.0, 0.5, 0.0, ninf]);
        // A history that is exactly a sequence's prefix is enough (transformers 5.24).
        let mut y = vec![0.0f64; 4];
        sequence_bias(&mut y[..], &[0], seqs.iter().copied());
        assert_eq!(y, vec![0.0, 0.5, 0.0, ninf]);
    }

    #[test]
    fn no_repeat_ngram_bans_completions() {
        let ninf = f64::NEG_INFINITY;
        let mut y = vec![0.0f64; 5];
        no_repeat_ngram(&mut y[..], &[0, 1, 2, 0, 1, 3, 0], 2);
        // bigrams starting with 0: (0, 1) twice.
        assert_eq!(y, vec![0.0, ninf, 0.0, 0.0, 0.0]);
        let mut y = vec![0.0f64; 5];
        no_repeat_ngram(&mut y[..], &[0, 1, 2, 0, 1, 3, 0, 1], 3);
        assert_eq!(y, vec![0.0, 0.0, ninf, ninf, 0.0]);
        let mut y = vec![0.0f64; 5];
        no_repeat_ngram(&mut y[..], &[4, 2], 1);
        assert_eq!(y, vec![0.0, 0.0, ninf, 0.0, ninf]);
        let mut y = vec![0.0f64; 5];
        no_repeat_ngram(&mut y[..], &[4, 2], 3);
        assert_eq!(y, vec![0.0; 5]);
    }
}
