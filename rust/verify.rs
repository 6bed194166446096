//! Speculative verification (Leviathan et al. 2023, Chen et al. 2023): K drafted tokens are
//! checked against the target's distributions at K + 1 positions, so that the emitted tokens
//! are distributed exactly as sampling from the target alone.
//!
//! Position `i`'s distribution `p_i` is the full pipeline of its row (the caller lays the
//! batch out as B × (K + 1) rows, each with its own history: the prefix plus the drafts
//! before it). Draft `x_i` is accepted when `u_i < p_i(x_i) / q_i(x_i)`; at the first
//! rejection the token is drawn from `norm(max(0, p_i - q_i))` and the row stops; when all K
//! are accepted a bonus token is drawn from `p_K`. `q_i` is the drafter's distribution, or
//! one-hot at `x_i` for a deterministic drafter (prompt lookup, a greedy draft model).
//!
//! Random numbers: every position has its own lane ([`crate::batch::Seeds::Lanes`], set by
//! the caller): its draw uniform draws the residual or bonus token, and the same lane with
//! [`ACCEPT_LANE_BIT`] gives the acceptance uniform, so no number is used twice and a row's
//! result does not depend on its batch position or the thread count.

use crate::batch::{check_shapes, par_map, with_prepared, BatchRequest, RowResult};
use crate::elem::{Elem, Real};
use crate::error::SamplingError;
use crate::plan::process_row_dispatch;
use crate::rng::uniforms;
use num_traits::Zero;

/// Set in a position's lane for its acceptance uniform (lanes of rows stay below it).
pub const ACCEPT_LANE_BIT: u64 = 1 << 39;

/// The drafter's probabilities `q`, (B, K, V) row-major.
#[derive(Debug, Clone, Copy)]
pub enum DraftProbs<'a> {
    /// float32 probabilities.
    F32(&'a [f32]),
    /// float64 probabilities.
    F64(&'a [f64]),
}

impl DraftProbs<'_> {
    fn len(&self) -> usize {
        match self {
            DraftProbs::F32(q) => q.len(),
            DraftProbs::F64(q) => q.len(),
        }
    }

    #[inline(always)]
    fn at(&self, j: usize) -> f64 {
        match self {
            DraftProbs::F32(q) => f64::from(q[j]),
            DraftProbs::F64(q) => q[j],
        }
    }
}

/// What was drafted: `k` tokens per row.
#[derive(Debug, Clone, Copy)]
pub struct Drafts<'a> {
    /// Drafted tokens per row.
    pub k: usize,
    /// (B, K) drafted ids.
    pub ids: &'a [i64],
    /// (B, K, V) drafter probabilities, or `None` for a deterministic drafter.
    pub probs: Option<DraftProbs<'a>>,
}

/// Verifies the drafts of every row of `req`, whose rows are B × (K + 1) target positions
/// (row `b * (K + 1) + i` is row b's position i). Returns one [`RowResult`] per position (id
/// -1 and NaN log-probability past the row's last emitted token; an emitted token's
/// log-probability is under the target's `p_i`) and each row's count of accepted drafts.
pub fn verify_batch<T: Elem>(
    req: &BatchRequest<'_, T>,
    drafts: &Drafts<'_>,
) -> Result<(Vec<RowResult>, Vec<usize>), SamplingError> {
    let v = check_shapes(req, None)?;
    let positions = drafts.k + 1;
    if !req.rows.len().is_multiple_of(positions) {
        return Err(SamplingError::Shape(format!(
            "{} target rows are not a multiple of K + 1 = {positions}",
            req.rows.len()
        )));
    }
    let b = req.rows.len() / positions;
    if drafts.ids.len() != b * drafts.k {
        return Err(SamplingError::Shape(format!(
            "draft_ids has {} ids, expected B * K = {b} * {}",
            drafts.ids.len(),
            drafts.k
        )));
    }
    if let Some(n) = drafts
        .ids
        .iter()
        .position(|&x| x < 0 || x as u64 >= v as u64)
    {
        return Err(SamplingError::TokenOutOfRange {
            what: "draft_ids",
            row: n / drafts.k.max(1),
            id: drafts.ids[n],
            vocab: v,
        });
    }
    if let Some(q) = drafts.probs {
        if q.len() != b * drafts.k * v {
            return Err(SamplingError::Shape(format!(
                "draft_probs has {} values, expected B * K * V = {b} * {} * {v}",
                q.len(),
                drafts.k
            )));
        }
    }
    if req.mirostat_mu.is_some() || req.params.iter().any(|p| p.mirostat > 0) {
        return Err(SamplingError::State(
            "verify does not take mirostat (its state follows every emitted token)".into(),
        ));
    }
    let rows: Vec<usize> = (0..b).collect();
    let out = with_prepared(req, |req| {
        par_map(rows, b * positions * v, |_, row, s| {
            verify_row(req, drafts, row, &mut Vec::new(), s).map_err(|e| batch_row(e, positions))
        })
    })?;
    let mut results = Vec::with_capacity(b * positions);
    let mut accepted = Vec::with_capacity(b);
    for r in out {
        let (row, n) = r?;
        results.extend(row);
        accepted.push(n);
    }
    Ok((results, accepted))
}

/// One row's verification: its positions in turn, up to the first rejection; then the
/// positions it did not need are still checked for NaN (bad input must not depend on luck).
fn verify_row<T: Elem>(
    req: &BatchRequest<'_, T>,
    drafts: &Drafts<'_>,
    row: usize,
    dist: &mut Vec<T::C>,
    s: &mut crate::scratch::Scratch<T::C>,
) -> Result<(Vec<RowResult>, usize), SamplingError> {
    let k = drafts.k;
    let mut out: Vec<RowResult> = Vec::with_capacity(k + 1);
    let mut accepted = k;
    for i in 0..=k {
        let r = row * (k + 1) + i;
        let x = drafts.ids.get(row * k + i).map(|&x| x as usize);
        let (res, accept) = match (x, drafts.probs) {
            // The bonus token: the position's own draw from p_K.
            (None, _) => (process_row_dispatch(req, r, s, None)?, false),
            // A deterministic draft (q one-hot at x): accepting when the position's draw
            // from p_i is x happens with probability p_i(x), and on a mismatch that draw is
            // distributed as p_i without x, which is norm(max(0, p_i - q_i)). So the fast
            // plans' draw alone verifies, with no distribution written.
            (Some(x), None) => {
                let res = process_row_dispatch(req, r, s, None)?;
                let hit = res.id == x as i64;
                (res, hit)
            }
            (Some(x), Some(q)) => {
                draft_position(req, q, (row * k + i) * req.rows[r].len(), x, r, dist, s)?
            }
        };
        out.push(res);
        if x.is_some() && !accept {
            accepted = i;
            break;
        }
    }
    for i in out.len()..=k {
        let x = req.rows[row * (k + 1) + i];
        if crate::softmax::max_nan_by(x, T::load).1 {
            return Err(SamplingError::NanInRow {
                row: row * (k + 1) + i,
            });
        }
    }
    let (top_n, n_ids) = (req.top_n, req.token_ids.map_or(0, |t| t.width));
    out.resize_with(k + 1, || RowResult::invalid(top_n, n_ids));
    Ok((out, accepted))
}

/// The position at batch row `r` of a draft with probabilities `q` (its row from `qrow`):
/// accepted when
/// `u < p(x) / q(x)`, else the residual `norm(max(0, p - q))` drawn by inverse CDF with the
/// position's draw uniform (with no residual mass, only when p <= q everywhere, i.e. p = q
/// up to rounding, the position's own draw from p stands).
#[allow(clippy::too_many_arguments)]
fn draft_position<T: Elem>(
    req: &BatchRequest<'_, T>,
    q: DraftProbs<'_>,
    qrow: usize,
    x: usize,
    r: usize,
    dist: &mut Vec<T::C>,
    s: &mut crate::scratch::Scratch<T::C>,
) -> Result<(RowResult, bool), SamplingError> {
    let v = req.rows[r].len();
    dist.clear();
    dist.resize(v, T::C::zero());
    let mut res = process_row_dispatch(req, r, s, Some(dist))?;
    let q_at = |j: usize| q.at(qrow + j);
    let (px, qx) = (dist[x].wide(), q_at(x));
    let (seed, lane) = req.seeds.lane(r);
    // u < p / q without dividing (q = 0: accepted whenever p > 0).
    if uniforms(seed, lane | ACCEPT_LANE_BIT, req.step).0 * qx < px {
        res.id = x as i64;
        res.logprob = px.ln();
        return Ok((res, true));
    }
    let u = uniforms(seed, lane, req.step).0;
    let residual = |j: usize| (dist[j].wide() - q_at(j)).max(0.0);
    let total: f64 = (0..v).map(residual).sum();
    if total > 0.0 {
        let target = u * total;
        let mut acc = 0.0;
        let mut id = (0..v).rev().find(|&j| residual(j) > 0.0).unwrap_or(0);
        for j in 0..v {
            let w = residual(j);
            acc += w;
            if w > 0.0 && target < acc {
                id = j;
                break;
            }
        }
        res.id = id as i64;
        res.logprob = dist[id].wide().ln();
    }
    Ok((res, false))
}

/// An error about target row `r` (a position) named by its batch row `r / positions`.
fn batch_row(e: SamplingError, positions: usize) -> SamplingError {
    use SamplingError::*;
    match e {
        NanInRow { row } => NanInRow {
            row: row / positions,
        },
        AllMasked { row } => AllMasked {
            row: row / positions,
        },
        InvalidParameter {
            name,
            row,
            value,
            expected,
        } => InvalidParameter {
            name,
            row: row / positions,
            value,
            expected,
        },
        TokenOutOfRange {
            what,
            row,
            id,
            vocab,
        } => TokenOutOfRange {
            what,
            row: row / positions,
            id,
            vocab,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Seeds;
    use crate::params::RowParams;
    use crate::test_util::req;

    /// The first emitted token over many seeds is distributed as p (one-hot drafts of a
    /// fixed token, and drafts from q), and one-hot drafts are accepted with p(x).
    #[test]
    fn first_token_follows_the_target() {
        let p = [0.5f64, 0.3, 0.15, 0.05];
        let q = [0.1f64, 0.2, 0.3, 0.4];
        let logits: Vec<f64> = p.iter().map(|x| x.ln()).collect();
        let rows = [&logits[..], &logits[..]];
        let params = [RowParams::default()];
        let n = 40_000u64;
        for draft_probs in [None, Some(&q[..])] {
            let mut counts = [0u64; 4];
            let mut accepted = 0u64;
            for t in 0..n {
                // Drafts from q, drawn with a separate stream.
                let u = crate::rng::uniform(999, t, 0);
                let x = if draft_probs.is_some() {
                    let mut acc = 0.0;
                    q.iter()
                        .position(|&w| {
                            acc += w;
                            u < acc
                        })
                        .unwrap_or(3)
                } else {
                    2
                };
                let ids = [x as i64];
                let seeds = [t, t];
                let lanes = [1u64 << 40, 2 << 40];
                let mut r = req(&rows, &params);
                r.seeds = Seeds::Lanes {
                    seeds: &seeds,
                    lanes: &lanes,
                };
                let d = Drafts {
                    k: 1,
                    ids: &ids,
                    probs: draft_probs.map(DraftProbs::F64),
                };
                let (res, acc) = verify_batch(&r, &d).unwrap();
                counts[res[0].id as usize] += 1;
                accepted += acc[0] as u64;
            }
            let chi2: f64 = (0..4)
                .map(|j| {
                    let e = p[j] * n as f64;
                    (counts[j] as f64 - e).powi(2) / e
                })
                .sum();
            // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
            assert!(chi2 < 16.27, "{draft_probs:?}: {counts:?} chi2 {chi2}");
            let want = match draft_probs {
                None => p[2],
                Some(q) => p.iter().zip(q).map(|(a, b)| a.min(*b)).sum(),
            };
            let rate = accepted as f64 / n as f64;
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!((rate - want).abs() < 5.0 * sd, "{rate} vs {want}");
        }
    }
}
