//! The stages of the ordered plan, and the orders: each engine's sequence of stages as a
//! preset ([`HF_ORDER`], [`VLLM_ORDER`], [`LLAMA_CPP_ORDER`]) or any sequence of names.
//!
//! Every stage is a pure function on the row's current logits `z`, where a removed token is
//! `-inf`. A stage sees the softmax of `z` — the tokens still kept, renormalised — as Hugging
//! Face's warpers and llama.cpp's chain do, so stages compose in any order. No stage empties a
//! row: each keeps at least `keep` tokens (`min_tokens_to_keep`, at least 1), the most
//! probable ones (for typical-p, the most typical ones).
//!
//! The fast plans of `plan.rs` compute temperature, top-k, top-p and min-p in Hugging Face's
//! order without materialising anything; a row whose stages or order they cannot compute
//! runs these, one after another, then the dense draw.

use crate::elem::Real;
use crate::error::SamplingError;
use crate::filter::{kth_largest, top_p_cut};
use crate::params::RowParams;
use crate::scratch::Scratch;
use crate::softmax::{exp_weights, max_nan};

/// A stage that an order places; penalties, bias and bans always come first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `temperature`, with `dynatemp_range` / `dynatemp_exponent` (llama.cpp `temp_ext`).
    Temperature,
    /// `top_n_sigma`.
    TopNSigma,
    /// `top_k`.
    TopK,
    /// `top_p`.
    TopP,
    /// `min_p`.
    MinP,
    /// `typical_p`.
    TypicalP,
    /// `epsilon_cutoff`.
    EpsilonCutoff,
    /// `eta_cutoff`.
    EtaCutoff,
    /// `xtc_probability` / `xtc_threshold`.
    Xtc,
}

use Stage::*;

/// Hugging Face's warper order (`GenerationMixin._get_logits_processor`), with the stages it
/// lacks in the places docs/design.md section 9 gives them. The default.
pub const HF_ORDER: [Stage; 9] = [
    Temperature,
    TopNSigma,
    TopK,
    TopP,
    MinP,
    TypicalP,
    EpsilonCutoff,
    EtaCutoff,
    Xtc,
];

/// vLLM's sampler: min-p (a logits processor) before top-k / top-p.
pub const VLLM_ORDER: [Stage; 9] = [
    Temperature,
    TopNSigma,
    MinP,
    TopK,
    TopP,
    TypicalP,
    EpsilonCutoff,
    EtaCutoff,
    Xtc,
];

/// llama.cpp's default chain (`common_sampler`): the filters see the temperature-1
/// distribution and temperature applies last. Epsilon and eta, which llama.cpp lacks, sit
/// with the other filters.
pub const LLAMA_CPP_ORDER: [Stage; 9] = [
    TopNSigma,
    TopK,
    TypicalP,
    TopP,
    MinP,
    EpsilonCutoff,
    EtaCutoff,
    Xtc,
    Temperature,
];

/// The preset names `order=` accepts.
pub const PRESETS: [&str; 3] = ["hf", "vllm", "llama.cpp"];

impl Stage {
    /// Every stage, in [`HF_ORDER`].
    pub const ALL: [Stage; 9] = HF_ORDER;

    /// The name an order spells it with (the parameter's name).
    pub fn name(self) -> &'static str {
        match self {
            Temperature => "temperature",
            TopNSigma => "top_n_sigma",
            TopK => "top_k",
            TopP => "top_p",
            MinP => "min_p",
            TypicalP => "typical_p",
            EpsilonCutoff => "epsilon_cutoff",
            EtaCutoff => "eta_cutoff",
            Xtc => "xtc",
        }
    }

    /// Whether the stage changes a row with parameters `p`.
    pub fn is_on(self, p: &RowParams) -> bool {
        match self {
            Temperature => p.temperature != 1.0 || p.dynatemp_range > 0.0,
            TopNSigma => p.top_n_sigma > 0.0,
            TopK => p.top_k > 0,
            TopP => p.top_p < 1.0,
            MinP => p.min_p > 0.0,
            TypicalP => p.typical_p < 1.0,
            EpsilonCutoff => p.epsilon_cutoff > 0.0,
            EtaCutoff => p.eta_cutoff > 0.0,
            Xtc => p.xtc_probability > 0.0,
        }
    }
}

/// The order named by `names`: one preset name, or a sequence of distinct stage names. An
/// empty sequence is the default, [`HF_ORDER`].
pub fn parse_order<S: AsRef<str>>(names: &[S]) -> Result<Vec<Stage>, SamplingError> {
    if names.is_empty() {
        return Ok(HF_ORDER.to_vec());
    }
    if let [one] = names {
        match one.as_ref() {
            "hf" => return Ok(HF_ORDER.to_vec()),
            "vllm" => return Ok(VLLM_ORDER.to_vec()),
            "llama.cpp" => return Ok(LLAMA_CPP_ORDER.to_vec()),
            _ => {}
        }
    }
    let mut order = Vec::with_capacity(names.len());
    for name in names {
        let name = name.as_ref();
        let stage = Stage::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                SamplingError::Order(format!(
                    "order: unknown stage {name:?}; a preset ({}) or a sequence of {}",
                    PRESETS.join(", "),
                    known.join(", ")
                ))
            })?;
        if order.contains(&stage) {
            return Err(SamplingError::Order(format!("order names {name:?} twice")));
        }
        order.push(stage);
    }
    Ok(order)
}

/// Checks that `order` places every stage some row of `params` turns on (a preset places all).
pub fn check_order(order: &[Stage], params: &[RowParams]) -> Result<(), SamplingError> {
    for (row, p) in params.iter().enumerate() {
        if let Some(s) = Stage::ALL
            .into_iter()
            .find(|s| s.is_on(p) && !order.contains(s))
        {
            return Err(SamplingError::Order(format!(
                "{} is on (row {row}) but the order does not place it",
                s.name()
            )));
        }
    }
    Ok(())
}

// ==== shared steps ===========================================================================

/// Fills `s.w` with the weights `exp(z - max)` of the kept tokens (0 for removed ones);
/// returns the maximum and the total weight. `z` has a finite maximum.
#[inline(always)]
fn weights<F: Real, const FMA: bool>(z: &[F], s: &mut Scratch<F>) -> (F, f64) {
    let m = max_nan(z).0;
    let total = exp_weights::<F, FMA>(z, m, F::one(), F::neg_infinity(), &mut s.w, &mut s.blocks);
    (m, total)
}

/// The entropy `-sum p log p` of the kept tokens, from their weights `w` against `m`.
#[inline(always)]
fn entropy<F: Real>(z: &[F], w: &[F], m: F, total: f64) -> f64 {
    // 16 independent f64 lanes: they vectorise (one chain of adds would not).
    let mut acc = [0.0f64; 16];
    let mut zc = z.chunks_exact(16);
    let mut wc = w.chunks_exact(16);
    let term = |zj: F, wj: F| {
        if wj > F::zero() {
            (wj * (zj - m)).wide()
        } else {
            0.0
        }
    };
    for (zb, wb) in (&mut zc).zip(&mut wc) {
        for l in 0..16 {
            acc[l] += term(zb[l], wb[l]);
        }
    }
    let rest: f64 = zc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(&zj, &wj)| term(zj, wj))
        .sum();
    // log p_j = (z_j - m) - ln(total).
    total.ln() - (acc.iter().sum::<f64>() + rest) / total
}

/// The smallest logit kept by a floor of the `keep` most probable tokens (ties kept), or
/// the maximum for `keep <= 1`.
#[inline(always)]
fn floor_logit<F: Real>(z: &[F], m: F, keep: usize, sel: &mut Vec<F>) -> F {
    if keep <= 1 {
        m
    } else {
        kth_largest(z, keep.min(z.len()), sel)
    }
}

/// Removes every token for which `keep(z_j, w_j)` is false and whose logit is below `floor`.
#[inline(always)]
fn retain<F: Real>(z: &mut [F], w: &[F], floor: F, keep: impl Fn(F, F, usize) -> bool) {
    for (j, (zj, &wj)) in z.iter_mut().zip(w).enumerate() {
        if *zj < floor && !keep(*zj, wj, j) {
            *zj = F::neg_infinity();
        }
    }
}

/// Only the largest logits stay (all of them if tied), at 0: the limit of a temperature
/// going to 0, and how `+inf` logits share the mass.
fn argmax_set<F: Real>(z: &mut [F]) {
    let m = max_nan(z).0;
    for v in z.iter_mut() {
        *v = if *v == m {
            F::zero()
        } else {
            F::neg_infinity()
        };
    }
}

/// Makes the maximum of `z` finite: `+inf` logits share the whole mass.
pub(crate) fn finite_max<F: Real>(z: &mut [F]) {
    if max_nan(z).0 == F::infinity() {
        argmax_set(z);
    }
}

// ==== the stages =============================================================================

/// Temperature, or with `dynatemp_range > 0` llama.cpp's entropy-scaled temperature
/// (`temp_ext`): `T_dyn = lo + (hi - lo) * (H / ln N)^exponent` over the `N` kept tokens,
/// `lo = max(0, T - range)`, `hi = T + range`; with one token nothing changes.
pub(crate) fn temperature<F: Real, const FMA: bool>(
    z: &mut [F],
    p: &RowParams,
    s: &mut Scratch<F>,
) {
    let mut t = p.temperature;
    if p.dynatemp_range > 0.0 {
        let n = z.iter().filter(|v| v.is_finite()).count();
        if n <= 1 {
            return;
        }
        let (m, total) = weights::<F, FMA>(z, s);
        let h = entropy(z, &s.w, m, total);
        let lo = (t - p.dynatemp_range).max(0.0);
        let hi = t + p.dynatemp_range;
        t = lo + (hi - lo) * (h / (n as f64).ln()).max(0.0).powf(p.dynatemp_exponent);
    }
    if t == 1.0 {
        return;
    }
    let inv = F::one() / F::of(t);
    if t <= 0.0 || !inv.is_finite() {
        argmax_set(z);
        return;
    }
    for v in z.iter_mut() {
        *v = *v * inv;
    }
    finite_max(z);
}

/// Top-k: the `max(k, keep)` largest logits, ties at the boundary kept.
pub(crate) fn top_k<F: Real>(z: &mut [F], k: usize, keep: usize, s: &mut Scratch<F>) {
    let k = k.max(keep);
    if k >= z.len() {
        return;
    }
    let kth = kth_largest(z, k, &mut s.sel);
    for v in z.iter_mut() {
        if *v < kth {
            *v = F::neg_infinity();
        }
    }
}

/// Top-p: the shortest prefix, by decreasing probability and ties by lower id, whose mass
/// reaches `top_p` (the cut of the fast plans, [`top_p_cut`]).
pub(crate) fn top_p<F: Real, const FMA: bool>(
    z: &mut [F],
    top_p: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let (m, total) = weights::<F, FMA>(z, s);
    let (cut, _) = top_p_cut(
        &s.w,
        total,
        top_p,
        false,
        &mut s.pairs,
        &mut s.sel,
        &mut s.keys,
        &mut s.blocks,
    );
    let floor = floor_logit(z, m, keep, &mut s.sel);
    retain(z, &s.w, floor, |_, w, j| cut.keeps(w, j as u32, F::zero()));
}

/// Min-p: the tokens of probability at least `min_p` times the largest.
pub(crate) fn min_p<F: Real, const FMA: bool>(
    z: &mut [F],
    min_p: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let (m, _) = weights::<F, FMA>(z, s);
    // The largest weight is exactly 1, so the floor is min_p itself (as in the fast plans).
    let wf = F::of(min_p);
    let floor = floor_logit(z, m, keep, &mut s.sel);
    retain(z, &s.w, floor, |_, w, _| w >= wf);
}

/// Epsilon (`threshold = Some(eps)`) or eta (`eta_cutoff = Some(eta)`) sampling: drops the
/// tokens of probability below `eps`, or below `min(eta, sqrt(eta) exp(-H))`.
pub(crate) fn cutoff<F: Real, const FMA: bool>(
    z: &mut [F],
    epsilon: Option<f64>,
    eta: Option<f64>,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let (m, total) = weights::<F, FMA>(z, s);
    let threshold = match (epsilon, eta) {
        (Some(e), _) => e,
        (None, Some(e)) => e.min(e.sqrt() * (-entropy(z, &s.w, m, total)).exp()),
        (None, None) => return,
    };
    let inv = 1.0 / total;
    let floor = floor_logit(z, m, keep, &mut s.sel);
    retain(z, &s.w, floor, |_, w, _| w.wide() * inv >= threshold);
}

/// Top-nσ: the logits at least `max - n σ`, σ the population standard deviation of the
/// finite logits (llama.cpp `top_n_sigma`). Invariant under temperature.
pub(crate) fn top_n_sigma<F: Real>(z: &mut [F], n: f64, keep: usize, s: &mut Scratch<F>) {
    let (mut count, mut sum) = (0usize, 0.0f64);
    let mut m = F::neg_infinity();
    for &v in z.iter().filter(|v| v.is_finite()) {
        count += 1;
        sum += v.wide();
        m = m.max(v);
    }
    let mean = sum / count as f64;
    let var = z
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| (v.wide() - mean).powi(2))
        .sum::<f64>()
        / count as f64;
    let threshold = m.wide() - n * var.sqrt();
    let floor = floor_logit(z, m, keep, &mut s.sel);
    for v in z.iter_mut() {
        if *v < floor && v.wide() < threshold {
            *v = F::neg_infinity();
        }
    }
}

/// Typical-p: with `H` the entropy, the tokens in order of `|-log p - H|` ascending up to
/// the first whose cumulative mass reaches `mass`, and every token whose distance ties that
/// one's (Hugging Face `TypicalLogitsWarper`); at least the `keep` most typical.
pub(crate) fn typical_p<F: Real, const FMA: bool>(
    z: &mut [F],
    mass: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let (m, total) = weights::<F, FMA>(z, s);
    let h = entropy(z, &s.w, m, total);
    // -log p_j - H = (m + ln(total) - H) - z_j: the distance is |c - z_j|.
    let c = F::of(m.wide() + total.ln() - h);
    s.sel.clear();
    s.sel.extend(z.iter().map(|&v| {
        if v.is_finite() {
            (c - v).abs()
        } else {
            F::infinity()
        }
    }));
    let tau = key_threshold(&s.sel, &s.w, mass * total, keep, &mut s.pairs);
    for (v, &d) in z.iter_mut().zip(&s.sel) {
        if d > tau {
            *v = F::neg_infinity();
        }
    }
}

/// Buckets per round of [`key_threshold`]'s histogram.
const KEY_BUCKETS: usize = 2048;
/// A boundary bucket with at most this many tokens is sorted; a larger one is split again.
const KEY_SORT_MAX: usize = 4096;

/// The smallest finite key `τ` such that the tokens with `key <= τ` hold at least `target`
/// weight and number at least `keep` (the largest finite key if none does). Tokens with an
/// infinite key do not count.
///
/// A histogram of the keys (bucket index monotone in the key) finds the bucket where both
/// counts are reached; its tokens are split again while many, then sorted. No sort of the
/// row.
fn key_threshold<F: Real>(
    keys: &[F],
    w: &[F],
    target: f64,
    keep: usize,
    buf: &mut Vec<(F, u32)>,
) -> F {
    buf.clear();
    buf.extend(
        keys.iter()
            .enumerate()
            .filter(|(_, k)| k.is_finite())
            .map(|(j, &k)| (k, j as u32)),
    );
    let (mut mass_below, mut count_below) = (0.0f64, 0usize);
    let mut mass = vec![0.0f64; KEY_BUCKETS];
    let mut count = vec![0usize; KEY_BUCKETS];
    while buf.len() > KEY_SORT_MAX {
        let lo = buf.iter().fold(F::infinity(), |a, c| a.min(c.0)).wide();
        let hi = buf.iter().fold(F::neg_infinity(), |a, c| a.max(c.0)).wide();
        if hi <= lo {
            return F::of(hi); // one key: every token ties
        }
        let scale = (KEY_BUCKETS - 1) as f64 / (hi - lo);
        let bucket = |k: F| (((k.wide() - lo) * scale) as usize).min(KEY_BUCKETS - 1);
        mass.fill(0.0);
        count.fill(0);
        for &(k, j) in buf.iter() {
            let b = bucket(k);
            mass[b] += w[j as usize].wide();
            count[b] += 1;
        }
        let mut chosen = KEY_BUCKETS - 1;
        for b in 0..KEY_BUCKETS {
            if mass_below + mass[b] >= target && count_below + count[b] >= keep {
                chosen = b;
                break;
            }
            if b < KEY_BUCKETS - 1 {
                mass_below += mass[b];
                count_below += count[b];
            }
        }
        buf.retain(|c| bucket(c.0) == chosen);
    }
    buf.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    for &(k, j) in buf.iter() {
        mass_below += w[j as usize].wide();
        count_below += 1;
        if mass_below >= target && count_below >= keep {
            return k;
        }
    }
    buf.last().map_or(F::infinity(), |c| c.0)
}

/// XTC ("exclude top choices", llama.cpp `xtc`): when the row's `coin` falls below
/// `probability` and two or more tokens have probability at least `threshold`, removes all
/// of them except the least probable (all of those, if tied) — unless fewer than `keep`
/// tokens would remain.
pub(crate) fn xtc<F: Real, const FMA: bool>(
    z: &mut [F],
    probability: f64,
    threshold: f64,
    coin: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    if coin >= probability {
        return;
    }
    let (_, total) = weights::<F, FMA>(z, s);
    let t = threshold * total;
    let above = |zj: F, wj: F| zj.is_finite() && wj.wide() >= t;
    let (mut n_above, mut least) = (0usize, F::infinity());
    for (&zj, &wj) in z.iter().zip(&s.w) {
        if above(zj, wj) {
            n_above += 1;
            least = least.min(wj);
        }
    }
    if n_above < 2 {
        return;
    }
    let removed = z
        .iter()
        .zip(&s.w)
        .filter(|&(&zj, &wj)| above(zj, wj) && wj > least)
        .count();
    let kept = z.iter().filter(|v| v.is_finite()).count() - removed;
    if kept < keep {
        return;
    }
    for (zj, &wj) in z.iter_mut().zip(&s.w) {
        if above(*zj, wj) && wj > least {
            *zj = F::neg_infinity();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stage: impl Fn(&mut Vec<f64>, &mut Scratch<f64>), z: &[f64]) -> Vec<f64> {
        let mut z = z.to_vec();
        let mut s = Scratch::default();
        stage(&mut z, &mut s);
        z
    }

    /// The kept set of a stage's output, as a mask.
    fn kept(z: &[f64]) -> Vec<bool> {
        z.iter().map(|v| v.is_finite()).collect()
    }

    fn logs(p: &[f64]) -> Vec<f64> {
        p.iter().map(|v| v.ln()).collect()
    }

    #[test]
    fn orders_parse_and_refuse() {
        assert_eq!(parse_order::<&str>(&[]).unwrap(), HF_ORDER);
        assert_eq!(parse_order(&["vllm"]).unwrap(), VLLM_ORDER);
        assert_eq!(parse_order(&["llama.cpp"]).unwrap(), LLAMA_CPP_ORDER);
        assert_eq!(
            parse_order(&["top_p", "temperature"]).unwrap(),
            [TopP, Temperature]
        );
        assert!(matches!(
            parse_order(&["top_p", "top_p"]),
            Err(SamplingError::Order(_))
        ));
        assert!(matches!(
            parse_order(&["hf", "top_p"]),
            Err(SamplingError::Order(_))
        ));
        assert!(matches!(
            parse_order(&["typical"]),
            Err(SamplingError::Order(_))
        ));
        let p = RowParams {
            top_p: 0.9,
            ..Default::default()
        };
        assert!(check_order(&[Temperature], &[p]).is_err());
        assert!(check_order(&[TopP], &[p]).is_ok());
        for preset in [HF_ORDER, VLLM_ORDER, LLAMA_CPP_ORDER] {
            let mut names: Vec<&str> = preset.iter().map(|s| s.name()).collect();
            names.sort_unstable();
            let mut all: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            all.sort_unstable();
            assert_eq!(names, all);
        }
    }

    /// llama.cpp tests/test-sampling.cpp: `test_typical({0.97, 0.01, 0.01, 0.01}, {0.97}, 0.5)`
    /// and `test_typical({0.4, 0.2, 0.2, 0.2}, {0.2, 0.2, 0.2}, 0.5)`.
    #[test]
    fn typical_vectors() {
        let z = run(
            |z, s| typical_p::<_, false>(z, 0.5, 1, s),
            &logs(&[0.97, 0.01, 0.01, 0.01]),
        );
        assert_eq!(kept(&z), [true, false, false, false]);
        let z = run(
            |z, s| typical_p::<_, false>(z, 0.5, 1, s),
            &logs(&[0.4, 0.2, 0.2, 0.2]),
        );
        assert_eq!(kept(&z), [false, true, true, true]);
        // The floor keeps the most typical tokens first.
        let z = run(
            |z, s| typical_p::<_, false>(z, 0.5, 2, s),
            &logs(&[0.97, 0.01, 0.01, 0.01]),
        );
        assert_eq!(kept(&z), [true, true, true, true]); // the three 0.01 tie
    }

    /// The histogram path of typical-p (rows beyond KEY_SORT_MAX) equals a full sort.
    #[test]
    fn typical_large_rows_equal_a_sort() {
        let mut rnd = crate::test_util::uniforms(11);
        for case in 0..20 {
            let n = 9000 + case * 1013;
            let z: Vec<f64> = (0..n)
                .map(|_| ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 2.5)
                .collect();
            let mass = [0.2, 0.5, 0.9, 0.99][case % 4];
            let got = run(|z, s| typical_p::<_, false>(z, mass, 1, s), &z);
            // Reference: sort by distance, cumulative mass.
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let total: f64 = w.iter().sum();
            let h = total.ln() - w.iter().zip(&z).map(|(w, v)| w * (v - m)).sum::<f64>() / total;
            let c = m + total.ln() - h;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| (c - z[a]).abs().partial_cmp(&(c - z[b]).abs()).unwrap());
            let mut acc = 0.0;
            let mut tau = 0.0;
            for &j in &idx {
                acc += w[j];
                tau = (c - z[j]).abs();
                if acc >= mass * total {
                    break;
                }
            }
            let want: Vec<bool> = z.iter().map(|v| (c - v).abs() <= tau).collect();
            assert_eq!(kept(&got), want, "case {case}");
        }
    }

    /// The logits within n standard deviations of the maximum; the floor adds the next ones.
    #[test]
    fn top_n_sigma_keeps_within_n_sigma() {
        let z = [1.0, 2.0, 3.0, 4.0, f64::NEG_INFINITY];
        // mean 2.5, sigma sqrt(1.25) = 1.118: keep >= 2.882.
        let got = run(|z, s| top_n_sigma(z, 1.0, 1, s), &z);
        assert_eq!(kept(&got), [false, false, true, true, false]);
        let got = run(|z, s| top_n_sigma(z, 0.0, 1, s), &z);
        assert_eq!(kept(&got), [false, false, false, true, false]);
        let got = run(|z, s| top_n_sigma(z, 0.0, 3, s), &z);
        assert_eq!(kept(&got), [false, true, true, true, false]);
    }

    /// llama.cpp tests/test-sampling.cpp: `test_xtc({0.4, 0.3, 0.2, 0.1}, {0.1}, 0.99, 0.09)`
    /// and `test_xtc({0.4, 0.3, 0.2, 0.1}, {0.4, 0.3, 0.2, 0.1}, 0.99, 0.39)`.
    #[test]
    fn xtc_vectors() {
        let z = logs(&[0.4, 0.3, 0.2, 0.1]);
        let got = run(|z, s| xtc::<_, false>(z, 0.99, 0.09, 0.5, 1, s), &z);
        assert_eq!(kept(&got), [false, false, false, true]);
        let got = run(|z, s| xtc::<_, false>(z, 0.99, 0.39, 0.5, 1, s), &z);
        assert_eq!(kept(&got), [true; 4]);
        // The coin: at or above the probability nothing happens.
        let got = run(|z, s| xtc::<_, false>(z, 0.5, 0.09, 0.5, 1, s), &z);
        assert_eq!(kept(&got), [true; 4]);
        // The floor: removing three of four would leave fewer than two.
        let got = run(|z, s| xtc::<_, false>(z, 1.0, 0.09, 0.0, 2, s), &z);
        assert_eq!(kept(&got), [true; 4]);
    }

    #[test]
    fn epsilon_and_eta() {
        let z = logs(&[0.5, 0.3, 0.15, 0.05]);
        let got = run(|z, s| cutoff::<_, false>(z, Some(0.1), None, 1, s), &z);
        assert_eq!(kept(&got), [true, true, true, false]);
        let got = run(|z, s| cutoff::<_, false>(z, Some(0.9), None, 1, s), &z);
        assert_eq!(kept(&got), [true, false, false, false]);
        let got = run(|z, s| cutoff::<_, false>(z, Some(0.9), None, 3, s), &z);
        assert_eq!(kept(&got), [true, true, true, false]);
        // Eta: H = 1.1412 nats, sqrt(0.2) exp(-H) = 0.1429 < 0.2.
        let got = run(|z, s| cutoff::<_, false>(z, None, Some(0.2), 1, s), &z);
        assert_eq!(kept(&got), [true, true, true, false]);
    }

    /// With a range, the temperature grows with the normalised entropy.
    #[test]
    fn dynatemp_scales_by_entropy() {
        let z = logs(&[0.25; 4]);
        let p = RowParams {
            temperature: 1.0,
            dynatemp_range: 0.5,
            ..Default::default()
        };
        // Uniform: normalised entropy 1, T_dyn = 1.5; the logits are all equal anyway.
        let got = run(|z, s| temperature::<_, false>(z, &p, s), &z);
        for (g, v) in got.iter().zip(&z) {
            assert!((g - v / 1.5).abs() < 1e-12);
        }
        let z = vec![2.0, 0.0, f64::NEG_INFINITY];
        let p2 = RowParams {
            temperature: 1.0,
            dynatemp_range: 1.0,
            dynatemp_exponent: 2.0,
            ..Default::default()
        };
        let got = run(|z, s| temperature::<_, false>(z, &p2, s), &z);
        let q = [1.0 / (1.0 + (-2.0f64).exp()), 0.0];
        let q1 = 1.0 - q[0];
        let h = -(q[0] * q[0].ln() + q1 * q1.ln());
        let t = 2.0 * (h / 2f64.ln()).powi(2);
        assert!((got[0] - 2.0 / t).abs() < 1e-12, "{got:?} {t}");
        assert_eq!(got[2], f64::NEG_INFINITY);
    }
}
