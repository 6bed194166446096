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
use crate::filter::{
    by_prob, keep_keys_within, key_bracket, sorted_nucleus, top_k_candidates, top_p_cut,
    zero_weights_where, Cut, KeyBracket, TypicalKey, HEAD,
};
use crate::params::RowParams;
use crate::scratch::Scratch;
use crate::softmax::{exp_weight, exp_weights, BLOCK};
/// The most probable tokens mirostat 1 fits its Zipf exponent to (llama.cpp's `m`).
const MIROSTAT_M: usize = 100;

/// Mirostat's truncation for the row's state `mu` (llama.cpp `mirostat` and `mirostat_v2`;
/// the state's update after the draw is in `plan.rs`). Version 2 keeps the tokens of surprise
/// `-log2 p <= mu` (at least the most probable). Version 1 fits the Zipf exponent `s` to the
/// [`MIROSTAT_M`] most probable live tokens and keeps the top
/// `k = (e 2^mu / (1 - V^-e))^(1/s)`, `e = s - 1`, `V` the vocabulary: like top-k, ties at the
/// boundary kept, at least 1 (also for a k that is not finite, which llama.cpp leaves to an
/// undefined conversion), all when k exceeds the live tokens.
#[inline(always)]
pub(crate) fn mirostat<F: Real, const FMA: bool>(
    z: &[F],
    live: &mut Live<F>,
    version: usize,
    mu: f64,
    s: &mut Scratch<F>,
) {
    if version == 2 {
        cutoff::<F, FMA>(z, live, Cutoff::Epsilon((-mu).exp2()), 1, s);
        return;
    }
    weights::<F, FMA>(z, live, s);
    top_k_candidates(&s.w, MIROSTAT_M.min(z.len()), &mut s.pairs, &mut s.sel);
    s.pairs.retain(|c| c.0 > F::zero());
    s.pairs.sort_unstable_by(by_prob);
    s.pairs.truncate(MIROSTAT_M);
    let (mut tb, mut tt) = (0.0f64, 0.0f64);
    for (i, pair) in s.pairs.windows(2).enumerate() {
        let t = ((i + 2) as f64 / (i + 1) as f64).ln();
        tb += t * (pair[0].0.wide() / pair[1].0.wide()).ln();
        tt += t * t;
    }
    let s_hat = tb / tt;
    let e = s_hat - 1.0;
    let k = (e * mu.exp2() / (1.0 - (z.len() as f64).powf(-e))).powf(1.0 / s_hat);
    let k = if k.is_finite() && k >= 1.0 {
        k as usize
    } else {
        1
    };
    top_k(z, live, k, 1, s);
}

#[cfg(test)]
use crate::softmax::max_nan;

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

/// The order named by `names`: one preset name, or a sequence of distinct stage names (an
/// empty one places no stage).
pub fn parse_order<S: AsRef<str>>(names: &[S]) -> Result<Vec<Stage>, SamplingError> {
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
    if order.len() == Stage::ALL.len() {
        return Ok(()); // every stage placed (a preset): nothing to check per row
    }
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

// ==== the live set ==========================================================================

/// What is left of an ordered row, kept lazily so that most stages cost no write: the tokens
/// `j` with `z[j] >= lo` that a masking stage (top-p, typical-p, XTC) has not set to `-inf`.
/// `m` is their largest logit, `scale` the inverse temperature applied so far (the current
/// logits are `z * scale`; every threshold below is a logit of `z`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live<F> {
    pub(crate) lo: F,
    pub(crate) m: F,
    pub(crate) scale: F,
}

impl<F: Real> Live<F> {
    /// The whole row `z` (NaN-free) of maximum `m`; `+inf` logits share the whole mass (they
    /// become 0, the rest `-inf`), so the live maximum is finite.
    #[inline(always)]
    pub(crate) fn new(z: &mut [F], m: F) -> Self {
        let m = if m == F::infinity() {
            for v in z.iter_mut() {
                *v = if *v == F::infinity() {
                    F::zero()
                } else {
                    F::neg_infinity()
                };
            }
            F::zero()
        } else {
            m
        };
        Live::finite(m)
    }

    /// The whole row of finite maximum `m`, as stored (no stage yet).
    #[inline(always)]
    pub(crate) fn finite(m: F) -> Self {
        Live {
            lo: F::neg_infinity(),
            m,
            scale: F::one(),
        }
    }

    /// Divides the logits by the temperature `t`; one too small for `F` (or 0) leaves the
    /// largest logits, as the limit `t -> 0`.
    #[inline(always)]
    pub(crate) fn scale_by(&mut self, t: f64) {
        let scale = self.scale / F::of(t);
        if t <= 0.0 || !scale.is_finite() {
            self.lo = self.m;
            self.scale = F::one();
        } else {
            self.scale = scale;
        }
    }

    #[inline(always)]
    fn has(&self, v: F) -> bool {
        v >= self.lo && v > F::neg_infinity()
    }

    /// Raises the floor to `stage_lo`, but not above `floor` (the `keep` floor of the stage).
    #[inline(always)]
    fn raise(&mut self, stage_lo: F, floor: F) {
        self.lo = self.lo.max(stage_lo.min(floor));
    }
}

/// Fills `s.w` (and `s.blocks`) with the weights `exp((z - m) * scale)` of the live tokens (0
/// for the others) and returns their total.
#[inline(always)]
pub(crate) fn weights<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    s: &mut Scratch<F>,
) -> f64 {
    exp_weights::<F, FMA>(z, live.m, live.scale, live.lo, &mut s.w, &mut s.blocks)
}

/// [`weights`] (the same weights and block sums, bit for bit), with the entropy
/// `-sum p log p` of the live tokens and the smallest live logit (infinite when none is
/// live), from the same pass (`Real::exp_weights` with `ENTROPY`): `H = ln(total) -
/// sum_j w_j x_j / total` with `x_j = (z_j - m) scale`. Each block's products `w_j x_j` are
/// summed in `F`, in 32 lanes (lane `l`: the block's tokens `l`, `l + 32`, ...), and its
/// lanes in `f64` at the block's end: widening every product to `f64` made the pass cost
/// more than the separate read it replaces. (A lane sums 32 products of one sign, so in
/// `f32` its relative error is at most ~2e-6, typically ~3e-7; Hugging Face's float32
/// entropy is a float32 sum over the whole row.)
#[inline(always)]
fn weights_entropy<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    s: &mut Scratch<F>,
) -> (f64, f64, F) {
    let (m, scale, lo) = (live.m, live.scale, live.lo);
    let (total, xsum, low) = F::exp_weights::<FMA, true>(z, m, scale, lo, &mut s.w, &mut s.blocks);
    // log p_j = x_j - ln(total), x_j = (z_j - m) * scale.
    (total, total.ln() - xsum / total, low)
}

/// The logit of the `keep`-th most probable live token (the floor a stage may not raise the
/// live set's floor above; ties kept), or `m` for `keep <= 1`.
///
/// The streaming top-k of the whole row gives it (a `k`-th largest below the floor `lo`
/// just means fewer than `k` tokens are live, and then nothing is raised).
#[inline(always)]
fn keep_floor<F: Real>(z: &[F], live: &Live<F>, keep: usize, s: &mut Scratch<F>) -> F {
    if keep <= 1 {
        return live.m;
    }
    if keep <= z.len() / 8 {
        top_k_candidates(z, keep, &mut s.pairs, &mut s.sel);
        return s.pairs.iter().fold(F::infinity(), |a, c| a.min(c.0));
    }
    s.sel.clear();
    s.sel.extend(z.iter().copied().filter(|&v| live.has(v)));
    if keep >= s.sel.len() {
        return F::neg_infinity();
    }
    let desc = |a: &F, b: &F| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal);
    *s.sel.select_nth_unstable_by(keep - 1, desc).1
}

/// The cut keeping exactly the first `keep` tokens by decreasing weight, ties by lower id
/// (Hugging Face's `min_tokens_to_keep` for top-p and min-p), or `None` for `keep <= 1`.
#[inline(always)]
fn first_n<F: Real>(
    w: &[F],
    keep: usize,
    pairs: &mut Vec<(F, u32)>,
    sel: &mut Vec<F>,
) -> Option<Cut<F>> {
    if keep <= 1 {
        return None;
    }
    top_k_candidates(w, keep.min(w.len()), pairs, sel);
    pairs.sort_unstable_by(by_prob);
    pairs
        .get(keep.min(pairs.len()) - 1)
        .map(|&(tau, j)| Cut { tau, tie_max: j })
}

/// The logit `m + ln(q) / scale` below which a token's probability is under `q` times the
/// largest's.
#[inline(always)]
pub(crate) fn logit_of_ratio<F: Real>(live: &Live<F>, q: f64) -> F {
    F::of(live.m.wide() + q.ln() / live.scale.wide())
}

// ==== the stages =============================================================================

/// Temperature, or with `dynatemp_range > 0` llama.cpp's entropy-scaled temperature
/// (`temp_ext`): `T_dyn = lo + (hi - lo) * (H / ln N)^exponent` over the `N` live tokens,
/// `lo = max(0, T - range)`, `hi = T + range`; with one token nothing changes. A temperature
/// too small for the compute type (or 0) leaves the largest logits, as the limit T -> 0.
#[inline(always)]
pub(crate) fn temperature<F: Real, const FMA: bool>(
    z: &mut [F],
    live: &mut Live<F>,
    p: &RowParams,
    s: &mut Scratch<F>,
) {
    let mut t = p.temperature;
    if p.dynatemp_range > 0.0 {
        let n = z.iter().filter(|&&v| live.has(v)).count();
        if n <= 1 {
            return;
        }
        let (_, h, _) = weights_entropy::<F, FMA>(z, live, s);
        let lo = (t - p.dynatemp_range).max(0.0);
        let hi = t + p.dynatemp_range;
        t = lo + (hi - lo) * (h / (n as f64).ln()).max(0.0).powf(p.dynatemp_exponent);
        if t <= 0.0 {
            // llama.cpp's temperature 0: the first largest logit alone.
            let first = z.iter().position(|&v| v == live.m && live.has(v));
            for (j, v) in z.iter_mut().enumerate() {
                if Some(j) != first {
                    *v = F::neg_infinity();
                }
            }
            return;
        }
    }
    live.scale_by(t);
}

/// Top-k: the `max(k, keep)` largest live logits, ties at the boundary kept.
#[inline(always)]
pub(crate) fn top_k<F: Real>(
    z: &[F],
    live: &mut Live<F>,
    k: usize,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let kth = keep_floor(z, live, k.max(keep), s);
    live.lo = live.lo.max(kth);
}

/// Top-p: the shortest prefix, by decreasing probability and ties by lower id, whose mass
/// reaches `top_p` (the cut of the fast plans, [`top_p_cut`]); written into `z`.
#[inline(always)]
pub(crate) fn top_p<F: Real, const FMA: bool>(
    z: &mut [F],
    live: &mut Live<F>,
    top_p: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let total = weights::<F, FMA>(z, live, s);
    // After a floor (min-p in vLLM's order, top-k, ...) few tokens have weight: their sorted
    // prefix is the cut. Otherwise the dense cut, which a row of zeros would slow down.
    let few = live.lo > F::neg_infinity()
        && s.w.iter().filter(|&&w| w > F::zero()).count() <= s.w.len() / 8;
    let cut = if few {
        s.pairs.clear();
        let positive = s.w.iter().enumerate().filter(|(_, &w)| w > F::zero());
        s.pairs.extend(positive.map(|(j, &w)| (w, j as u32)));
        s.pairs.sort_unstable_by(by_prob);
        sorted_nucleus(&mut s.pairs, top_p);
        let &(tau, tie_max) = s.pairs.last().unwrap_or(&(F::zero(), u32::MAX));
        Cut { tau, tie_max }
    } else {
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
        cut
    };
    let first = first_n(&s.w, keep, &mut s.pairs, &mut s.sel);
    // Weights equal after rounding (a huge temperature) can leave the largest logit out, so
    // the live maximum is taken again. Branch-free (non-short-circuit tests), in 16 lanes.
    let f = first.unwrap_or(Cut {
        tau: F::infinity(),
        tie_max: 0,
    });
    let keeps = |c: &Cut<F>, w: F, j: u32| (w > c.tau) | ((w == c.tau) & (j <= c.tie_max));
    let (lo, ninf) = (live.lo, F::neg_infinity());
    let mut m = [ninf; 16];
    for (b, (zc, wc)) in z.chunks_mut(16).zip(s.w.chunks(16)).enumerate() {
        for (l, (v, &w)) in zc.iter_mut().zip(wc).enumerate() {
            let j = (b * 16 + l) as u32;
            let kept = keeps(&cut, w, j) | keeps(&f, w, j);
            *v = if kept { *v } else { ninf };
            m[l] = m[l].max(if *v >= lo { *v } else { ninf });
        }
    }
    live.m = m.iter().fold(ninf, |a, &b| a.max(b));
}

/// Min-p: the tokens of probability at least `min_p` times the largest (with a floor of
/// `keep > 1`, also the first `keep` by probability, ties by lower id: written into `z`).
#[inline(always)]
pub(crate) fn min_p<F: Real, const FMA: bool>(
    z: &mut [F],
    live: &mut Live<F>,
    min_p: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    if keep <= 1 {
        // The maximum always passes, so no floor is needed.
        live.lo = live.lo.max(logit_of_ratio(live, min_p));
        return;
    }
    weights::<F, FMA>(z, live, s);
    // The largest weight is exactly 1, so the floor is min_p itself (as in the fast plans).
    let wf = F::of(min_p);
    let first = first_n(&s.w, keep, &mut s.pairs, &mut s.sel);
    for (j, (v, &w)) in z.iter_mut().zip(&s.w).enumerate() {
        if !(w >= wf || first.is_some_and(|f| f.keeps(w, j as u32, F::zero()))) {
            *v = F::neg_infinity();
        }
    }
}

/// A probability cutoff: epsilon (drop `p < eps`) or eta (drop `p < min(eta, sqrt(eta)
/// exp(-H))`, `H` the entropy of the live tokens).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cutoff {
    Epsilon(f64),
    Eta(f64),
}

impl Cutoff {
    /// The cutoff `stage` applies with `p`'s value, if `stage` is one.
    pub(crate) fn of(stage: Stage, p: &RowParams) -> Option<Self> {
        match stage {
            Stage::EpsilonCutoff => Some(Cutoff::Epsilon(p.epsilon_cutoff)),
            Stage::EtaCutoff => Some(Cutoff::Eta(p.eta_cutoff)),
            _ => None,
        }
    }
}

/// The weights of the live tokens (in `s.w`, as [`weights`] fills it), their total, and the
/// weight a token must reach to pass the cutoff `c`.
#[inline(always)]
fn cutoff_weight<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    c: Cutoff,
    s: &mut Scratch<F>,
) -> (f64, F) {
    let (total, threshold) = match c {
        Cutoff::Epsilon(e) => (weights::<F, FMA>(z, live, s), e),
        Cutoff::Eta(e) => {
            let (total, h, _) = weights_entropy::<F, FMA>(z, live, s);
            (total, e.min(e.sqrt() * (-h).exp()))
        }
    };
    // p_j >= t  <=>  w_j >= t * total: compared on the weights as computed; a logit worked
    // out from the threshold would amplify rounding by the temperature.
    (total, F::of(threshold * total))
}

/// Epsilon or eta sampling ([`Cutoff`]): drops the live tokens of probability under the
/// cutoff's threshold.
#[inline(always)]
pub(crate) fn cutoff<F: Real, const FMA: bool>(
    z: &[F],
    live: &mut Live<F>,
    c: Cutoff,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let (_, t) = cutoff_weight::<F, FMA>(z, live, c, s);
    // The smallest logit whose weight passes is the floor (weights grow with the logit).
    let mut lows = [F::infinity(); 16];
    let mut zc = z.chunks_exact(16);
    let mut wc = s.w.chunks_exact(16);
    for (zb, wb) in (&mut zc).zip(&mut wc) {
        for (l, (&v, &w)) in zb.iter().zip(wb).enumerate() {
            lows[l] = lows[l].min(if w >= t && w > F::zero() {
                v
            } else {
                F::infinity()
            });
        }
    }
    for (&v, &w) in zc.remainder().iter().zip(wc.remainder()) {
        if w >= t && w > F::zero() {
            lows[0] = lows[0].min(v);
        }
    }
    let stage_lo = lows.iter().fold(live.m, |a, &b| a.min(b));
    let floor = keep_floor(z, live, keep, s);
    live.raise(stage_lo, floor);
}

/// [`cutoff`] as the row's last stage with no `keep` floor, fused with the final weights:
/// the stage's own weights are kept where they pass and zeroed elsewhere, in one pass, and
/// their total returned, where [`cutoff`] would find the floor in one pass and [`weights`]
/// compute the same weights again (the same values bit for bit: the maximum and scale are
/// unchanged, and the tokens at or above the floor are those whose weight passes, as weights
/// grow with the logit). `s.blocks` is filled as [`weights`] fills it.
#[inline(always)]
pub(crate) fn cutoff_weights<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    c: Cutoff,
    s: &mut Scratch<F>,
) -> f64 {
    let (total, t) = cutoff_weight::<F, FMA>(z, live, c, s);
    if t <= F::zero() {
        return total;
    }
    // A threshold above the largest weight keeps the largest logits (the floor of `cutoff`
    // is then the maximum), which is not quite "the largest weight": a logit just under the
    // maximum may round to the same weight.
    let top = t > exp_weight::<F, FMA>(live.m, live.m, live.scale);
    let (m, blocks) = (live.m, &mut s.blocks);
    if top {
        zero_weights_where(&mut s.w, z, |v, _| v >= m, blocks)
    } else {
        zero_weights_where(&mut s.w, z, |_, wj| wj >= t, blocks)
    }
}

/// Top-nσ: the logits at least `max - n σ`, σ the population standard deviation of the live
/// logits (llama.cpp `top_n_sigma`). Invariant under temperature.
#[inline(always)]
pub(crate) fn top_n_sigma<F: Real>(
    z: &[F],
    live: &mut Live<F>,
    n: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    // Deviations from the maximum, in 32 f64 lanes (branch-free, so they vectorise; 32, not
    // 16, so that four chains of adds per sum hide the adds' latency): sum, sum of squares
    // and count in one read.
    const L: usize = 32;
    let m = live.m.wide();
    let (mut sum, mut sq, mut count) = ([0.0f64; L], [0.0f64; L], [0.0f64; L]);
    let lo = live.lo.max(F::min_value());
    let mut chunks = z.chunks_exact(L);
    for c in &mut chunks {
        for (lane, &v) in c.iter().enumerate() {
            // Masked tokens (-inf, or under the floor) count 0; vectorises without branches.
            let d = if v >= lo { v.wide() - m } else { 0.0 };
            sum[lane] += d;
            sq[lane] += d * d;
            count[lane] += if v >= lo { 1.0 } else { 0.0 };
        }
    }
    for &v in chunks.remainder() {
        if v >= lo {
            let d = v.wide() - m;
            sum[0] += d;
            sq[0] += d * d;
            count[0] += 1.0;
        }
    }
    let count = count.iter().sum::<f64>();
    let mean = sum.iter().sum::<f64>() / count;
    let var = (sq.iter().sum::<f64>() / count - mean * mean).max(0.0);
    let floor = keep_floor(z, live, keep, s);
    live.raise(F::of(m - n * var.sqrt()), floor);
}

/// Typical-p: with `H` the entropy, the tokens in order of `|-log p - H|` ascending up to
/// the first whose cumulative mass reaches `mass`, and every token whose distance ties that
/// one's (Hugging Face `TypicalLogitsWarper`); at least the `keep` most typical. Written into
/// `z`.
#[inline(always)]
pub(crate) fn typical_p<F: Real, const FMA: bool>(
    z: &mut [F],
    live: &mut Live<F>,
    mass: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    let Threshold { c, tau, .. } = typical_threshold::<F, FMA>(z, live, mass, false, s);
    let tk = typical_key(live, c);
    let key = |v: F| tk.of(v);
    // The floor: the first `keep` by distance, ties by lower id (Hugging Face).
    if keep <= 1 || z.iter().filter(|&&v| key(v) <= tau).count() >= keep {
        return typical_cut(z, live, key, tau);
    }
    s.pairs.clear();
    let finite = z.iter().map(|&v| key(v)).enumerate();
    s.pairs.extend(
        finite
            .filter(|(_, d)| d.is_finite())
            .map(|(j, d)| (d, j as u32)),
    );
    let asc = |a: &(F, u32), b: &(F, u32)| {
        let by_key = a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal);
        by_key.then(a.1.cmp(&b.1))
    };
    let n = keep.min(s.pairs.len());
    let first = *s.pairs.select_nth_unstable_by(n - 1, asc).1;
    let mut m = F::neg_infinity();
    for (j, v) in z.iter_mut().enumerate() {
        let d = key(*v);
        let floor = d < first.0 || (d == first.0 && j as u32 <= first.1);
        if d > tau && !floor {
            *v = F::neg_infinity();
        }
        m = m.max(*v);
    }
    live.m = m;
}

/// Typical-p's kept set as the row's last stage ([`typical_weights`]): the tokens whose key
/// is at most `tau`, of weights `s.w` (the cut ones not zeroed, or stale: see
/// [`typical_threshold`]) and total `total`, with `s.blocks` their sums per block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypicalKept<F> {
    key: TypicalKey<F>,
    tau: F,
    pub(crate) total: f64,
}

impl<F: Real> TypicalKept<F> {
    /// Whether the token of logit `v` is kept.
    #[inline(always)]
    pub(crate) fn keeps(&self, v: F) -> bool {
        self.key.of(v) <= self.tau
    }

    /// Zeroes the cut tokens' weights in `s.w` and sums the blocks again as [`weights`]
    /// would after the cut (bit for bit: the maximum, scale and floor are unchanged), for
    /// the outputs that read the final weights; returns that total.
    #[inline(always)]
    pub(crate) fn zero_cut(&self, z: &[F], s: &mut Scratch<F>) -> f64 {
        keep_keys_within(&mut s.w, z, &self.key, self.tau, &mut s.blocks)
    }
}

/// Typical-p as the row's last stage, with no floor: when the largest logit is kept, the
/// final weights are the ones typical-p computed and the kept set is drawn from by its key
/// ([`TypicalKept`]; the block sums come from the read that found the threshold, so no pass
/// cuts the row). `z` is not written: when the largest logit is cut (`Err`), the caller
/// cuts the row ([`TypicalCut::apply`]) and the stages go on. `scanned`: the row's first read
/// took its sums and head ([`typical_threshold`]).
#[inline(always)]
pub(crate) fn typical_weights<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    mass: f64,
    scanned: bool,
    s: &mut Scratch<F>,
) -> Result<TypicalKept<F>, TypicalCut<F>> {
    let th = typical_threshold::<F, FMA>(z, live, mass, scanned, s);
    let (tau, read) = (th.tau, th.read);
    let key = typical_key(live, th.c);
    if key.of(live.m) > tau {
        return Err(TypicalCut { key, tau });
    }
    let mut kept = TypicalKept {
        key,
        tau,
        total: 0.0,
    };
    // The read's blocks hold the mass below its bracket and `s.pairs` the bracket's tokens:
    // with `tau` among them, the kept set is those below and the listed ones up to `tau`.
    if read && s.pairs.iter().any(|q| q.0 == tau) {
        for &(_, j) in s.pairs.iter().filter(|q| q.0 <= tau) {
            s.blocks[j as usize / BLOCK] += s.w[j as usize].wide();
        }
        kept.total = s.blocks.iter().sum();
    } else {
        kept.total = kept.zero_cut(z, s);
    }
    Ok(kept)
}

/// Typical-p's cut of a row whose largest logit it does not keep ([`typical_weights`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypicalCut<F> {
    key: TypicalKey<F>,
    tau: F,
}

impl<F: Real> TypicalCut<F> {
    /// Writes `-inf` over the cut tokens of `z`, as [`typical_p`] does.
    #[inline(always)]
    pub(crate) fn apply(&self, z: &mut [F], live: &mut Live<F>) {
        let key = self.key;
        typical_cut(z, live, |v| key.of(v), self.tau);
    }
}

/// Typical-p's centre and threshold ([`typical_threshold`]).
struct Threshold<F> {
    /// Token `j` is kept when `|c - z_j| <= tau` ([`typical_key`]).
    c: F,
    tau: F,
    /// Whether the blocks and pairs hold the read that placed `tau` ([`key_threshold`]).
    read: bool,
}

/// Typical-p's centre `c` and threshold `τ` ([`Threshold`]).
///
/// `-log p_j - H = ((m - z_j) * scale + ln(total)) - H`, so the key of token `j` is
/// `|c - z_j|` (times `scale`): every pass works it out from the logit as it reads it, and
/// no key row is written. The total and the entropy come from the row's [`ShiftedSums`]
/// and `s.pairs` holds its [`HEAD`] largest logits: with `scanned`, from its first read
/// (`Real::typical_scan`); else they are taken here, in one read. A long peaked row then
/// tries its head alone ([`head_key_threshold`]): when that decides, no exp pass runs, and
/// `s.w` holds the head's weights at their ids and stale values elsewhere, which nothing
/// reads (every kept token is in the head, and `s.w` is read at kept tokens only).
/// Otherwise the exp pass writes `s.w` and [`key_threshold`] decides.
///
/// [`ShiftedSums`]: crate::softmax::ShiftedSums
#[inline(always)]
fn typical_threshold<F: Real, const FMA: bool>(
    z: &[F],
    live: &Live<F>,
    mass: f64,
    scanned: bool,
    s: &mut Scratch<F>,
) -> Threshold<F> {
    if !scanned {
        let (pairs, sel) = (&mut s.pairs, &mut s.sel);
        F::typical_scan::<FMA>(z, live.scale, live.lo, HEAD, pairs, sel, &mut s.sums);
    }
    let (total, h, z_min) = s.sums.entropy(live.scale);
    let c = F::of(live.m.wide() + (total.ln() - h) / live.scale.wide());
    let key = typical_key(live, c);
    // `c - v` rounds monotonically in `v`: the largest finite key is at an end of the range.
    let kmax = if z_min.is_finite() {
        key.of(live.m).max(key.of(z_min))
    } else {
        F::zero()
    };
    // An entropy of at most ln(4 HEAD) is the spread of at most 4 HEAD equal tokens: a peaked
    // row. (A flat row of logits N(0, 2.86^2), as the benchmark's bulk at T 0.7: ln 2,100.)
    let peaked = h <= (4.0 * HEAD as f64).ln() && z.len() >= TYPICAL_SAMPLED_MIN;
    let target = (mass * total, total);
    if peaked && kmax > F::zero() {
        // The head's weights (the exp pass's, bit for bit), in the pairs and at their ids.
        s.w.resize(z.len(), F::zero());
        if cfg!(test) {
            // Poisons the stale weights, so that a test fails if anything reads them.
            s.w.fill(F::nan());
        }
        for q in s.pairs.iter_mut() {
            let v = z[q.1 as usize];
            q.0 = if live.has(v) {
                exp_weight::<F, FMA>(v, live.m, live.scale)
            } else {
                F::zero()
            };
            s.w[q.1 as usize] = q.0;
        }
        if let Some(tau) = head_key_threshold(z, &key, target.0, s) {
            return Threshold { c, tau, read: true };
        }
    }
    weights::<F, FMA>(z, live, s);
    // The weights leave the scratch while the threshold borrows the rest (a move, no copy).
    let w = std::mem::take(&mut s.w);
    let (tau, read) = key_threshold(z, &key, kmax, &w, target, peaked, s);
    s.w = w;
    Threshold { c, tau, read }
}

/// Typical-p's key of a logit: its distance from `c`, infinite for a token not live.
#[inline(always)]
fn typical_key<F: Real>(live: &Live<F>, c: F) -> TypicalKey<F> {
    TypicalKey { lo: live.lo, c }
}

/// Writes `-inf` over the tokens whose key is above `tau`, in one branch-free pass.
#[inline(always)]
fn typical_cut<F: Real>(z: &mut [F], live: &mut Live<F>, key: impl Fn(F) -> F, tau: F) {
    let mut m = [F::neg_infinity(); 16];
    let cut = |v: &mut F, m: &mut F| {
        *v = if key(*v) > tau { F::neg_infinity() } else { *v };
        *m = if *v > *m { *v } else { *m };
    };
    // Whole chunks of 16 (`chunks_exact`): the loop vectorizes, which `chunks` did not.
    let mut zc = z.chunks_exact_mut(16);
    for zb in &mut zc {
        for l in 0..16 {
            cut(&mut zb[l], &mut m[l]);
        }
    }
    for v in zc.into_remainder() {
        cut(v, &mut m[0]);
    }
    live.m = m.iter().fold(F::neg_infinity(), |a, &b| a.max(b));
}

/// Buckets per round of [`key_threshold`]'s histogram.
const KEY_BUCKETS: usize = 512;
/// Interleaved histograms of [`key_threshold`]'s first round: consecutive tokens in one
/// bucket do not wait on each other's read-modify-write. (`KEY_BUCKETS * KEY_LANES` is a
/// power of two: an index masked by it needs no bounds check.)
const KEY_LANES: usize = 4;
/// A list of at most this many tokens is sorted; a longer one is split by a histogram.
const KEY_SORT_MAX: usize = 64;

/// The bucket of key `k` among [`KEY_BUCKETS`] over `[lo, ..]` (`scale` buckets per unit):
/// clamped first (an infinite key lands in the top bucket, NaN in bucket 0, as a saturating
/// `as` would put them), so the unchecked conversion is exact and a chunk's indices
/// vectorize (a saturating `as` compiled to a scalar convert and two branches per token).
#[inline(always)]
fn key_bucket<F: Real>(k: F, lo: F, scale: F) -> usize {
    let x = ((k - lo) * scale)
        .wide()
        .max(0.0)
        .min((KEY_BUCKETS - 1) as f64);
    // SAFETY: x is finite and in [0, KEY_BUCKETS - 1] (max/min return the non-NaN operand).
    unsafe { x.to_int_unchecked::<i32>() as usize }
}

/// The first bucket of `mass` (a histogram) where `mass_below` plus the buckets so far
/// reaches `target`, or the last; `mass_below` gains the buckets before it.
#[inline(always)]
fn boundary_bucket(mass: &[f64], mass_below: &mut f64, target: f64) -> usize {
    let top = mass.len() - 1;
    for (b, &mb) in mass.iter().enumerate() {
        if *mass_below + mb >= target || b == top {
            return b;
        }
        *mass_below += mb;
    }
    top
}

/// [`sampled_key_threshold`] samples one chunk of 16 tokens in this many.
const KEY_STRIDE: usize = 16;
/// The shortest row [`key_threshold`] samples (64 sampled chunks of 16).
const TYPICAL_SAMPLED_MIN: usize = 64 * 16 * KEY_STRIDE;
/// [`sampled_key_threshold`] samples a row whose [`HEAD`] heaviest tokens hold at least this
/// share of its mass ...
const KEY_HEAD_SHARE: f64 = 0.5;
/// ... and reads its bracket when the bracket's margin is at most this share of the target.
/// (A wide bracket lists more tokens: at a 5-7% margin, 2,000-5,000 on bench-like rows,
/// ~40 µs with their split, still well under the full histogram's scattered adds.)
const KEY_MARGIN_MAX: f64 = 0.10;

/// The smallest finite key `τ` such that the tokens with `key <= τ` hold at least `target`
/// weight (the largest finite key if none does; `kmax` is it), with `key(z_j)` token `j`'s
/// key (`total`: the weight of every live token). Tokens with an infinite key do not count.
///
/// A long `peaked` row (its mass in few tokens, which a sample bounds well; `s.pairs`: its
/// [`HEAD`] heaviest tokens and their weights) tries a bracket from a sample
/// ([`sampled_key_threshold`]), exact when it holds; otherwise, and for other rows,
/// [`exact_key_threshold`]. Second: whether `s.blocks` and `s.pairs` hold the last read
/// ([`bracket_read`]) of the bracket `τ` came from.
#[inline(always)]
fn key_threshold<F: Real>(
    z: &[F],
    key: &TypicalKey<F>,
    kmax: F,
    w: &[F],
    (target, total): (f64, f64),
    peaked: bool,
    s: &mut Scratch<F>,
) -> (F, bool) {
    if kmax <= F::zero() {
        return (kmax, false); // every finite key is 0: all tie
    }
    if peaked {
        if let Some(tau) = sampled_key_threshold(z, key, kmax, w, (target, total), s) {
            return (tau, true);
        }
    }
    (exact_key_threshold(z, key, kmax, w, target, s), true)
}

/// [`key_threshold`] from the head alone: `s.pairs` holds the [`HEAD`] largest logits' ids
/// and weights (and their ties), every other token's logit is at most the head's least, `l`.
/// When `c >= l`, every other token's key is at least `key(l)` (`c - v` rounds monotonically
/// in `v`); so when the head's tokens in key order reach `target` at a key `τ < key(l)`, `τ` is
/// the threshold and no read of the row is needed. On a peaked row the kept set is usually a
/// handful of head tokens. Leaves what a bracket read would (see [`key_threshold`]): the
/// head's `(key, id)` in `s.pairs` and nothing below a bracket in `s.blocks`.
#[inline(always)]
fn head_key_threshold<F: Real>(
    z: &[F],
    key: &TypicalKey<F>,
    target: f64,
    s: &mut Scratch<F>,
) -> Option<F> {
    let least = s
        .pairs
        .iter()
        .fold(F::infinity(), |a, q| a.min(z[q.1 as usize]));
    if key.c < least {
        return None;
    }
    s.keyed.clear();
    s.keyed
        .extend(s.pairs.iter().map(|q| (key.of(z[q.1 as usize]), q.0)));
    let tau = sorted_threshold(&mut s.keyed, 0.0, target)?;
    if tau >= key.of(least) {
        return None;
    }
    for q in s.pairs.iter_mut() {
        q.0 = key.of(z[q.1 as usize]);
    }
    s.blocks.clear();
    s.blocks.resize(z.len().div_ceil(BLOCK), 0.0);
    Some(tau)
}

/// [`key_threshold`] from a bracket that a sample places: the [`HEAD`] heaviest tokens
/// (`s.pairs`: ids and weights) exactly, and of the others every [`KEY_STRIDE`]-th chunk of 16, in a histogram of the keys
/// (the same buckets as [`exact_key_threshold`]'s); the bracket is the buckets where the
/// estimated mass comes within four standard deviations of the sample (and 0.1%) of
/// `target`. One exact read then takes the mass below the bracket and lists the tokens in
/// it, and [`list_threshold`] decides, exactly. `None` when the read shows that the bracket
/// misses the threshold (an unlucky sample, or a rounding): the caller takes the exact way.
#[inline(always)]
fn sampled_key_threshold<F: Real>(
    z: &[F],
    key: &TypicalKey<F>,
    kmax: F,
    w: &[F],
    (target, total): (f64, f64),
    s: &mut Scratch<F>,
) -> Option<F> {
    let scale = F::of((KEY_BUCKETS - 1) as f64) / kmax;
    let slot = |k: F| key_bucket(k, F::zero(), scale);
    // Every token outside the head weighs at most `head_min` (see `top_p_cut`; equal weights
    // where logits tie or round alike).
    let head_min = s.pairs.iter().fold(F::infinity(), |a, q| a.min(q.0));
    let head: f64 = s.pairs.iter().map(|q| q.0.wide()).sum();
    if head < KEY_HEAD_SHARE * total {
        // A flat row: its mass is spread over many tokens, whose sample would place too wide
        // a bracket to pay for its read.
        return None;
    }
    let mut mass = [0.0f64; KEY_BUCKETS];
    for &(wj, j) in s.pairs.iter() {
        let k = key.of(z[j as usize]);
        if k <= kmax {
            mass[slot(k)] += wj.wide();
        }
    }
    const SLOTS: usize = KEY_BUCKETS * KEY_LANES;
    let mut hist = [0.0f64; SLOTS];
    let mut sq = [0.0f64; 16];
    let chunks = z.len() / 16;
    let zs = z.chunks_exact(16).step_by(KEY_STRIDE);
    let ws = w.chunks_exact(16).step_by(KEY_STRIDE);
    let mut sampled = 0usize;
    for (zb, wb) in zs.zip(ws) {
        let mut at = [0u32; 16];
        let mut add = [F::zero(); 16];
        for l in 0..16 {
            let k = key.of(zb[l]);
            at[l] = (slot(k) * KEY_LANES + l % KEY_LANES) as u32;
            let light = (k <= kmax) & (wb[l] < head_min);
            add[l] = wb[l] * if light { F::one() } else { F::zero() };
            sq[l] += (add[l] * add[l]).wide();
        }
        for l in 0..16 {
            hist[at[l] as usize & (SLOTS - 1)] += add[l].wide();
        }
        sampled += 1;
    }
    // Each sampled chunk stands for `per` chunks (the last partial one left to the check).
    let per = chunks as f64 / sampled as f64;
    for (mb, q) in mass.iter_mut().zip(hist.chunks_exact(KEY_LANES)) {
        *mb += per * q.iter().sum::<f64>();
    }
    let sd = per * sq.iter().sum::<f64>().sqrt();
    let margin = 4.0 * sd + 1e-3 * target;
    if margin > KEY_MARGIN_MAX * target {
        return None;
    }
    // The bracket: from the first bucket where the estimate may reach the target to the
    // first where it surely does.
    let (mut cum, mut first, mut last) = (0.0, None, KEY_BUCKETS - 1);
    for (b, &mb) in mass.iter().enumerate() {
        cum += mb;
        if first.is_none() && cum >= target - margin {
            first = Some(b);
        }
        if cum >= target + margin {
            last = b;
            break;
        }
    }
    let first = first.unwrap_or(KEY_BUCKETS - 1);
    // The exact read: the mass under the bracket, the bracket's tokens listed.
    let mass_below = bracket_read(z, w, &bucket_range(key, kmax, scale, first, last), s);
    let listed = s.keyed.iter().map(|q| q.1.wide()).sum::<f64>();
    if mass_below >= target || mass_below + listed < target {
        return None;
    }
    list_threshold(&mut s.keyed, mass_below, target)
}

/// The bracket of the key-histogram buckets `first..=last` (`scale` buckets per unit of
/// key; the top bucket has no upper end).
#[inline(always)]
fn bucket_range<F: Real>(
    key: &TypicalKey<F>,
    kmax: F,
    scale: F,
    first: usize,
    last: usize,
) -> KeyBracket<F> {
    KeyBracket {
        key: *key,
        kmax,
        scale,
        b0: F::of(first as f64),
        b1: F::of(last as f64 + 1.0),
        open: last == KEY_BUCKETS - 1,
    }
}

/// [`key_bracket`]'s read: the mass below the bracket (returned, and per block into
/// `s.blocks`), the `(key, id)` pairs inside it into `s.pairs` and their `(key, weight)`
/// into `s.keyed`.
#[inline(always)]
fn bracket_read<F: Real>(z: &[F], w: &[F], bracket: &KeyBracket<F>, s: &mut Scratch<F>) -> f64 {
    let below = key_bracket(z, w, bracket, &mut s.pairs, &mut s.blocks);
    s.keyed.clear();
    s.keyed
        .extend(s.pairs.iter().map(|&(k, j)| (k, w[j as usize])));
    below
}

/// [`key_threshold`] from a histogram of every token's key (bucket index monotone in the
/// key): it finds the bucket where the mass is reached; that bucket's tokens are listed with
/// their keys and weights, and [`list_threshold`] decides. No key row, no sort of the row.
#[inline(always)]
fn exact_key_threshold<F: Real>(
    z: &[F],
    key: &TypicalKey<F>,
    kmax: F,
    w: &[F],
    target: f64,
    s: &mut Scratch<F>,
) -> F {
    let scale = F::of((KEY_BUCKETS - 1) as f64) / kmax;
    const SLOTS: usize = KEY_BUCKETS * KEY_LANES;
    let mut hist = [0.0f64; SLOTS];
    // By blocks of BLOCK: the slots and weights of a block first (a loop that vectorizes),
    // then the adds, reading them back from L1 long after they were stored (extracting them
    // from the vector registers, or reading them back right after the store, was slower).
    let mut at = [0u16; BLOCK];
    let mut add = [F::zero(); BLOCK];
    for (zb, wb) in z.chunks(BLOCK).zip(w.chunks(BLOCK)) {
        let n = zb.len();
        for ((&v, &wj), (a, d)) in zb.iter().zip(wb).zip(at.iter_mut().zip(add.iter_mut())) {
            let k = key.of(v);
            *a = key_bucket(k, F::zero(), scale) as u16;
            // A product with 0 or 1 (weights are finite): a select compiled to a branch.
            *d = wj * if k <= kmax { F::one() } else { F::zero() };
        }
        for (j, (&a, &d)) in at[..n].iter().zip(&add[..n]).enumerate() {
            hist[(a as usize * KEY_LANES + j % KEY_LANES) & (SLOTS - 1)] += d.wide();
        }
    }
    let mut mass = [0.0f64; KEY_BUCKETS];
    for (mb, q) in mass.iter_mut().zip(hist.chunks_exact(KEY_LANES)) {
        *mb = q.iter().sum();
    }
    let chosen = boundary_bucket(&mass, &mut 0.0, target);
    // The chosen bucket's keys lie in [chosen, chosen + 1) of the scaled key; the read sums
    // the mass below them as the sampled bracket's read does.
    let bracket = bucket_range(key, kmax, scale, chosen, chosen);
    let mass_below = bracket_read(z, w, &bracket, s);
    list_threshold(&mut s.keyed, mass_below, target).unwrap_or(kmax)
}

/// The smallest key `τ` of the list `buf` (keys and weights, any order) such that
/// `mass_below` plus the weight of the listed tokens with `key <= τ` reaches `target`, or the
/// largest key if none does; `None` for an empty list. A list longer than [`KEY_SORT_MAX`]
/// is split by a histogram of its keys until the boundary bucket's tokens are few, then
/// those are sorted.
#[inline(always)]
fn list_threshold<F: Real>(buf: &mut Vec<(F, F)>, mut mass_below: f64, target: f64) -> Option<F> {
    let mut mass = [0.0f64; KEY_BUCKETS];
    while buf.len() > KEY_SORT_MAX {
        let lo = buf.iter().fold(F::infinity(), |a, c| a.min(c.0));
        let hi = buf.iter().fold(F::neg_infinity(), |a, c| a.max(c.0));
        if hi <= lo {
            break; // one key: every token ties
        }
        let scale = F::of((KEY_BUCKETS - 1) as f64) / (hi - lo);
        mass.fill(0.0);
        for &(k, wj) in buf.iter() {
            mass[key_bucket(k, lo, scale)] += wj.wide();
        }
        let chosen = boundary_bucket(&mass, &mut mass_below, target);
        buf.retain(|c| key_bucket(c.0, lo, scale) == chosen);
    }
    sorted_threshold(buf, mass_below, target).or_else(|| buf.last().map(|c| c.0))
}

/// The smallest key `τ` of `buf` (keys and weights; sorted here by key) such that
/// `mass_below` plus the weight of its tokens with `key <= τ` reaches `target`; `None` when
/// the whole list does not.
#[inline(always)]
fn sorted_threshold<F: Real>(buf: &mut [(F, F)], mut mass_below: f64, target: f64) -> Option<F> {
    buf.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    for &(k, wj) in buf.iter() {
        mass_below += wj.wide();
        if mass_below >= target {
            return Some(k);
        }
    }
    None
}

/// XTC ("exclude top choices", llama.cpp `xtc`): when the row's `coin` falls below
/// `probability` and two or more tokens have probability at least `threshold`, removes all
/// of them except the least probable (all of those, if tied) — unless fewer than `keep`
/// tokens would remain. Written into `z` (a handful of tokens, for a usual threshold).
#[inline(always)]
pub(crate) fn xtc<F: Real, const FMA: bool>(
    z: &mut [F],
    live: &mut Live<F>,
    probability: f64,
    threshold: f64,
    coin: f64,
    keep: usize,
    s: &mut Scratch<F>,
) {
    if coin >= probability {
        return;
    }
    let total = weights::<F, FMA>(z, live, s);
    let t = threshold * total;
    let l = *live;
    let above = |zj: F, wj: F| l.has(zj) & (wj.wide() >= t);
    // Counts and the least logit above in 16 lanes, without branches (they vectorize; a
    // branch on "live" mispredicts wherever the floor cuts through the row).
    let (mut above_n, mut least_l, mut live_n) = ([0u32; 16], [F::infinity(); 16], [0u32; 16]);
    let mut zc = z.chunks_exact(16);
    let mut wc = s.w.chunks_exact(16);
    let mut tally = |lane: usize, zj: F, wj: F| {
        let a = above(zj, wj);
        live_n[lane] += u32::from(l.has(zj));
        above_n[lane] += u32::from(a);
        least_l[lane] = if a & (zj < least_l[lane]) {
            zj
        } else {
            least_l[lane]
        };
    };
    for (zb, wb) in (&mut zc).zip(&mut wc) {
        for i in 0..16 {
            tally(i, zb[i], wb[i]);
        }
    }
    for (&zj, &wj) in zc.remainder().iter().zip(wc.remainder()) {
        tally(0, zj, wj);
    }
    let n_above: usize = above_n.iter().map(|&n| n as usize).sum();
    let n_live: usize = live_n.iter().map(|&n| n as usize).sum();
    let least = least_l.iter().fold(F::infinity(), |a, &b| a.min(b));
    if n_above < 2 {
        return;
    }
    // The least probable stays, so only a floor above one token can stop the removal.
    if keep > 1 {
        let removed = z
            .iter()
            .zip(&s.w)
            .filter(|&(&zj, &wj)| above(zj, wj) && zj > least)
            .count();
        if n_live - removed < keep {
            return;
        }
    }
    for (zj, &wj) in z.iter_mut().zip(&s.w) {
        *zj = if above(*zj, wj) & (*zj > least) {
            F::neg_infinity()
        } else {
            *zj
        };
    }
    live.m = least;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XTC's keep floor counts only the live tokens: above a floor that leaves three, all of
    /// them above the threshold, removing two would leave one, so `keep = 2` stops it, however
    /// many tokens lie under the floor; `keep = 1` lets it remove them.
    #[test]
    fn xtc_keep_counts_live_tokens_only() {
        let mut z = vec![0.0f64; 40];
        z[3] = 10.0;
        z[17] = 9.9;
        z[38] = 9.8;
        for keep in [1usize, 2] {
            let (mask, live) = run(
                |z, live, s| {
                    live.lo = 5.0;
                    xtc::<f64, true>(z, live, 1.0, 0.1, 0.0, keep, s);
                },
                &z,
            );
            let kept: Vec<usize> = (0..40).filter(|&j| mask[j]).collect();
            let want = if keep == 1 { vec![38] } else { vec![3, 17, 38] };
            assert_eq!(kept, want, "keep {keep}");
            assert_eq!(live.m, if keep == 1 { 9.8 } else { 10.0 });
        }
    }

    /// The fused last cutoff leaves the weights, block sums and total that `cutoff` then
    /// `weights` leave, bit for bit: epsilon and eta, thresholds above the largest weight,
    /// logits tied at and just under the maximum, masked tokens.
    #[test]
    fn cutoff_weights_equal_cutoff_then_weights() {
        let mut rnd = crate::test_util::uniforms(23);
        for case in 0..60 {
            let v = [50usize, 1000, 3000][case % 3];
            let mut z: Vec<f32> = (0..v).map(|_| ((rnd() - 0.5) * 12.0) as f32).collect();
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            z[case % v] = m;
            z[(case * 7 + 1) % v] = m - 1e-7;
            z[(case * 3 + 2) % v] = f32::NEG_INFINITY;
            let eps = [1e-4, 3e-3, 0.2, 0.9999][case % 4];
            let c = if case % 2 == 0 {
                Cutoff::Epsilon(eps)
            } else {
                Cutoff::Eta(eps)
            };
            let live = Live {
                lo: if case % 5 == 0 {
                    -2.0
                } else {
                    f32::NEG_INFINITY
                },
                m,
                scale: [1.0f32, 1.0 / 0.7, 3.0][case % 3],
            };
            let mut s1 = Scratch::default();
            let mut l1 = live;
            cutoff::<f32, true>(&z, &mut l1, c, 1, &mut s1);
            let t1 = weights::<f32, true>(&z, &l1, &mut s1);
            let mut s2 = Scratch::default();
            let t2 = cutoff_weights::<f32, true>(&z, &live, c, &mut s2);
            assert_eq!(t1.to_bits(), t2.to_bits(), "case {case}");
            assert_eq!(s1.blocks, s2.blocks, "case {case}");
            let bits = |w: &[f32]| w.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s1.w), bits(&s2.w), "case {case}");
        }
    }

    /// Runs one stage on the whole row `z`; returns the live set's mask and the live set.
    fn run(
        stage: impl Fn(&mut Vec<f64>, &mut Live<f64>, &mut Scratch<f64>),
        z: &[f64],
    ) -> (Vec<bool>, Live<f64>) {
        let mut z = z.to_vec();
        let mut s = Scratch::default();
        let m = max_nan(&z).0;
        let mut live = Live::new(&mut z, m);
        stage(&mut z, &mut live, &mut s);
        (z.iter().map(|&v| live.has(v)).collect(), live)
    }

    fn kept(r: (Vec<bool>, Live<f64>)) -> Vec<bool> {
        r.0
    }

    fn logs(p: &[f64]) -> Vec<f64> {
        p.iter().map(|v| v.ln()).collect()
    }

    #[test]
    fn orders_parse_and_refuse() {
        assert_eq!(parse_order::<&str>(&[]).unwrap(), []);
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
            |z, l, s| typical_p::<_, false>(z, l, 0.5, 1, s),
            &logs(&[0.97, 0.01, 0.01, 0.01]),
        );
        assert_eq!(kept(z), [true, false, false, false]);
        let z = run(
            |z, l, s| typical_p::<_, false>(z, l, 0.5, 1, s),
            &logs(&[0.4, 0.2, 0.2, 0.2]),
        );
        assert_eq!(kept(z), [false, true, true, true]);
        // The floor keeps the most typical tokens first.
        let z = run(
            |z, l, s| typical_p::<_, false>(z, l, 0.5, 2, s),
            &logs(&[0.97, 0.01, 0.01, 0.01]),
        );
        // The three 0.01 tie: the floor takes the lowest id (Hugging Face keeps exactly
        // min_tokens_to_keep).
        assert_eq!(kept(z), [true, true, false, false]);
    }

    /// Typical-p's kept set by a full sort of the distances (the reference).
    fn typical_by_sort(z: &[f64], mass: f64) -> Vec<bool> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let total: f64 = w.iter().sum();
        let h = total.ln() - w.iter().zip(z).map(|(w, v)| w * (v - m)).sum::<f64>() / total;
        let c = m + total.ln() - h;
        let mut idx: Vec<usize> = (0..z.len()).collect();
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
        z.iter().map(|v| (c - v).abs() <= tau).collect()
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
            let got = run(|z, l, s| typical_p::<_, false>(z, l, mass, 1, s), &z);
            assert_eq!(kept(got), typical_by_sort(&z, mass), "case {case}");
        }
    }

    /// Peaked rows take the sampled bracket (`sampled_key_threshold`), and equal a full sort:
    /// a bulk and boosted tokens of several strengths, some rows with the boosted tokens
    /// only in chunks the sample skips (so that it misses their mass, and the exact read
    /// must catch that).
    #[test]
    fn typical_peaked_rows_equal_a_sort() {
        let mut rnd = crate::test_util::uniforms(12);
        for case in 0..48 {
            let n = 20_000 + case * 997;
            let mut z: Vec<f64> = (0..n)
                .map(|_| ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 1.5)
                .collect();
            let boosted = [4, 32, 200, 1000][case % 4];
            let strength = [8.0, 12.0, 20.0][case / 4 % 3];
            let skipped = case / 12 % 2 == 1;
            for _ in 0..boosted {
                let mut j = (rnd() * n as f64) as usize;
                if skipped && (j / 16).is_multiple_of(KEY_STRIDE) {
                    j = (j + 16).min(n - 1);
                }
                z[j] += strength * (0.5 + rnd());
            }
            let mass = [0.2, 0.5, 0.9, 0.99][case / 2 % 4];
            let got = run(|z, l, s| typical_p::<_, false>(z, l, mass, 1, s), &z);
            assert_eq!(kept(got), typical_by_sort(&z, mass), "case {case}");
        }
    }

    /// Rows whose kept set may or may not lie in the [`HEAD`] largest logits
    /// (`head_key_threshold`): a plateau of jittered tokens around the head's edge (fewer,
    /// as many and more than [`HEAD`]), a few dominant tokens above it and a low bulk. Where
    /// the kept set reaches past the head's least logit, the tokens just under it (outside
    /// the head) have keys between the head's, and must be counted: the head alone would
    /// give another set. Equal to a full sort.
    #[test]
    fn typical_head_rows_equal_a_sort() {
        let mut rnd = crate::test_util::uniforms(21);
        for case in 0..72 {
            let n = 20_000;
            let mut z: Vec<f64> = (0..n).map(|_| -5.0 + rnd()).collect();
            let plateau = [40, 63, 64, 65, 80, 120][case % 6];
            let (dominant, lift) = [(0, 0.0), (1, 1.5), (3, 3.0)][case / 6 % 3];
            let jitter = [0.3, 1.0][case / 18 % 2];
            for j in 0..plateau {
                z[j * 97 + 5] = 10.0 + jitter * (rnd() - 0.5);
            }
            for j in 0..dominant {
                z[j * 1_013 + 50] = 10.0 + lift + rnd();
            }
            let mass = [0.3, 0.9][case / 36 % 2];
            let got = run(|z, l, s| typical_p::<_, false>(z, l, mass, 1, s), &z);
            assert_eq!(kept(got), typical_by_sort(&z, mass), "case {case}");
        }
    }

    /// The logits within n standard deviations of the maximum; the floor adds the next ones.
    #[test]
    fn top_n_sigma_keeps_within_n_sigma() {
        let z = [1.0, 2.0, 3.0, 4.0, f64::NEG_INFINITY];
        // mean 2.5, sigma sqrt(1.25) = 1.118: keep >= 2.882.
        let got = run(|z, l, s| top_n_sigma(z, l, 1.0, 1, s), &z);
        assert_eq!(kept(got), [false, false, true, true, false]);
        let got = run(|z, l, s| top_n_sigma(z, l, 0.0, 1, s), &z);
        assert_eq!(kept(got), [false, false, false, true, false]);
        let got = run(|z, l, s| top_n_sigma(z, l, 0.0, 3, s), &z);
        assert_eq!(kept(got), [false, true, true, true, false]);
    }

    /// llama.cpp tests/test-sampling.cpp: `test_xtc({0.4, 0.3, 0.2, 0.1}, {0.1}, 0.99, 0.09)`
    /// and `test_xtc({0.4, 0.3, 0.2, 0.1}, {0.4, 0.3, 0.2, 0.1}, 0.99, 0.39)`.
    #[test]
    fn xtc_vectors() {
        let z = logs(&[0.4, 0.3, 0.2, 0.1]);
        let got = run(|z, l, s| xtc::<_, false>(z, l, 0.99, 0.09, 0.5, 1, s), &z);
        assert_eq!(kept(got), [false, false, false, true]);
        let got = run(|z, l, s| xtc::<_, false>(z, l, 0.99, 0.39, 0.5, 1, s), &z);
        assert_eq!(kept(got), [true; 4]);
        // The coin: at or above the probability nothing happens.
        let got = run(|z, l, s| xtc::<_, false>(z, l, 0.5, 0.09, 0.5, 1, s), &z);
        assert_eq!(kept(got), [true; 4]);
        // The floor: removing three of four would leave fewer than two.
        let got = run(|z, l, s| xtc::<_, false>(z, l, 1.0, 0.09, 0.0, 2, s), &z);
        assert_eq!(kept(got), [true; 4]);
    }

    #[test]
    fn epsilon_and_eta() {
        let z = logs(&[0.5, 0.3, 0.15, 0.05]);
        let got = run(
            |z, l, s| cutoff::<_, false>(z, l, Cutoff::Epsilon(0.1), 1, s),
            &z,
        );
        assert_eq!(kept(got), [true, true, true, false]);
        let got = run(
            |z, l, s| cutoff::<_, false>(z, l, Cutoff::Epsilon(0.9), 1, s),
            &z,
        );
        assert_eq!(kept(got), [true, false, false, false]);
        let got = run(
            |z, l, s| cutoff::<_, false>(z, l, Cutoff::Epsilon(0.9), 3, s),
            &z,
        );
        assert_eq!(kept(got), [true, true, true, false]);
        // Eta: H = 1.1412 nats, sqrt(0.2) exp(-H) = 0.1429 < 0.2.
        let got = run(
            |z, l, s| cutoff::<_, false>(z, l, Cutoff::Eta(0.2), 1, s),
            &z,
        );
        assert_eq!(kept(got), [true, true, true, false]);
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
        // Uniform: normalised entropy 1, T_dyn = 1.5.
        let (_, live) = run(|z, l, s| temperature::<_, false>(z, l, &p, s), &z);
        assert!((live.scale - 1.0 / 1.5).abs() < 1e-12);
        let z = vec![2.0, 0.0, f64::NEG_INFINITY];
        let p2 = RowParams {
            temperature: 1.0,
            dynatemp_range: 1.0,
            dynatemp_exponent: 2.0,
            ..Default::default()
        };
        let (mask, live) = run(|z, l, s| temperature::<_, false>(z, l, &p2, s), &z);
        let q0 = 1.0 / (1.0 + (-2.0f64).exp());
        let q1 = 1.0 - q0;
        let h = -(q0 * q0.ln() + q1 * q1.ln());
        let t = 2.0 * (h / 2f64.ln()).powi(2);
        assert!((live.scale - 1.0 / t).abs() < 1e-12, "{live:?} {t}");
        assert_eq!(mask, [true, true, false]);
        // T - range = 0 and a certain row: T_dyn = 0 keeps the argmax.
        let p3 = RowParams {
            temperature: 0.5,
            dynatemp_range: 0.5,
            ..Default::default()
        };
        let (mask, _) = run(
            |z, l, s| temperature::<_, false>(z, l, &p3, s),
            &[0.0, -1e6, -1e6],
        );
        assert_eq!(mask, [true, false, false]);
    }
}
