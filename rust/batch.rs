//! The batched driver: the request and result types, the shape checks, and the thread pool
//! that runs rows in parallel (each row through `plan.rs`).

use crate::bitmask::Bitmask;
use crate::dry::Breakers;
use crate::elem::Elem;
use crate::error::SamplingError;
use crate::params::RowParams;
use crate::plan::process_row_dispatch;
use crate::rng::uniforms;
use crate::scratch::{with_scratch, Scratch};
use crate::stages::{check_order, Stage};
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// How rows get their random streams.
#[derive(Debug, Clone, Copy)]
pub enum Seeds<'a> {
    /// One seed for the batch: row `i` uses lane `i` of that seed's stream.
    Shared(u64),
    /// One seed per row (lane 0), so a row draws the same wherever it sits in the batch.
    PerRow(&'a [u64]),
    /// Each row's seed and lane given outright (the positions of a speculative verification
    /// each have a lane of their own: `verify.rs`).
    Lanes {
        /// One seed per row.
        seeds: &'a [u64],
        /// One lane per row.
        lanes: &'a [u64],
    },
}

impl Seeds<'_> {
    /// Row `i`'s seed and lane.
    #[inline(always)]
    pub(crate) fn lane(&self, i: usize) -> (u64, u64) {
        match *self {
            Seeds::Shared(seed) => (seed, i as u64),
            Seeds::PerRow(seeds) => (seeds[i], 0),
            Seeds::Lanes { seeds, lanes } => (seeds[i], lanes[i]),
        }
    }

    /// Row `i`'s two uniforms of step `step` (the draw's, and a gambling stage's coin).
    #[inline(always)]
    pub(crate) fn uniforms(&self, i: usize, step: u64) -> (f64, f64) {
        let (seed, lane) = self.lane(i);
        uniforms(seed, lane, step)
    }
}

/// A rectangular block of `rows` rows of `width` ids, row-major; negative ids are padding.
#[derive(Debug, Clone, Copy)]
pub struct IdRows<'a> {
    /// The ids, `rows * width` of them.
    pub ids: &'a [i64],
    /// Ids per row.
    pub width: usize,
}

impl<'a> IdRows<'a> {
    /// Offset of row `i`'s first id: one row broadcasts to the whole batch.
    pub(crate) fn start(&self, i: usize) -> usize {
        if self.ids.len() == self.width {
            0
        } else {
            i * self.width
        }
    }

    pub(crate) fn row(&self, i: usize) -> &'a [i64] {
        if self.width == 0 {
            return &[];
        }
        let start = self.start(i);
        &self.ids[start..start + self.width]
    }
}

/// Token-id sequences per row (sequence biases, DRY breakers). `ids` holds every sequence
/// one after another; sequence `k` ends at `seq_ends[k]`; row `i`'s sequences are those up to
/// `row_ends[i]` from the previous row's end (one row broadcasts to the batch); `values`
/// holds one value per sequence, or nothing.
#[derive(Debug, Clone, Copy)]
pub struct Sequences<'a> {
    /// The ids of every sequence, concatenated.
    pub ids: &'a [i64],
    /// The end of each sequence in `ids`.
    pub seq_ends: &'a [usize],
    /// The end of each row's sequences, counted in sequences.
    pub row_ends: &'a [usize],
    /// One value per sequence (a bias), or empty.
    pub values: &'a [f64],
}

impl<'a> Sequences<'a> {
    /// The sequences of row `i` with their values (0 when there are none).
    pub(crate) fn row(&self, i: usize) -> impl Iterator<Item = (&'a [i64], f64)> + 'a {
        let r = if self.row_ends.len() == 1 { 0 } else { i };
        let (lo, hi) = (
            if r == 0 { 0 } else { self.row_ends[r - 1] },
            self.row_ends[r],
        );
        let (ids, ends, values) = (self.ids, self.seq_ends, self.values);
        (lo..hi).map(move |k| {
            let start = if k == 0 { 0 } else { ends[k - 1] };
            (&ids[start..ends[k]], values.get(k).copied().unwrap_or(0.0))
        })
    }

    /// Whether row `i` has any sequence.
    pub(crate) fn any(&self, i: usize) -> bool {
        self.row(i).next().is_some()
    }

    /// Checks the layout against a batch of `b` rows and ids against the vocabulary `v`.
    fn check(&self, what: &'static str, b: usize, v: usize) -> Result<(), SamplingError> {
        let sorted = |e: &[usize], end: usize| {
            e.windows(2).all(|w| w[0] <= w[1]) && e.last().map_or(end == 0, |&l| l == end)
        };
        if !sorted(self.seq_ends, self.ids.len())
            || !sorted(self.row_ends, self.seq_ends.len())
            || (!self.values.is_empty() && self.values.len() != self.seq_ends.len())
        {
            return Err(SamplingError::Shape(format!(
                "{what}: inconsistent offsets"
            )));
        }
        if self.row_ends.len() != 1 && self.row_ends.len() != b {
            return Err(SamplingError::Shape(format!(
                "{what} has {} rows for a batch of {b}",
                self.row_ends.len()
            )));
        }
        if self.seq_ends.windows(2).any(|w| w[0] == w[1]) || self.seq_ends.first() == Some(&0) {
            return Err(SamplingError::Shape(format!(
                "{what} holds an empty sequence"
            )));
        }
        for r in 0..self.row_ends.len() {
            if let Some(&id) = self
                .row(r)
                .flat_map(|(s, _)| s.iter())
                .find(|&&id| id < 0 || id as u64 >= v as u64)
            {
                return Err(SamplingError::TokenOutOfRange {
                    what,
                    row: r,
                    id,
                    vocab: v,
                });
            }
        }
        if self.values.iter().any(|x| x.is_nan()) {
            return Err(SamplingError::Shape(format!("{what} holds a NaN value")));
        }
        Ok(())
    }
}

/// Everything one batched call needs besides the output buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchRequest<'a, T> {
    /// The logit rows, all of one length V.
    pub rows: &'a [&'a [T]],
    /// Parameters: one row for the whole batch, or one per row.
    pub params: &'a [RowParams],
    /// Token history per row (one row for a single-row batch), or `None`.
    pub history: Option<IdRows<'a>>,
    /// Logit-bias ids per row (one row broadcasts); `-inf` values ban.
    pub bias_ids: Option<IdRows<'a>>,
    /// Logit-bias values, laid out like `bias_ids`.
    pub bias_values: &'a [f64],
    /// Random streams.
    pub seeds: Seeds<'a>,
    /// Step of the stream (a `Sampler` advances it each call).
    pub step: u64,
    /// Compute the log-probability of the chosen token under the raw softmax.
    pub want_raw_logprob: bool,
    /// How many top log-probabilities to report per row (at most `max(V, TOP_N_SLACK)`).
    pub top_n: usize,
    /// The order of the stages after the penalties ([`crate::stages::HF_ORDER`] by default);
    /// it must place every stage a row turns on.
    pub order: &'a [Stage],
    /// Report the chosen id's, the top and the `token_ids` log-probabilities under the raw
    /// softmax (`logprobs_mode="raw"`) instead of the final distribution.
    pub raw_mode: bool,
    /// Compute each chosen id's rank in the raw distribution (1 = most probable).
    pub want_rank: bool,
    /// Ids whose log-probabilities to report, per row (one row broadcasts), or `None`.
    pub token_ids: Option<IdRows<'a>>,
    /// A row with NaN or nothing left to sample gets id -1 (`valid: false`) instead of
    /// failing the call (`on_invalid="skip"`).
    pub skip_invalid: bool,
    /// Biases of id sequences (Hugging Face `sequence_bias`).
    pub sequence_bias: Option<Sequences<'a>>,
    /// Multi-token bans (Hugging Face `bad_words_ids`: a sequence bias of `-inf`; values
    /// unused).
    pub bad_words: Option<Sequences<'a>>,
    /// DRY's sequence breakers.
    pub dry_breakers: Option<Sequences<'a>>,
    /// Each row's mirostat state `mu` (required when a row turns mirostat on).
    pub mirostat_mu: Option<&'a [f64]>,
    /// `dry_breakers` indexed for the scan (one entry per row set): [`run_batch`] fills it,
    /// callers leave it empty.
    pub dry_index: &'a [Breakers],
    /// Allowed tokens per row (structured output), or `None`.
    pub token_bitmask: Option<Bitmask<'a>>,
}

impl<T> BatchRequest<'_, T> {
    /// A request for `rows` under `params` with everything else off: the default order, a
    /// shared seed of 0, no history, bias or extra outputs.
    pub fn new<'a>(rows: &'a [&'a [T]], params: &'a [RowParams]) -> BatchRequest<'a, T> {
        BatchRequest {
            rows,
            params,
            history: None,
            bias_ids: None,
            bias_values: &[],
            seeds: Seeds::Shared(0),
            step: 0,
            want_raw_logprob: false,
            top_n: 0,
            order: &crate::stages::HF_ORDER,
            raw_mode: false,
            want_rank: false,
            token_ids: None,
            skip_invalid: false,
            sequence_bias: None,
            bad_words: None,
            dry_breakers: None,
            mirostat_mu: None,
            dry_index: &[],
            token_bitmask: None,
        }
    }
}

/// `top_n` may exceed the vocabulary (the extra slots are padding) up to this many; beyond
/// both, a request would only reach the allocator (B × top_n slots) and abort the process.
pub const TOP_N_SLACK: usize = 1024;

/// What one row produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    /// The chosen token id.
    pub id: i64,
    /// Its log-probability under the final distribution.
    pub logprob: f64,
    /// Its log-probability under the raw softmax (NaN unless asked for).
    pub raw_logprob: f64,
    /// The `top_n` most probable tokens of the final distribution with their log-probabilities.
    pub top: Vec<(i64, f64)>,
    /// The chosen id's rank in the raw distribution (1 = most probable; 0 unless asked for).
    pub rank: i64,
    /// The log-probabilities of the request's `token_ids` of this row.
    pub token_logprobs: Vec<f64>,
    /// False for a row skipped as invalid (`skip_invalid`): id -1, NaN log-probabilities.
    pub valid: bool,
    /// The row's mirostat state after this step (NaN when mirostat is off).
    pub mirostat_mu: f64,
}

impl RowResult {
    /// What a skipped invalid row reports (and a verification's positions past its last
    /// emitted token).
    pub(crate) fn invalid(top_n: usize, n_token_ids: usize) -> Self {
        RowResult {
            id: -1,
            logprob: f64::NAN,
            raw_logprob: f64::NAN,
            top: vec![(-1, f64::NEG_INFINITY); top_n],
            rank: 0,
            token_logprobs: vec![f64::NAN; n_token_ids],
            valid: false,
            mirostat_mu: f64::NAN,
        }
    }
}

pub(crate) fn check_shapes<T>(
    req: &BatchRequest<'_, T>,
    probs_len: Option<usize>,
) -> Result<usize, SamplingError> {
    let b = req.rows.len();
    let v = req.rows.first().map_or(0, |r| r.len());
    if b > 0 && v == 0 {
        return Err(SamplingError::Shape(
            "logits have a vocabulary of size 0".into(),
        ));
    }
    if req.rows.iter().any(|r| r.len() != v) {
        return Err(SamplingError::Shape("logit rows differ in length".into()));
    }
    if req.params.len() != 1 && req.params.len() != b {
        return Err(SamplingError::Shape(format!(
            "{} parameter rows for a batch of {b}",
            req.params.len()
        )));
    }
    let rows_of = |r: &IdRows<'_>| r.ids.len().checked_div(r.width).unwrap_or(0);
    if let Some(h) = &req.history {
        if h.width > 0
            && (h.ids.len() % h.width != 0 || (rows_of(h) != b && !(rows_of(h) == 1 && b == 1)))
        {
            return Err(SamplingError::Shape(format!(
                "history has {} rows for a batch of {b} (one row per logits row: (B, L) or a \
                 list of B arrays)",
                rows_of(h)
            )));
        }
    }
    if let Some(bi) = &req.bias_ids {
        if bi.width > 0
            && (bi.ids.len() % bi.width != 0
                || (rows_of(bi) != b && rows_of(bi) != 1)
                || req.bias_values.len() != bi.ids.len())
        {
            return Err(SamplingError::Shape(format!(
                "logit_bias has {} rows for a batch of {b}",
                rows_of(bi)
            )));
        }
    }
    if let Some(t) = &req.token_ids {
        if t.width > 0 && (t.ids.len() % t.width != 0 || (rows_of(t) != b && rows_of(t) != 1)) {
            return Err(SamplingError::Shape(format!(
                "logprob_token_ids has {} rows for a batch of {b}",
                rows_of(t)
            )));
        }
        if let Some(&id) = t.ids.iter().find(|&&id| id < 0 || id as u64 >= v as u64) {
            return Err(SamplingError::TokenOutOfRange {
                what: "logprob_token_ids",
                row: t.ids.iter().position(|&x| x == id).unwrap_or(0) / t.width.max(1),
                id,
                vocab: v,
            });
        }
    }
    if req.top_n > v.max(TOP_N_SLACK) {
        return Err(SamplingError::Shape(format!(
            "top_logprobs = {} exceeds both the vocabulary size {v} and {TOP_N_SLACK}",
            req.top_n
        )));
    }
    if let Some(sb) = &req.sequence_bias {
        sb.check("sequence_bias", b, v)?;
    }
    if let Some(bw) = &req.bad_words {
        bw.check("bad_words_ids", b, v)?;
    }
    if let Some(br) = &req.dry_breakers {
        br.check("dry_sequence_breakers", b, v)?;
    }
    if let Some(m) = &req.token_bitmask {
        if m.words.len() != m.rows * m.width || (m.rows != b && m.rows != 1) {
            return Err(SamplingError::Shape(format!(
                "token_bitmask has {} rows for a batch of {b}",
                m.rows
            )));
        }
    }
    match req.mirostat_mu {
        Some(mu) if mu.len() != b => {
            return Err(SamplingError::Shape(format!(
                "{} mirostat states for a batch of {b}",
                mu.len()
            )))
        }
        None if req.params.iter().any(|p| p.mirostat > 0) => {
            return Err(SamplingError::State(
                "mirostat keeps a state (mu) per row from step to step: sample with a \
                 tokensampler.Sampler (or generate), not the stateless sample / probs"
                    .into(),
            ))
        }
        _ => {}
    }
    let n_seeds = match req.seeds {
        Seeds::Shared(_) => b,
        Seeds::PerRow(s) => s.len(),
        Seeds::Lanes { seeds, lanes } if seeds.len() == lanes.len() => seeds.len(),
        Seeds::Lanes { .. } => usize::MAX, // never a batch size: reported below
    };
    if n_seeds != b {
        return Err(SamplingError::Shape(match req.seeds {
            Seeds::Lanes { seeds, lanes } => format!(
                "{} seeds and {} lanes for a batch of {b}",
                seeds.len(),
                lanes.len()
            ),
            _ => format!("{n_seeds} seeds for a batch of {b}"),
        }));
    }
    if let Some(n) = probs_len {
        if n != b * v {
            return Err(SamplingError::Shape(format!(
                "probs buffer has {n} elements, expected {}",
                b * v
            )));
        }
    }
    Ok(v)
}

/// Below this many logits in a batch, threads cost more than they save. Measured with
/// `benches/parallel_threshold.py` on the 2-core VM: handing rows to the pool and waking its
/// workers costs ~50-150 µs per call, so 2 threads only win from about a million logits
/// (e.g. B = 8 at V = 128k); at 65,536 they were 2-5x slower than one.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 20;

/// [`PARALLEL_MIN_ELEMENTS`], or `TOKENSAMPLER_PARALLEL_MIN` when set (read once): the knob
/// `benches/parallel_threshold.py` turns to measure where the threshold belongs.
fn parallel_min_elements() -> usize {
    use std::sync::OnceLock;
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("TOKENSAMPLER_PARALLEL_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PARALLEL_MIN_ELEMENTS)
    })
}

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// Sets the number of worker threads for batched calls (0 restores rayon's default, one per
/// core).
pub fn set_num_threads(n: usize) -> Result<(), SamplingError> {
    let pool = if n == 0 {
        None
    } else {
        Some(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("tokensampler-{i}"))
                .build()
                .map_err(|e| SamplingError::ThreadPool(format!("cannot start {n} threads: {e}")))?,
        ))
    };
    match POOL.write() {
        Ok(mut g) => *g = pool,
        Err(poisoned) => *poisoned.into_inner() = pool,
    }
    Ok(())
}

/// The number of worker threads batched calls use.
pub fn num_threads() -> usize {
    current_pool().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
}

fn current_pool() -> Option<Arc<rayon::ThreadPool>> {
    match POOL.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Panics on a worker of the sampling pool: lets the bindings test that a worker's panic
/// reaches the caller as an error, not an abort.
pub fn debug_panic_on_worker() {
    let work = || {
        (0..2).into_par_iter().for_each(|i| {
            if i == 1 {
                panic!("deliberate panic on a worker thread");
            }
        })
    };
    match current_pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// Row `i`; under `skip_invalid` a row with NaN or nothing to sample becomes an invalid
/// result (its distribution all zeros) instead of an error.
fn row_or_skip<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    mut out: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    match process_row_dispatch(req, i, s, out.as_deref_mut()) {
        Err(SamplingError::NanInRow { .. } | SamplingError::AllMasked { .. })
            if req.skip_invalid =>
        {
            if let Some(o) = out {
                o.fill(<T::C as num_traits::Zero>::zero());
            }
            let n = req.token_ids.map_or(0, |t| t.width);
            Ok(RowResult::invalid(req.top_n, n))
        }
        other => other,
    }
}

/// Runs the pipeline on every row. `probs`, when given, receives the final distribution of
/// each row (B × V, row-major). Errors name the lowest failing row.
pub fn run_batch<T: Elem>(
    req: &BatchRequest<'_, T>,
    probs: Option<&mut [T::C]>,
) -> Result<Vec<RowResult>, SamplingError> {
    let v = check_shapes(req, probs.as_ref().map(|p| p.len()))?;
    let b = req.rows.len();
    let outs: Vec<Option<&mut [T::C]>> = match probs {
        Some(p) if v > 0 => p.chunks_mut(v).map(Some).collect(),
        _ => (0..b).map(|_| None).collect(),
    };
    let results = with_prepared(req, |req| {
        par_map(outs, b * v, |i, out, s| row_or_skip(req, i, s, out))
    })?;
    results.into_iter().collect()
}

/// Checks the order and runs `f` on `req` with what a call prepares once for all its rows
/// (the DRY breakers' index: usually one set broadcast to every row, and a string breaker
/// may stand for thousands of id sequences). The shapes are the caller's to check first.
pub(crate) fn with_prepared<T, R>(
    req: &BatchRequest<'_, T>,
    f: impl FnOnce(&BatchRequest<'_, T>) -> R,
) -> Result<R, SamplingError> {
    check_order(req.order, req.params)?;
    let index: Vec<Breakers> = match req.dry_breakers {
        Some(br) if req.params.iter().any(|p| p.dry().is_on()) => (0..br.row_ends.len())
            .map(|r| Breakers::new(br.row(r).map(|(s, _)| s)))
            .collect(),
        _ => Vec::new(),
    };
    Ok(f(&BatchRequest {
        dry_index: &index,
        ..*req
    }))
}

/// `f(i, unit, scratch)` for every unit, on the pool when the call reads at least
/// [`PARALLEL_MIN_ELEMENTS`] logits (`elements`) in two or more units, else on this thread.
pub(crate) fn par_map<U: Send, R: Send, F: crate::elem::Real>(
    units: Vec<U>,
    elements: usize,
    f: impl Fn(usize, U, &mut Scratch<F>) -> R + Sync,
) -> Vec<R> {
    if units.len() >= 2 && elements >= parallel_min_elements() {
        let work = || {
            units
                .into_par_iter()
                .enumerate()
                .map(|(i, u)| with_scratch(|s| f(i, u, s)))
                .collect()
        };
        match current_pool() {
            Some(pool) => pool.install(work),
            None => work(),
        }
    } else {
        with_scratch(|s| {
            units
                .into_iter()
                .enumerate()
                .map(|(i, u)| f(i, u, s))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{PARAMS, PARAM_NAMES};
    use crate::test_util::{params, req};

    #[test]
    fn top_n_beyond_vocabulary_and_slack_is_an_error_not_an_allocation() {
        let x = [1.0f32, 2.0, 3.0];
        let rows = [&x[..]];
        let p = [params(1.0, 0, 1.0, 0.0)];
        let mut r = req(&rows, &p);
        r.top_n = TOP_N_SLACK; // past V = 3, within the slack: padded, fine
        let out = run_batch(&r, None).unwrap();
        assert_eq!(out[0].top.len(), TOP_N_SLACK);
        assert_eq!(out[0].top[3], (-1, f64::NEG_INFINITY));
        for n in [TOP_N_SLACK + 1, 1 << 62, usize::MAX] {
            r.top_n = n;
            assert!(
                matches!(run_batch(&r, None), Err(SamplingError::Shape(_))),
                "{n}"
            );
        }
    }

    #[test]
    fn errors_name_the_row() {
        let a = [1.0f32, 2.0];
        let b = [f32::NAN, 2.0];
        let c = [f32::NEG_INFINITY, f32::NEG_INFINITY];
        let p = [params(1.0, 0, 1.0, 0.0)];
        let rows = [&a[..], &b[..]];
        assert_eq!(
            run_batch(&req(&rows, &p), None).unwrap_err(),
            SamplingError::NanInRow { row: 1 }
        );
        let rows = [&a[..], &a[..], &c[..]];
        assert_eq!(
            run_batch(&req(&rows, &p), None).unwrap_err(),
            SamplingError::AllMasked { row: 2 }
        );
        for (name, bad) in [
            ("temperature", -1.0),
            ("top_k", 0.5),
            ("top_p", 0.0),
            ("min_p", 1.0),
            ("repetition_penalty", 0.0),
            ("frequency_penalty", f64::NAN),
            ("frequency_scale", 0.9),
        ] {
            let mut vals = PARAMS.map(|p| p.default);
            vals[PARAM_NAMES.iter().position(|&n| n == name).unwrap()] = bad;
            match RowParams::from_values(&vals, 3) {
                Err(SamplingError::InvalidParameter {
                    name: n, row: 3, ..
                }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn same_seed_same_ids_any_thread_count_and_position() {
        let v = 5000;
        let rows_data: Vec<Vec<f32>> = (0..16)
            .map(|r| {
                (0..v)
                    .map(|j| ((j * 7919 + r * 104_729) % 1000) as f32 / 300.0)
                    .collect()
            })
            .collect();
        let rows: Vec<&[f32]> = rows_data.iter().map(|r| &r[..]).collect();
        let p = [params(1.0, 0, 1.0, 0.0)];
        let seeds: Vec<u64> = (0..16).map(|i| 1000 + i).collect();
        let mut r = req(&rows, &p);
        r.seeds = Seeds::PerRow(&seeds);
        set_num_threads(1).unwrap();
        let one = run_batch(&r, None).unwrap();
        set_num_threads(2).unwrap();
        let two = run_batch(&r, None).unwrap();
        set_num_threads(0).unwrap();
        let ids = |r: &[RowResult]| r.iter().map(|x| (x.id, x.logprob)).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&two));
        let single_rows = [rows[5]];
        let single_seed = [seeds[5]];
        let mut r1 = req(&single_rows, &p);
        r1.seeds = Seeds::PerRow(&single_seed);
        assert_eq!(ids(&run_batch(&r1, None).unwrap()), ids(&one[5..6]));
    }
}
