//! Penalties from the token history: repetition (CTRL / Hugging Face, multiplicative),
//! frequency/presence (OpenAI / vLLM, additive) and k-scaling (a per-token temperature), over
//! the last `penalty_last_n` ids of the history (llama.cpp's `repeat_last_n`).
//!
//! All three touch only the ids that occur in the history, so their cost is proportional to
//! the history length, not the vocabulary, except the k-scaling shift (one pass, only when the
//! row has a negative finite logit and a seen token).

use crate::elem::Real;
use crate::error::SamplingError;
use crate::patch::Logits;
use crate::softmax::min_finite;

/// The history ids of a row in order: its non-negative ids (negative ids are padding,
/// wherever they sit), into `out`; an id `>= vocab` is an error.
pub fn valid_history(
    history: &[i64],
    vocab: usize,
    row: usize,
    out: &mut Vec<u32>,
) -> Result<(), SamplingError> {
    out.clear();
    // The usual history has no padding and no bad id: one check over all of it and a plain
    // narrowing copy, both of which vectorize (a push per id does not).
    if history
        .iter()
        .fold(true, |ok, &id| ok & ((id as u64) < vocab as u64))
    {
        out.extend(history.iter().map(|&id| id as u32));
        return Ok(());
    }
    for &id in history {
        if id < 0 {
            continue;
        }
        if id as u64 >= vocab as u64 {
            return Err(SamplingError::TokenOutOfRange {
                what: "history",
                row,
                id,
                vocab,
            });
        }
        out.push(id as u32);
    }
    Ok(())
}

/// The last `last_n` ids (llama.cpp's `repeat_last_n`): all of them for -1, none for 0.
pub fn window(ids: &[u32], last_n: i64) -> &[u32] {
    match usize::try_from(last_n) {
        Ok(n) => &ids[ids.len().saturating_sub(n)..],
        Err(_) => ids,
    }
}

/// Counts `ids` into sorted `(id, count)` pairs; `scratch` is reused between rows to avoid an
/// allocation per call.
pub fn count_ids(ids: &[u32], scratch: &mut Vec<u32>, counts: &mut Vec<(u32, u32)>) {
    scratch.clear();
    counts.clear();
    scratch.extend_from_slice(ids);
    scratch.sort_unstable();
    for &id in scratch.iter() {
        match counts.last_mut() {
            Some((last, c)) if *last == id => *c += 1,
            _ => counts.push((id, 1)),
        }
    }
}

/// The penalty parameters of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// Multiplicative repetition penalty `r` (off at 1).
    pub repetition: f64,
    /// Additive frequency penalty `a_f` (off at 0).
    pub frequency: f64,
    /// Additive presence penalty `a_p` (off at 0).
    pub presence: f64,
    /// k-scaling frequency factor `s_f` (off at 1).
    pub frequency_scale: f64,
    /// k-scaling presence factor `s_p` (off at 1).
    pub presence_scale: f64,
}

impl Penalties {
    /// Whether the row needs no history at all.
    pub fn is_off(&self) -> bool {
        self.repetition == 1.0
            && self.frequency == 0.0
            && self.presence == 0.0
            && !self.scales_active()
    }

    /// Whether k-scaling is on.
    pub fn scales_active(&self) -> bool {
        self.frequency_scale != 1.0 || self.presence_scale != 1.0
    }

    /// `k[j]` for a token seen `count > 0` times.
    pub fn k_factor(&self, count: u32) -> f64 {
        1.0 + (self.frequency_scale - 1.0) * count as f64 + (self.presence_scale - 1.0)
    }
}

/// Applies the repetition and frequency/presence penalties to the row `y` in place, in the
/// order of docs/design.md section 2 (DRY and then k-scaling, [`apply_scaling`], follow).
pub(crate) fn apply_additive<F: Real>(
    y: &mut (impl Logits<F> + ?Sized),
    counts: &[(u32, u32)],
    pen: &Penalties,
) {
    let r = F::of(pen.repetition);
    for &(id, c) in counts {
        let mut v = y.get(id as usize);
        if pen.repetition != 1.0 {
            v = if v > F::zero() { v / r } else { v * r };
        }
        if pen.frequency != 0.0 || pen.presence != 0.0 {
            v = v - F::of(pen.frequency * c as f64 + pen.presence);
        }
        y.set(id as usize, v);
    }
}

/// k-scaling: afterwards `y[j]` holds `x[j] / k[j]`, so dividing by the temperature gives the
/// scaled logit.
pub fn apply_scaling<F: Real>(y: &mut [F], counts: &[(u32, u32)], pen: &Penalties) {
    if counts.is_empty() || !pen.scales_active() {
        return;
    }
    // Dividing by k > 1 only lowers a positive logit, so a row with negative logits is
    // shifted to be non-negative first; softmax does not see the shift otherwise.
    let min = min_finite(y);
    if min < F::zero() {
        for v in y.iter_mut() {
            *v = *v - min;
        }
    }
    for &(id, c) in counts {
        let v = &mut y[id as usize];
        *v = *v / F::of(pen.k_factor(c));
    }
}

/// Every penalty of `pen` on the row `y` (no DRY between them): the tests' shorthand.
#[cfg(test)]
fn apply<F: Real>(y: &mut [F], counts: &[(u32, u32)], pen: &Penalties) {
    apply_additive(y, counts, pen);
    apply_scaling(y, counts, pen);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::each_position_where;

    /// Both routes of `valid_history` (no padding; padding or a bad id) and
    /// `each_position_where` across whole chunks and the remainder, against plain filters.
    #[test]
    fn history_scans_equal_plain_filters() {
        let mut rnd = crate::test_util::uniforms(11);
        let mut ids = Vec::new();
        for len in 0..70usize {
            let h: Vec<i64> = (0..len).map(|_| (rnd() * 5.0) as i64 - 1).collect();
            assert!(valid_history(&h, 4, 0, &mut ids).is_ok());
            let want: Vec<u32> = h.iter().filter(|&&t| t >= 0).map(|&t| t as u32).collect();
            assert_eq!(ids, want, "{len}");
            let clean: Vec<i64> = want.iter().map(|&t| t as i64).collect();
            valid_history(&clean, 4, 0, &mut ids).unwrap();
            assert_eq!(ids, want, "{len}");
            let err = valid_history(&[clean.clone(), vec![4]].concat(), 4, 2, &mut ids);
            assert!(matches!(
                err,
                Err(SamplingError::TokenOutOfRange { id: 4, row: 2, .. })
            ));
            for x in 0..4u32 {
                let mut got = Vec::new();
                each_position_where(&want, |id| id == x, |p| got.push(p));
                let plain: Vec<usize> = (0..want.len()).filter(|&p| want[p] == x).collect();
                assert_eq!(got, plain, "{len} {x}");
            }
        }
    }

    #[test]
    fn counts_are_sorted_and_skip_padding() {
        let mut s = Vec::new();
        let mut c = Vec::new();
        let mut ids = Vec::new();
        valid_history(&[3, -1, 0, 3, 2, 3, -7], 4, 0, &mut ids).unwrap();
        assert_eq!(ids, vec![3, 0, 3, 2, 3]);
        count_ids(&ids, &mut s, &mut c);
        assert_eq!(c, vec![(0, 1), (2, 1), (3, 3)]);
        count_ids(window(&ids, 2), &mut s, &mut c);
        assert_eq!(c, vec![(2, 1), (3, 1)]);
        assert_eq!(window(&ids, 0), &[] as &[u32]);
        assert_eq!(window(&ids, -1), &ids[..]);
        assert_eq!(window(&ids, 99), &ids[..]);
        let e = valid_history(&[4], 4, 5, &mut ids).unwrap_err();
        assert!(matches!(
            e,
            SamplingError::TokenOutOfRange { row: 5, id: 4, .. }
        ));
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative() {
        let mut y = vec![2.0f64, -2.0, 1.0];
        let pen = Penalties {
            repetition: 2.0,
            frequency: 0.0,
            presence: 0.0,
            frequency_scale: 1.0,
            presence_scale: 1.0,
        };
        apply(&mut y, &[(0, 3), (1, 1)], &pen);
        assert_eq!(y, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn additive_frequency_and_presence() {
        let mut y = vec![1.0f64, 1.0, 1.0];
        let pen = Penalties {
            repetition: 1.0,
            frequency: 0.5,
            presence: 0.25,
            frequency_scale: 1.0,
            presence_scale: 1.0,
        };
        apply(&mut y, &[(0, 2), (2, 1)], &pen);
        assert_eq!(y, vec![1.0 - 1.0 - 0.25, 1.0, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn k_scaling_worked_example_factors() {
        // docs/design.md section 2: history a,b,a,c,a,a with s_f = 1.1, s_p = 1.2 gives
        // k = [1.6, 1.3, 1.3, 1].
        let pen = Penalties {
            repetition: 1.0,
            frequency: 0.0,
            presence: 0.0,
            frequency_scale: 1.1,
            presence_scale: 1.2,
        };
        let mut s = Vec::new();
        let mut c = Vec::new();
        count_ids(&[0, 1, 0, 2, 0, 0], &mut s, &mut c);
        let k: Vec<f64> = c.iter().map(|&(_, n)| pen.k_factor(n)).collect();
        for (got, want) in k.iter().zip([1.6, 1.3, 1.3]) {
            assert!((got - want).abs() < 1e-12);
        }
        let mut y = vec![0.8f64, 0.9, 0.1, 0.4];
        apply(&mut y, &c, &pen);
        for (got, want) in y.iter().zip([0.5, 0.6923, 0.0769, 0.4]) {
            assert!((got - want).abs() < 1e-4, "{y:?}");
        }
    }

    #[test]
    fn k_scaling_shifts_negative_rows() {
        let pen = Penalties {
            repetition: 1.0,
            frequency: 0.0,
            presence: 0.0,
            frequency_scale: 2.0,
            presence_scale: 1.0,
        };
        let mut y = vec![-1.0f64, 1.0, f64::NEG_INFINITY];
        apply(&mut y, &[(1, 1)], &pen);
        // shift by +1 (min finite is -1), then token 1 divided by k = 2.
        assert_eq!(y, vec![0.0, 1.0, f64::NEG_INFINITY]);
    }
}
