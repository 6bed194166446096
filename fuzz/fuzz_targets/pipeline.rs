//! libFuzzer target for `tokensampler::pipeline::run_batch`, the Rust entry every Python call
//! goes through.
//!
//! The input bytes are decoded (see `Case::decode`) into a dtype, a batch of logit rows (with
//! ±inf / NaN / huge / subnormal values), a parameter matrix (valid and invalid values of
//! every parameter), a token history, a logit bias, seeds, the step and the outputs asked for.
//! Running out of bytes reads zeros, so every input decodes to some case.
//!
//! The contract checked (docs/design.md sections 2 and 6): `run_batch` never panics, and when
//! it returns `Ok` the output is valid: one result per row, ids in `0..V` and in the support
//! (finite-or-+inf logit, not banned, positive probability), `probs` rows finite, in [0, 1]
//! and summing to 1, greedy rows one-hot, top log-probabilities sorted and padded.
//!
//! A `top_n` beyond both V and `TOP_N_SLACK` must be refused (it once reached the allocator
//! and panicked or aborted: fuzz/regressions/top-n-huge).

#![no_main]

use half::{bf16, f16};
use libfuzzer_sys::fuzz_target;
use num_traits::Float;
use tokensampler::elem::{Elem, Real};
use tokensampler::params::{RowParams, N_PARAMS, PARAMS};
use tokensampler::pipeline::{run_batch, BatchRequest, IdRows, RowResult, Seeds, TOP_N_SLACK};

// ==== decoding ===============================================================================

/// Reads the fuzzer's bytes front to back; past the end everything is zero.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    fn f64_bits(&mut self) -> f64 {
        f64::from_bits(self.u64())
    }
}

/// Values that sit on the edges of every parameter's range (and of f32's range, since f32 /
/// f16 / bf16 rows are computed in f32).
const EDGES: [f64; 24] = [
    0.0,
    1.0,
    0.5,
    2.0,
    -1.0,
    -0.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1e308,
    -1e308,
    1e39,
    -1e39,
    1e-50,
    5e-324,
    1e-300,
    0.999_999_999_999,
    1.000_000_000_001,
    3.0,
    50.0,
    1e18,
    f64::MAX,
    f64::MIN_POSITIVE,
    0.1,
];

/// A value for parameter column `col`: mostly sensible, sometimes an edge, sometimes raw bits.
fn param_value(b: &mut Bytes<'_>, col: usize) -> f64 {
    let sel = b.u8();
    match sel % 8 {
        // The "off" value, so that most rows run with few features on.
        0..=2 => PARAMS[col].default,
        3 | 4 => EDGES[b.u8() as usize % EDGES.len()],
        5 => match col {
            1 => (b.u8() % 70) as f64,
            2 | 3 => b.u8() as f64 / 255.0,
            _ => 1.0 + b.u8() as f64 / 32.0,
        },
        6 => -(b.u8() as f64) / 16.0 + 4.0,
        _ => b.f64_bits(),
    }
}

/// A logit: small values mostly (so ties are common), plus every special value.
fn logit(b: &mut Bytes<'_>) -> f64 {
    let c = b.u8();
    match c % 24 {
        0..=13 => (b.u8() as i8) as f64 / 8.0,
        14 => f64::INFINITY,
        15 | 16 => f64::NEG_INFINITY,
        17 => f64::NAN,
        18 => b.f64_bits(),
        19 => 3.0e38 * if c & 0x80 != 0 { -1.0 } else { 1.0 },
        20 => 65504.0 * if c & 0x80 != 0 { -1.0 } else { 1.0 },
        21 => 1e-42,
        22 => (b.u16() as i16) as f64 * 1e3,
        _ => 0.0,
    }
}

/// A token id for a history or bias row: padding, in range, at the edge, or out of range.
fn token_id(b: &mut Bytes<'_>, v: usize) -> i64 {
    let c = b.u8();
    match c % 16 {
        0..=9 => (b.u8() as usize % v.max(1)) as i64,
        10 => -1,
        11 => v as i64 - 1,
        12 => v as i64,
        13 => i64::MIN,
        14 => i64::MAX,
        _ => -((b.u8() as i64) + 1),
    }
}

/// Which element type the rows are stored in.
#[derive(Debug, Clone, Copy)]
enum DType {
    F32,
    F64,
    F16,
    BF16,
}

/// One decoded call of `run_batch`.
#[derive(Debug)]
struct Case {
    dtype: DType,
    b: usize,
    v: usize,
    logits: Vec<f64>,
    params: Vec<[f64; N_PARAMS]>,
    history: Option<(Vec<i64>, usize)>,
    bias: Option<(Vec<i64>, Vec<f64>, usize)>,
    seeds: Result<u64, Vec<u64>>,
    step: u64,
    want_raw: bool,
    top_n: usize,
    probs_len: Option<usize>,
}

impl Case {
    fn decode(data: &[u8]) -> Self {
        let mut b = Bytes { data, pos: 0 };
        let h0 = b.u8();
        let dtype = [DType::F32, DType::F64, DType::F16, DType::BF16][(h0 & 3) as usize];
        let batch = (b.u8() % 6) as usize;
        let wide = b.u8();
        // Zero bytes (the end of a short input) decode to the cheap case: short rows.
        let v = match wide {
            // A rare wide batch: 4 rows of >= 16k logits take rayon's parallel path.
            0xff => 16_384 + (b.u16() as usize % 16_384),
            0xf0..=0xfd => 1 + b.u16() as usize % 4096,
            // An empty vocabulary must be a shape error.
            0xfe => 0,
            _ => 1 + (b.u8() as usize % 48),
        };
        let batch = if wide == 0xff { 4 } else { batch };

        // Long rows are generated from a small LCG with special values sprinkled in, so the
        // fuzzer can still steer them with a few bytes.
        let mut logits = Vec::with_capacity(batch * v);
        if v > 64 {
            let mut state = b.u64() | 1;
            let specials: Vec<(usize, f64)> = (0..(b.u8() % 8))
                .map(|_| (b.u16() as usize % (batch * v).max(1), logit(&mut b)))
                .collect();
            for _ in 0..batch * v {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                logits.push(((state >> 40) as i32 - (1 << 23)) as f64 / (1 << 20) as f64);
            }
            for (i, x) in specials {
                if i < logits.len() {
                    logits[i] = x;
                }
            }
        } else {
            for _ in 0..batch * v {
                logits.push(logit(&mut b));
            }
        }

        let flags = b.u8();
        let n_param_rows = if flags & 1 != 0 && batch > 1 {
            batch
        } else {
            1
        };
        let params = (0..n_param_rows)
            .map(|_| {
                let mut row = [0.0; N_PARAMS];
                for (col, x) in row.iter_mut().enumerate() {
                    *x = param_value(&mut b, col);
                }
                row
            })
            .collect();

        let history = (flags & 2 != 0).then(|| {
            let width = (b.u8() % 12) as usize;
            // Mostly one row per batch row; sometimes a wrong row count to test the checks.
            let rows = if b.u8().is_multiple_of(8) {
                (b.u8() % 6) as usize
            } else {
                batch
            };
            let ids = (0..rows * width).map(|_| token_id(&mut b, v)).collect();
            (ids, width)
        });
        let bias = (flags & 4 != 0).then(|| {
            let width = (b.u8() % 6) as usize;
            let rows = if b.u8().is_multiple_of(3) { 1 } else { batch };
            let ids: Vec<i64> = (0..rows * width).map(|_| token_id(&mut b, v)).collect();
            let mut vals: Vec<f64> = (0..ids.len())
                .map(|_| match b.u8() % 4 {
                    0 => f64::NEG_INFINITY,
                    1 => EDGES[b.u8() as usize % EDGES.len()],
                    _ => (b.u8() as i8) as f64 / 4.0,
                })
                .collect();
            // The Python layer rejects NaN biases before the kernel; keep that precondition
            // most of the time but let a few through to see the kernel copes.
            if !b.u8().is_multiple_of(8) {
                for x in &mut vals {
                    if x.is_nan() {
                        *x = 0.0;
                    }
                }
            }
            if b.u8().is_multiple_of(16) {
                vals.pop();
            }
            (ids, vals, width)
        });
        let seeds = if flags & 8 != 0 {
            let n = if b.u8().is_multiple_of(8) {
                (b.u8() % 6) as usize
            } else {
                batch
            };
            Err((0..n).map(|_| b.u64()).collect())
        } else {
            Ok(b.u64())
        };
        let step = if flags & 16 != 0 {
            b.u64()
        } else {
            b.u8() as u64
        };
        let want_raw = flags & 32 != 0;
        let top_sel = b.u8();
        let top_n = match top_sel % 8 {
            0..=3 => 0,
            4..=6 => b.u8() as usize % (v + 3),
            _ => v + (b.u8() as usize),
        };
        // A huge top_n, which must be refused before anything is allocated for it.
        let top_n = if top_sel == 0xff { 1usize << 62 } else { top_n };
        let probs_len = (flags & 64 != 0).then(|| {
            if b.u8().is_multiple_of(16) {
                batch * v + 1
            } else {
                batch * v
            }
        });
        Case {
            dtype,
            b: batch,
            v,
            logits,
            params,
            history,
            bias,
            seeds,
            step,
            want_raw,
            top_n,
            probs_len,
        }
    }
}

// ==== running and checking ===================================================================

/// Converts the decoded f64 logits to the element type `T` the caller would hand over.
trait FromF64: Elem {
    fn from_f64(x: f64) -> Self;
}
impl FromF64 for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}
impl FromF64 for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
}
impl FromF64 for f16 {
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}
impl FromF64 for bf16 {
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

fn run<T: FromF64>(case: &Case) {
    let data: Vec<T> = case.logits.iter().map(|&x| T::from_f64(x)).collect();
    let rows: Vec<&[T]> = if case.v == 0 {
        vec![&[][..]; case.b]
    } else {
        data.chunks(case.v).collect()
    };

    // Parameter validation is part of the entry: an invalid row must be an error, not a panic.
    let mut params = Vec::new();
    for (i, p) in case.params.iter().enumerate() {
        match RowParams::from_values(p, i) {
            Ok(rp) => params.push(rp),
            Err(_) => return,
        }
    }
    let history = case
        .history
        .as_ref()
        .map(|(ids, width)| IdRows { ids, width: *width });
    let (bias_ids, bias_values) = match &case.bias {
        Some((ids, vals, width)) => (Some(IdRows { ids, width: *width }), &vals[..]),
        None => (None, &[][..]),
    };
    let seeds = match &case.seeds {
        Ok(s) => Seeds::Shared(*s),
        Err(v) => Seeds::PerRow(v),
    };
    let req = BatchRequest {
        rows: &rows,
        params: &params,
        history,
        bias_ids,
        bias_values,
        seeds,
        step: case.step,
        want_raw_logprob: case.want_raw,
        top_n: case.top_n,
        ..BatchRequest::new(&rows, &params)
    };
    let mut probs = case.probs_len.map(|n| vec![T::C::of(-7.0); n]);
    let out = run_batch(&req, probs.as_deref_mut());
    if case.top_n > case.v.max(TOP_N_SLACK) {
        assert!(
            out.is_err(),
            "top_n = {} accepted for V = {}",
            case.top_n,
            case.v
        );
        return;
    }
    let Ok(results) = out else {
        return;
    };
    if let Err(msg) = check(case, &req, &results, probs.as_deref()) {
        panic!("invalid output: {msg}\n{case:?}");
    }
}

fn check<T: Elem>(
    case: &Case,
    req: &BatchRequest<'_, T>,
    results: &[RowResult],
    probs: Option<&[T::C]>,
) -> Result<(), String> {
    let v = case.v;
    if results.len() != case.b {
        return Err(format!("{} results for {} rows", results.len(), case.b));
    }
    for (i, r) in results.iter().enumerate() {
        let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
        if r.id < 0 || r.id as usize >= v {
            return Err(format!("row {i}: id {} out of 0..{v}", r.id));
        }
        let id = r.id as usize;
        let x = req.rows[i][id].load();
        if x == T::C::neg_infinity() {
            return Err(format!("row {i}: chose id {id} whose logit is -inf"));
        }
        if let Some(bias) = req.bias_ids {
            let start = if bias.ids.len() == bias.width {
                0
            } else {
                i * bias.width
            };
            let row = &bias.ids[start..start + bias.width];
            for (n, &bid) in row.iter().enumerate() {
                if bid == r.id && req.bias_values[start + n] == f64::NEG_INFINITY {
                    return Err(format!("row {i}: chose banned id {id}"));
                }
            }
        }
        if r.logprob.is_nan() || r.logprob > 1e-6 {
            return Err(format!("row {i}: logprob {}", r.logprob));
        }
        if case.want_raw && (r.raw_logprob.is_nan() || r.raw_logprob > 1e-6) {
            return Err(format!("row {i}: raw logprob {}", r.raw_logprob));
        }
        if r.top.len() != case.top_n {
            return Err(format!(
                "row {i}: {} top entries, want {}",
                r.top.len(),
                case.top_n
            ));
        }
        let mut prev = f64::INFINITY;
        let mut padding = false;
        for &(tid, lp) in &r.top {
            if tid == -1 {
                padding = true;
                if lp != f64::NEG_INFINITY {
                    return Err(format!("row {i}: padding slot with logprob {lp}"));
                }
                continue;
            }
            if padding || tid < 0 || tid as usize >= v || lp.is_nan() || lp > prev + 1e-12 {
                return Err(format!("row {i}: bad top entries {:?}", r.top));
            }
            prev = lp;
        }
        if let Some(pr) = probs {
            let row = &pr[i * v..(i + 1) * v];
            let mut sum = 0.0f64;
            for &q in row {
                let q = q.wide();
                if !(0.0..=1.0 + 1e-6).contains(&q) {
                    return Err(format!("row {i}: probability {q}"));
                }
                sum += q;
            }
            if (sum - 1.0).abs() > 1e-3 {
                return Err(format!("row {i}: probabilities sum to {sum}"));
            }
            if row[id].wide() <= 0.0 {
                return Err(format!("row {i}: drew id {id} of probability 0"));
            }
            if p.temperature == 0.0 && row[id].wide() != 1.0 {
                return Err(format!("row {i}: greedy row is not one-hot at {id}"));
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let case = Case::decode(data);
    if std::env::var_os("TS_FUZZ_PRINT").is_some() {
        // For checking tests/fuzz_replay.py's decoder against this one.
        eprintln!("{case:?}");
    }
    match case.dtype {
        DType::F32 => run::<f32>(&case),
        DType::F64 => run::<f64>(&case),
        DType::F16 => run::<f16>(&case),
        DType::BF16 => run::<bf16>(&case),
    }
});
