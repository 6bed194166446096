//! Runtime SIMD detection, and hand-written AVX-512 kernels for the `f32` scans whose
//! auto-vectorised form is poor: they need a comparison mask per 16 values and compress-stores
//! of the few values that pass, which LLVM does not emit from the portable loops. Each kernel
//! has a portable twin in `filter.rs` with the same result; these are only faster. They are
//! reached only through the element traits (`Real` for `f32` rows, `Elem` for bfloat16 rows
//! read as stored, in `elem.rs`), which check the level detected here.

use crate::filter::compact;

/// The widest SIMD the CPU offers, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    /// The x86-64 baseline (SSE2).
    Baseline,
    /// AVX2 and FMA.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512 F/BW/VL with AVX2 and FMA.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// Detected once; `TOKENSAMPLER_NO_SIMD` forces the portable code (for tests and triage).
pub(crate) fn simd_level() -> Simd {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::env::var_os("TOKENSAMPLER_NO_SIMD").is_some() {
            return Simd::Baseline;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    })
}

/// The number of set bits in `words`: with the POPCNT instruction where the CPU has it (the
/// portable `count_ones` is a dozen instructions per word).
pub(crate) fn popcount(words: &[u32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd_level() != Simd::Baseline {
        // SAFETY: every CPU with AVX2 has POPCNT.
        return unsafe { x86::popcount(words) };
    }
    words.iter().map(|w| w.count_ones() as usize).sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::compact;
    use crate::elem::{exp_f32_fma, exp_sum_f32, EXP_POLY, LN2_HI, LN2_LO, LOG2E, ROUND, SUM_POLY};
    use crate::filter::{KeyBracket, TypicalKey};
    use crate::softmax::{
        approx_exp, sum_wide, MassEstimate, ShiftedSums, BLOCK, EST_BIAS, EST_MAX_EXP2, EST_POLY,
        EST_SCALE,
    };
    use std::arch::x86_64::*;

    /// The 16 bfloat16 values of `y` from `j`, widened to f32 (a shift: bf16 is f32's top
    /// half).
    ///
    /// # Safety
    /// `j + 16 <= y.len()`.
    #[inline(always)]
    unsafe fn load_bf16(y: &[u16], j: usize) -> __m512 {
        let raw = _mm256_loadu_si256(y.as_ptr().add(j).cast::<__m256i>());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    }

    /// AVX-512 twin of `softmax::exp_weights_by` (FMA variant) for an `f32` row: the same
    /// operations as `exp_f32_fma` lane by lane, so the same weights bit for bit, and the
    /// same block sums (the 32 lanes of `sum_wide`, fused into the loop); with `ENTROPY`, the
    /// products `w x` in the same 32 `f32` lanes per block and the smallest live logit, in
    /// the same pass.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_weights_f32<const ENTROPY: bool>(
        y: &[f32],
        m: f32,
        inv_t: f32,
        floor: f32,
        w: &mut Vec<f32>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64, f32) {
        let p = y.as_ptr();
        let load = |j: usize| _mm512_loadu_ps(p.add(j));
        exp_weights_scan::<ENTROPY>(y.len(), load, |j| y[j], m, inv_t, floor, w, blocks)
    }

    /// [`exp_weights_f32`] on a bfloat16 row given as raw bits, widened as it is read.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_weights_bf16(
        y: &[u16],
        m: f32,
        inv_t: f32,
        floor: f32,
        w: &mut Vec<f32>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        let load = |j: usize| load_bf16(y, j);
        let tail = |j: usize| f32::from_bits((y[j] as u32) << 16);
        exp_weights_scan::<false>(y.len(), load, tail, m, inv_t, floor, w, blocks).0
    }

    /// The loop behind both: `load(j)` gives the 16 logits from `j`, `tail(j)` one logit.
    /// (Its own `target_feature`, so that the closures inside inherit it and their
    /// intrinsics inline.)
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_weights_scan<const ENTROPY: bool>(
        n: usize,
        load: impl Fn(usize) -> __m512,
        tail: impl Fn(usize) -> f32,
        m: f32,
        inv_t: f32,
        floor: f32,
        w: &mut Vec<f32>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64, f32) {
        w.clear();
        w.reserve(n);
        blocks.clear();
        let out = w.as_mut_ptr();
        let (vm, vt, vfloor) = (
            _mm512_set1_ps(m),
            _mm512_set1_ps(inv_t),
            _mm512_set1_ps(floor),
        );
        let (lo, log2e, round) = (
            _mm512_set1_ps(-87.0),
            _mm512_set1_ps(LOG2E),
            _mm512_set1_ps(ROUND),
        );
        let (ln2_hi, ln2_lo) = (_mm512_set1_ps(LN2_HI), _mm512_set1_ps(LN2_LO));
        let c = EXP_POLY.map(|v| _mm512_set1_ps(v));
        let one = _mm512_set1_ps(1.0);
        // `exp_weight` of 16 logits, zero below `floor`: exp_f32_fma's steps, with `scalef`
        // for its multiplication by 2^n (exact for the normal results it gives).
        let weights = |v: __m512| {
            let z = _mm512_mul_ps(_mm512_sub_ps(v, vm), vt);
            let xc = _mm512_max_ps(z, lo);
            let t = _mm512_fmadd_ps(xc, log2e, round);
            let k = _mm512_sub_ps(t, round);
            let r = _mm512_fnmadd_ps(k, ln2_lo, _mm512_fnmadd_ps(k, ln2_hi, xc));
            let mut q = c[0];
            for &ci in &c[1..] {
                q = _mm512_fmadd_ps(q, r, ci);
            }
            q = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(q, r), r, r), one);
            let keep = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(
                _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(z, lo),
                v,
                vfloor,
            );
            // With the clamped exponent: a weight of 0 gives a product of 0, and a positive
            // weight's exponent is at least -87 (the portable loop's `max(x, MIN)` there).
            (_mm512_maskz_mov_ps(keep, _mm512_scalef_ps(q, k)), xc)
        };
        // Live: at least the floor and finite (`v > -inf` is implied by a finite floor).
        let live_floor = if floor > f32::NEG_INFINITY {
            floor
        } else {
            f32::MIN
        };
        let vlive = _mm512_set1_ps(live_floor);
        let mut vlow = _mm512_set1_ps(f32::INFINITY);
        let mut low = f32::INFINITY;
        let (mut total, mut xsum) = (0.0, 0.0);
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            // sum_wide's 32 lanes: lane l sums elements l, l + 32, ... of the block.
            let mut acc = [_mm512_setzero_pd(); 4];
            let mut xl = [_mm512_setzero_ps(); 2];
            let mut j = start;
            while j + 32 <= end {
                let v = [load(j), load(j + 16)];
                let e = [weights(v[0]), weights(v[1])];
                for (h, &(eh, xh)) in e.iter().enumerate() {
                    _mm512_storeu_ps(out.add(j + 16 * h), eh);
                    let [a, b] = widen(eh);
                    acc[2 * h] = _mm512_add_pd(acc[2 * h], a);
                    acc[2 * h + 1] = _mm512_add_pd(acc[2 * h + 1], b);
                    if ENTROPY {
                        xl[h] = _mm512_fmadd_ps(eh, xh, xl[h]);
                        let live = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v[h], vlive);
                        vlow = _mm512_mask_min_ps(vlow, live, vlow, v[h]);
                    }
                }
                j += 32;
            }
            let mut lanes = [0.0f32; 32];
            if ENTROPY {
                _mm512_storeu_ps(lanes.as_mut_ptr(), xl[0]);
                _mm512_storeu_ps(lanes.as_mut_ptr().add(16), xl[1]);
            }
            let mut tail_sum = 0.0f64;
            for k in j..end {
                let v = tail(k);
                let x = (v - m) * inv_t;
                let e = if v >= floor { exp_f32_fma(x) } else { 0.0 };
                out.add(k).write(e);
                tail_sum += e as f64;
                if ENTROPY {
                    let l = &mut lanes[(k - start) % 32];
                    *l = e.mul_add(x.max(f32::MIN), *l);
                    if v >= live_floor {
                        low = low.min(v);
                    }
                }
            }
            let s = lane_sum(&acc) + tail_sum;
            blocks.push(s);
            total += s;
            if ENTROPY {
                xsum += sum_wide(&lanes);
            }
            start = end;
        }
        // SAFETY: every element of 0..n was written above.
        w.set_len(n);
        (total, xsum, low.min(_mm512_reduce_min_ps(vlow)))
    }

    // The pair stores below write `(f32, u32)` tuples as two adjacent 4-byte words.
    const _: () = assert!(
        std::mem::offset_of!((f32, u32), 0) == 0
            && std::mem::offset_of!((f32, u32), 1) == 4
            && std::mem::size_of::<(f32, u32)>() == 8
    );

    /// Writes the lanes of `v` selected by `m` at `p` as `(value, base + lane)` pairs and
    /// returns how many: compress in registers, interleave values and ids, store two whole
    /// vectors (16 pairs, whatever `m` holds).
    ///
    /// # Safety
    /// `p` must be valid for writing 16 pairs.
    #[inline(always)]
    unsafe fn store_lanes(p: *mut (f32, u32), m: __mmask16, v: __m512, base: u32) -> usize {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let idv = _mm512_add_epi32(iota, _mm512_set1_epi32(base as i32));
        store_pairs(p.cast::<f32>(), m, v, _mm512_castsi512_ps(idv))
    }

    /// Writes the lanes of `a` and `b` selected by `m` at `p` as adjacent pairs `(a_l, b_l)`
    /// (4-byte words) and returns how many: compress in registers, interleave, store two
    /// whole vectors (16 pairs, whatever `m` holds).
    ///
    /// # Safety
    /// `p` must be valid for writing 32 words.
    #[inline(always)]
    unsafe fn store_pairs(p: *mut f32, m: __mmask16, a: __m512, b: __m512) -> usize {
        let vals = _mm512_maskz_compress_ps(m, a);
        let ids = _mm512_maskz_compress_ps(m, b);
        let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let second =
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        _mm512_storeu_ps(p, _mm512_permutex2var_ps(vals, first, ids));
        _mm512_storeu_ps(p.add(16), _mm512_permutex2var_ps(vals, second, ids));
        m.count_ones() as usize
    }

    /// Appends the lanes of `v` selected by `m` to `out` as `(value, base + lane)` pairs.
    #[inline(always)]
    unsafe fn push_lanes(out: &mut Vec<(f32, u32)>, m: __mmask16, v: __m512, base: u32) {
        out.reserve(16);
        let n = out.len();
        // SAFETY: `reserve(16)` leaves room for the 16 pairs `store_lanes` writes past `n`, of
        // which the first `c` are the selected lanes.
        let c = store_lanes(out.as_mut_ptr().add(n), m, v, base);
        out.set_len(n + c);
    }

    /// [`super::popcount`] with POPCNT, 64 bits at a time.
    ///
    /// # Safety
    /// The CPU must support POPCNT.
    #[target_feature(enable = "popcnt")]
    pub(super) unsafe fn popcount(words: &[u32]) -> usize {
        let pairs = words.chunks_exact(2);
        let rest: usize = pairs
            .remainder()
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum();
        let mut n = 0usize;
        for p in pairs {
            n += ((p[0] as u64) | (p[1] as u64) << 32).count_ones() as usize;
        }
        n + rest
    }

    /// The allowed ids of mask word `w` (all 32 below V) and their logits, written at
    /// `pv` / `pi` from `k`; returns the new count.
    ///
    /// # Safety
    /// `pv` and `pi` must be valid for writing `k + 16` entries per half-word written.
    #[inline(always)]
    unsafe fn gather_word(
        x: &[f32],
        row: &[u32],
        w: usize,
        pv: *mut f32,
        pi: *mut u32,
        mut k: usize,
    ) -> usize {
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let bits = row[w];
        for half in 0..2 {
            let m = (bits >> (16 * half)) as __mmask16;
            if m == 0 {
                continue;
            }
            let j = w * 32 + 16 * half;
            let xv = _mm512_loadu_ps(x.as_ptr().add(j));
            let idv = _mm512_add_epi32(iota, _mm512_set1_epi32(j as i32));
            _mm512_storeu_ps(pv.add(k), _mm512_maskz_compress_ps(m, xv));
            _mm512_storeu_si512(pi.add(k).cast(), _mm512_maskz_compress_epi32(m, idv));
            k += m.count_ones() as usize;
        }
        k
    }

    /// AVX-512 twin of `bitmask::gather_portable` for `f32`: the nonzero words of the mask
    /// found 16 at a time, then per half-word one compress of 16 logits and one of their ids
    /// in registers, stored whole (no compress-store to memory: slow on AMD).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn gather_allowed_f32(
        x: &[f32],
        row: &[u32],
        vals: &mut Vec<f32>,
        ids: &mut Vec<u32>,
    ) {
        use crate::bitmask::{n_words, word};
        let v = x.len();
        let n = n_words(row, v);
        vals.clear();
        ids.clear();
        // Every allowed id plus the 16 lanes a whole-vector store may write past the last.
        vals.reserve(v + 16);
        ids.reserve(v + 16);
        let (pv, pi) = (vals.as_mut_ptr(), ids.as_mut_ptr());
        let mut k = 0usize;
        // The words whose 32 ids all lie below V take the vector path; the last, partial one
        // the scalar loop.
        let whole = n.min(v / 32);
        let mut w = 0;
        while w + 16 <= whole {
            let wv = _mm512_loadu_si512(row.as_ptr().add(w).cast());
            let mut nz = _mm512_test_epi32_mask(wv, wv);
            while nz != 0 {
                k = gather_word(x, row, w + nz.trailing_zeros() as usize, pv, pi, k);
                nz &= nz - 1;
            }
            w += 16;
        }
        while w < whole {
            k = gather_word(x, row, w, pv, pi, k);
            w += 1;
        }
        for w in whole..n {
            let mut bits = word(row, w, v);
            while bits != 0 {
                let j = w * 32 + bits.trailing_zeros() as usize;
                pv.add(k).write(x[j]);
                pi.add(k).write(j as u32);
                k += 1;
                bits &= bits - 1;
            }
        }
        // SAFETY: the first k values and ids were written above.
        vals.set_len(k);
        ids.set_len(k);
    }

    /// AVX-512 twin of `filter::top_k_candidates` for `f32`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn top_k_candidates(
        y: &[f32],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> bool {
        let p = y.as_ptr();
        let load = |j: usize| _mm512_loadu_ps(p.add(j));
        top_k_scan_with(y.len(), load, |j| y[j], every_lane(), k, cand, sel, est)
    }

    /// `filter::top_k_candidates` of an `f32` row with the ids the token bitmask row `words`
    /// disallows read as `-inf`: each 16 logits come with a 16-bit read of the mask straight
    /// into a mask register, which masks the scan's compares (a disallowed lane never becomes
    /// a candidate, and its NaN is not reported). The row is read once and the mask in the
    /// same pass.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn top_k_candidates_masked(
        y: &[f32],
        words: &[u32],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
    ) -> bool {
        let n = y.len();
        let need = n.div_ceil(32);
        if words.len() < need {
            // A short mask bans what it does not reach: pad it with zero words, so that the
            // scan reads whole words everywhere (rare: a model's padded vocabulary).
            let mut padded = words.to_vec();
            padded.resize(need, 0);
            return top_k_candidates_masked(y, &padded, k, cand, sel);
        }
        let p = y.as_ptr();
        let w = words.as_ptr();
        let load = |j: usize| _mm512_loadu_ps(p.add(j));
        // The scan asks for the 16 bits of logits j.. at multiples of 16 with j + 16 <= n: the
        // (j / 16)-th 16-bit half word (x86 is little-endian: bit 0 of a word comes first), one
        // mask-register load, no shifts.
        // SAFETY: the reads stay below word ceil(n / 32) <= words.len() (checked above).
        let lanes = |j: usize| w.cast::<u16>().add(j / 16).read_unaligned();
        let tail = |j: usize| {
            if words[j / 32] >> (j % 32) & 1 == 1 {
                y[j]
            } else {
                f32::NEG_INFINITY
            }
        };
        top_k_scan_with(n, load, tail, lanes, k, cand, sel, None)
    }

    /// `filter::top_k_candidates` on a bfloat16 row (raw bits), widened in registers: the row
    /// is read once, at half the bytes, with no conversion pass. Candidates are `f32`, equal
    /// to what `Elem::load_row` would give.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn top_k_candidates_bf16(
        y: &[u16],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> bool {
        let load = |j: usize| load_bf16(y, j);
        let tail = |j: usize| f32::from_bits((y[j] as u32) << 16);
        top_k_scan_with(y.len(), load, tail, every_lane(), k, cand, sel, est)
    }

    /// Every lane: a constant mask, so the masked compares compile to plain ones. (A scan's
    /// `lanes(j)` gives the lanes it compares among the 16 logits from `j`, bit `l` for logit
    /// `j + l`.)
    #[inline(always)]
    fn every_lane() -> impl Fn(usize) -> __mmask16 {
        |_| 0xFFFF
    }

    /// [`top_k_scan`], with the mass estimate only when one is asked for.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn top_k_scan_with(
        n: usize,
        load: impl Fn(usize) -> __m512,
        tail: impl Fn(usize) -> f32,
        lanes: impl Fn(usize) -> __mmask16,
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> bool {
        match est {
            None => top_k_scan(n, load, tail, lanes, k, cand, sel, &mut NoSink),
            Some((inv_t, e)) => {
                let mut st = EstState::new(n, &load, inv_t, e);
                top_k_scan(n, load, tail, lanes, k, cand, sel, &mut st)
            }
        }
    }

    /// `softmax::approx_exp` of 16 logits against `r`, lane by lane the same operations.
    #[inline(always)]
    unsafe fn approx16(v: __m512, r: __m512, c2: __m512) -> __m512 {
        let y = _mm512_fmadd_ps(_mm512_sub_ps(v, r), c2, _mm512_set1_ps(EST_BIAS));
        // `max` returns its second operand when the first is NaN, as `f32::max` gives 0.
        let i = _mm512_cvttps_epi32(_mm512_max_ps(y, _mm512_setzero_ps()));
        let one = _mm512_set1_epi32(0x3F80_0000);
        // (i & mantissa) | one: 1 + frac(y); i & exponent: 2^floor(y).
        let mf = _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xEA>(
            i,
            _mm512_set1_epi32(0x007F_FFFF),
            one,
        ));
        let two_floor = _mm512_castsi512_ps(_mm512_and_si512(
            i,
            _mm512_set1_epi32(0xFF80_0000u32 as i32),
        ));
        let c = EST_POLY.map(|v| _mm512_set1_ps(v));
        let q = _mm512_fmadd_ps(_mm512_fmadd_ps(c[0], mf, c[1]), mf, c[2]);
        _mm512_mul_ps(q, two_floor)
    }

    /// The block sum of the estimate over `start..end` against `r` (a block's redo).
    #[inline(always)]
    unsafe fn approx_block(
        load: &impl Fn(usize) -> __m512,
        tail: &impl Fn(usize) -> f32,
        start: usize,
        end: usize,
        r: f32,
        c2: f32,
    ) -> f64 {
        let (vr, vc) = (_mm512_set1_ps(r), _mm512_set1_ps(c2));
        let mut acc = _mm512_setzero_ps();
        let mut j = start;
        while j + 16 <= end {
            acc = _mm512_add_ps(acc, approx16(load(j), vr, vc));
            j += 16;
        }
        widen_sum(acc)
            + (j..end)
                .map(|i| approx_exp(tail(i), r, c2) as f64)
                .sum::<f64>()
    }

    /// What a first scan ([`top_k_scan`]) works out besides its candidates, block by block:
    /// it sees every 16 values (`add`) and every value of the scalar tail (`add_one`), and
    /// `flush(end)` closes the block ending at `end` (every [`BLOCK`], and the row's last),
    /// whose values it may read again (from L1) through `load` and `tail`.
    trait ScanSink {
        unsafe fn add(&mut self, v: __m512);
        unsafe fn add_one(&mut self, v: f32);
        unsafe fn flush(
            &mut self,
            end: usize,
            load: &impl Fn(usize) -> __m512,
            tail: &impl Fn(usize) -> f32,
        );
    }

    /// A scan for the candidates alone.
    struct NoSink;

    impl ScanSink for NoSink {
        #[inline(always)]
        unsafe fn add(&mut self, _: __m512) {}
        #[inline(always)]
        unsafe fn add_one(&mut self, _: f32) {}
        #[inline(always)]
        unsafe fn flush(
            &mut self,
            _: usize,
            _: &impl Fn(usize) -> __m512,
            _: &impl Fn(usize) -> f32,
        ) {
        }
    }

    /// The running state of a first scan's `MassEstimate`: the current block's reference
    /// (the largest value of the blocks before), start, running maximum and sum (and its
    /// scalar tail's).
    struct EstState<'a> {
        r: f32,
        inv_t: f32,
        c2: f32,
        vr: __m512,
        vc2: __m512,
        block_start: usize,
        vmax: __m512,
        acc: __m512,
        tail_max: f32,
        tail_sum: f64,
        est: &'a mut MassEstimate,
    }

    impl<'a> EstState<'a> {
        #[inline(always)]
        unsafe fn new(
            n: usize,
            load: &impl Fn(usize) -> __m512,
            inv_t: f32,
            est: &'a mut MassEstimate,
        ) -> Self {
            est.blocks.clear();
            let r = if n >= 16 {
                _mm512_reduce_max_ps(load(0))
            } else {
                f32::NEG_INFINITY
            };
            let c2 = inv_t * EST_SCALE;
            EstState {
                r,
                inv_t,
                c2,
                vr: _mm512_set1_ps(r),
                vc2: _mm512_set1_ps(c2),
                block_start: 0,
                vmax: _mm512_set1_ps(f32::NEG_INFINITY),
                acc: _mm512_setzero_ps(),
                tail_max: f32::NEG_INFINITY,
                tail_sum: 0.0,
                est,
            }
        }
    }

    impl ScanSink for EstState<'_> {
        #[inline(always)]
        unsafe fn add(&mut self, v: __m512) {
            self.vmax = _mm512_max_ps(self.vmax, v);
            self.acc = _mm512_add_ps(self.acc, approx16(v, self.vr, self.vc2));
        }

        #[inline(always)]
        unsafe fn add_one(&mut self, v: f32) {
            self.tail_max = self.tail_max.max(v);
            self.tail_sum += approx_exp(v, self.r, self.c2) as f64;
        }

        /// Redone against the block's own maximum when the terms may have left f32's range
        /// (or the reference was -inf); then the next block's reference.
        #[inline(always)]
        unsafe fn flush(
            &mut self,
            end: usize,
            load: &impl Fn(usize) -> __m512,
            tail: &impl Fn(usize) -> f32,
        ) {
            if self.block_start >= end {
                return;
            }
            let bmax = _mm512_reduce_max_ps(self.vmax).max(self.tail_max);
            let fits = (bmax - self.r) * self.inv_t * std::f32::consts::LOG2_E <= EST_MAX_EXP2;
            let s = if fits {
                widen_sum(self.acc) + self.tail_sum
            } else {
                self.r = bmax;
                approx_block(load, tail, self.block_start, end, self.r, self.c2)
            };
            self.est.blocks.push((self.r, s));
            self.r = self.r.max(bmax);
            self.vr = _mm512_set1_ps(self.r);
            self.block_start = end;
            self.vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            self.acc = _mm512_setzero_ps();
            (self.tail_max, self.tail_sum) = (f32::NEG_INFINITY, 0.0);
        }
    }

    /// The running state of typical-p's first scan ([`typical_scan_f32`]): the maximum so
    /// far, and at each block's end the block's sums against it and its smallest live
    /// logit, from L1 (`softmax::ShiftedSums`; lane by lane its operations).
    struct SumsState<'a> {
        p: *const f32,
        n: usize,
        inv_t: f32,
        live_floor: f32,
        block_start: usize,
        vmax: __m512,
        r: f32,
        low: f32,
        out: &'a mut ShiftedSums<f32>,
    }

    impl SumsState<'_> {
        /// Whether a value is live: at least the floor and finite (a floor of `-inf` is
        /// `f32::MIN`, which `-inf` and NaN are not at least).
        #[inline(always)]
        unsafe fn live(&self, v: __m512) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, _mm512_set1_ps(self.live_floor))
        }
    }

    impl ScanSink for SumsState<'_> {
        #[inline(always)]
        unsafe fn add(&mut self, v: __m512) {
            // `max` returns its second operand when the first is NaN.
            self.vmax = _mm512_max_ps(v, self.vmax);
        }

        #[inline(always)]
        unsafe fn add_one(&mut self, v: f32) {
            self.r = self.r.max(v);
        }

        #[inline(always)]
        unsafe fn flush(
            &mut self,
            end: usize,
            load: &impl Fn(usize) -> __m512,
            tail: &impl Fn(usize) -> f32,
        ) {
            let start = self.block_start;
            if start >= end {
                return;
            }
            self.block_start = end;
            self.r = self.r.max(_mm512_reduce_max_ps(self.vmax));
            self.vmax = _mm512_set1_ps(f32::NEG_INFINITY);
            let (r, inv_t) = (self.r, self.inv_t);
            if r == f32::NEG_INFINITY {
                self.out.blocks.push((r, 0.0, 0.0));
                return;
            }
            let (vm, vt) = (_mm512_set1_ps(r), _mm512_set1_ps(inv_t));
            let (lo, log2e, round) = (
                _mm512_set1_ps(-87.0),
                _mm512_set1_ps(LOG2E),
                _mm512_set1_ps(ROUND),
            );
            let ln2 = _mm512_set1_ps(std::f32::consts::LN_2);
            let c = SUM_POLY.map(|v| _mm512_set1_ps(v));
            let one = _mm512_set1_ps(1.0);
            let mut acc = [_mm512_setzero_ps(); 2];
            let mut xl = [_mm512_setzero_ps(); 2];
            let mut vlow = _mm512_set1_ps(f32::INFINITY);
            let mut j = start;
            while j + 32 <= end {
                // The block after next is read from memory while this one is worked on.
                let ahead = j + 2 * BLOCK;
                if ahead + 32 <= self.n {
                    _mm_prefetch::<_MM_HINT_T0>(self.p.add(ahead).cast::<i8>());
                    _mm_prefetch::<_MM_HINT_T0>(self.p.add(ahead + 16).cast::<i8>());
                }
                for h in 0..2 {
                    let v = load(j + 16 * h);
                    // exp_sum_f32's steps, 0 where not live or below its range.
                    let z = _mm512_mul_ps(_mm512_sub_ps(v, vm), vt);
                    let xc = _mm512_max_ps(z, lo);
                    let t = _mm512_fmadd_ps(xc, log2e, round);
                    let kf = _mm512_sub_ps(t, round);
                    let rr = _mm512_fnmadd_ps(kf, ln2, xc);
                    let mut q = c[0];
                    for &ci in &c[1..] {
                        q = _mm512_fmadd_ps(q, rr, ci);
                    }
                    q = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(q, rr), rr, rr), one);
                    let live = self.live(v);
                    vlow = _mm512_mask_min_ps(vlow, live, vlow, v);
                    let keep = _mm512_mask_cmp_ps_mask::<_CMP_NLT_UQ>(live, z, lo);
                    let e = _mm512_maskz_scalef_ps(keep, q, kf);
                    acc[h] = _mm512_add_ps(acc[h], e);
                    // A weight of 0 gives a product of 0 (`xc` is finite).
                    xl[h] = _mm512_fmadd_ps(e, xc, xl[h]);
                }
                j += 32;
            }
            let (mut sl, mut xs) = ([0.0f32; 32], [0.0f32; 32]);
            for h in 0..2 {
                _mm512_storeu_ps(sl.as_mut_ptr().add(16 * h), acc[h]);
                _mm512_storeu_ps(xs.as_mut_ptr().add(16 * h), xl[h]);
            }
            for i in j..end {
                let v = tail(i);
                if v >= self.live_floor {
                    self.low = self.low.min(v);
                    let x = (v - r) * inv_t;
                    let e = exp_sum_f32::<true>(x);
                    let l = (i - start) % 32;
                    sl[l] += e;
                    xs[l] = e.mul_add(x.max(f32::MIN), xs[l]);
                }
            }
            self.low = self.low.min(_mm512_reduce_min_ps(vlow));
            self.out.blocks.push((r, sum_wide(&sl), sum_wide(&xs)));
        }
    }

    /// `Real::typical_scan` of an `f32` row: its [`HEAD`]-style top-`k` candidates (as
    /// [`top_k_candidates`]) and its `softmax::ShiftedSums` under `floor` for the inverse
    /// temperature `inv_t`, in one read: each block's sums are taken right after its
    /// candidates, while it is in L1, and the block after next is fetched meanwhile. Returns
    /// whether the row holds a NaN.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn typical_scan_f32(
        y: &[f32],
        inv_t: f32,
        floor: f32,
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        sums: &mut ShiftedSums<f32>,
    ) -> bool {
        let (p, n) = (y.as_ptr(), y.len());
        let load = |j: usize| _mm512_loadu_ps(p.add(j));
        sums.blocks.clear();
        let mut st = SumsState {
            p,
            n,
            inv_t,
            live_floor: if floor > f32::NEG_INFINITY {
                floor
            } else {
                f32::MIN
            },
            block_start: 0,
            vmax: _mm512_set1_ps(f32::NEG_INFINITY),
            r: f32::NEG_INFINITY,
            low: f32::INFINITY,
            out: sums,
        };
        let nan = top_k_scan(n, load, |j| y[j], every_lane(), k, cand, sel, &mut st);
        (st.out.max, st.out.min) = (st.r, st.low);
        nan
    }

    /// The scan behind the others: `load(j)` gives the 16 values from `j`, `tail(j)` one
    /// value; `sink` sees every value and each block's end, in the same read (the
    /// `MassEstimate` of a top-p row, the sums of a typical-p row).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn top_k_scan(
        n: usize,
        load: impl Fn(usize) -> __m512,
        tail: impl Fn(usize) -> f32,
        lanes: impl Fn(usize) -> __mmask16,
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        sink: &mut impl ScanSink,
    ) -> bool {
        cand.clear();
        let mut cap = (4 * k).max(256);
        let mut thr = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut nan: __mmask16 = 0;
        let full = n / 16 * 16;
        let quad = n / 64 * 64;
        let mut j = 0;
        // Four vectors per step and one branch for all of them: early in the row, when the
        // threshold is still low, hits are frequent and a branch per vector mispredicts.
        while j < quad {
            let v = [load(j), load(j + 16), load(j + 32), load(j + 48)];
            let mut any: __mmask16 = 0;
            let mut ms = [0 as __mmask16; 4];
            for q in 0..4 {
                let on = lanes(j + 16 * q);
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v[q], v[q]);
                ms[q] = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(on, v[q], thr);
                any |= ms[q];
                sink.add(v[q]);
            }
            if any != 0 {
                for q in 0..4 {
                    if ms[q] != 0 {
                        push_lanes(cand, ms[q], v[q], (j + 16 * q) as u32);
                    }
                }
                if cand.len() >= cap {
                    thr = _mm512_set1_ps(compact(cand, k, sel));
                    if 2 * cand.len() > cap {
                        cap *= 2;
                    }
                }
            }
            j += 64;
            if j % BLOCK == 0 {
                sink.flush(j, &load, &tail);
            }
        }
        while j < full {
            let v = load(j);
            let on = lanes(j);
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            sink.add(v);
            let m = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(on, v, thr);
            if m != 0 {
                push_lanes(cand, m, v, j as u32);
                if cand.len() >= cap {
                    thr = _mm512_set1_ps(compact(cand, k, sel));
                    if 2 * cand.len() > cap {
                        cap *= 2;
                    }
                }
            }
            j += 16;
        }
        let t = _mm512_cvtss_f32(thr);
        // The NaN test above reads every lane (fewer mask registers live in the loop); a NaN
        // found is then looked for again among the compared lanes only: one more read, only
        // for a row holding a NaN (an error, or a NaN the mask disallows).
        let mut bad = nan != 0 && {
            let mut j = 0;
            let mut seen = false;
            while j < full && !seen {
                let v = load(j);
                seen = _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(lanes(j), v, v) != 0;
                j += 16;
            }
            seen
        };
        for j in full..n {
            let v = tail(j);
            bad |= v.is_nan();
            if v >= t {
                cand.push((v, j as u32));
            }
            sink.add_one(v);
        }
        sink.flush(n, &load, &tail);
        if cand.len() > k {
            compact(cand, k, sel);
        }
        bad
    }

    /// AVX-512 twin of `filter::masses_above` for `f32`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn masses_above(w: &[f32], th: &[f32; 4]) -> [f64; 4] {
        let t = th.map(|v| _mm512_set1_ps(v));
        let mut out = [0.0f64; 4];
        for block in w.chunks(BLOCK) {
            let full = block.len() / 16 * 16;
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut j = 0;
            while j < full {
                let v = _mm512_loadu_ps(block.as_ptr().add(j));
                for i in 0..4 {
                    let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, t[i]);
                    acc[i] = _mm512_mask_add_ps(acc[i], gt, acc[i], v);
                }
                j += 16;
            }
            for i in 0..4 {
                out[i] += widen_sum(acc[i])
                    + block[full..]
                        .iter()
                        .filter(|&&v| v > th[i])
                        .map(|&v| v as f64)
                        .sum::<f64>();
            }
        }
        out
    }

    /// The two halves of 16 `f32` lanes widened to `f64` (lanes 0-7, 8-15).
    #[inline(always)]
    unsafe fn widen(v: __m512) -> [__m512d; 2] {
        [
            _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(v),
            ))),
        ]
    }

    /// Adds the lanes of `v` selected by `m`, widened, to the 16 `f64` lanes `acc`.
    #[inline(always)]
    unsafe fn add_wide(acc: &mut [__m512d; 2], m: __mmask16, v: __m512) {
        for (h, x) in widen(v).into_iter().enumerate() {
            acc[h] = _mm512_mask_add_pd(acc[h], (m >> (8 * h)) as u8, acc[h], x);
        }
    }

    /// The 16 `f64` lanes of `acc` summed in lane order (as a portable `[f64; 16]` sums).
    #[inline(always)]
    unsafe fn lane_sum(acc: &[__m512d]) -> f64 {
        let mut lanes = [0.0f64; 32];
        for (h, &a) in acc.iter().enumerate() {
            _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * h), a);
        }
        lanes[..8 * acc.len()].iter().sum()
    }

    /// Typical-p's keys of 16 logits (`TypicalKey::of`): `|c - v|`, `+inf` where not live.
    #[inline(always)]
    unsafe fn keys(v: __m512, lo: __m512, c: __m512) -> __m512 {
        let live = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, lo),
            v,
            _mm512_set1_ps(f32::NEG_INFINITY),
        );
        let abs = _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_sub_ps(c, v)),
            _mm512_set1_epi32(0x7fff_ffff),
        ));
        _mm512_mask_blend_ps(live, _mm512_set1_ps(f32::INFINITY), abs)
    }

    /// AVX-512 twin of `filter::key_bracket_portable` for `f32`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn key_bracket(
        z: &[f32],
        w: &[f32],
        r: &KeyBracket<f32>,
        buf: &mut Vec<(f32, u32)>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        let n = z.len().min(w.len());
        // Room for every token plus the 16-pair overhang of the last store.
        buf.reserve(n + 16);
        let out = buf.as_mut_ptr();
        let mut k = 0usize;
        let (lo, c, kmax) = (
            _mm512_set1_ps(r.key.lo),
            _mm512_set1_ps(r.key.c),
            _mm512_set1_ps(r.kmax),
        );
        let (scale, b0, b1) = (
            _mm512_set1_ps(r.scale),
            _mm512_set1_ps(r.b0),
            _mm512_set1_ps(r.b1),
        );
        let mut total = 0.0;
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            let full = start + (end - start) / 16 * 16;
            let mut under = [_mm512_setzero_pd(); 2];
            let mut j = start;
            while j < full {
                let v = _mm512_loadu_ps(z.as_ptr().add(j));
                let key = keys(v, lo, c);
                let x = _mm512_mul_ps(key, scale);
                let fin = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(key, kmax);
                let below = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(fin, x, b0);
                let from = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(fin, x, b0);
                let inside = if r.open {
                    from
                } else {
                    _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(from, x, b1)
                };
                // Most of a peaked row lies above the bracket: its weights are not read.
                if below != 0 {
                    add_wide(&mut under, below, _mm512_loadu_ps(w.as_ptr().add(j)));
                }
                if inside != 0 {
                    // SAFETY: k <= j, and the capacity is n + 16 pairs.
                    k += store_lanes(out.add(k), inside, key, j as u32);
                }
                j += 16;
            }
            // The portable loop adds the block's tail to lane 0 before it sums the lanes.
            let mut lanes = [0.0f64; 16];
            for (h, &a) in under.iter().enumerate() {
                _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * h), a);
            }
            for at in full..end {
                let (key, below, inside) = r.place(z[at]);
                if below {
                    lanes[0] += w[at] as f64;
                }
                if inside {
                    out.add(k).write((key, at as u32));
                    k += 1;
                }
            }
            let sum = lanes.iter().sum::<f64>();
            blocks.push(sum);
            total += sum;
            start = end;
        }
        // SAFETY: the first k pairs were written above.
        buf.set_len(k);
        total
    }

    /// AVX-512 twin of `filter::keep_keys_within_portable` for `f32`: the block sums as
    /// `sum_wide` takes them (32 lanes), as the exp pass does.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn keep_keys_within(
        w: &mut [f32],
        z: &[f32],
        key: &TypicalKey<f32>,
        tau: f32,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        let n = z.len().min(w.len());
        let (lo, c, vtau) = (
            _mm512_set1_ps(key.lo),
            _mm512_set1_ps(key.c),
            _mm512_set1_ps(tau),
        );
        let out = w.as_mut_ptr();
        let mut total = 0.0;
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            let mut acc = [_mm512_setzero_pd(); 4];
            let mut j = start;
            while j + 32 <= end {
                for h in 0..2 {
                    let at = j + 16 * h;
                    let v = _mm512_loadu_ps(z.as_ptr().add(at));
                    let kept = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(keys(v, lo, c), vtau);
                    let wv = _mm512_maskz_mov_ps(kept, _mm512_loadu_ps(out.add(at)));
                    _mm512_storeu_ps(out.add(at), wv);
                    let [a, b] = widen(wv);
                    acc[2 * h] = _mm512_add_pd(acc[2 * h], a);
                    acc[2 * h + 1] = _mm512_add_pd(acc[2 * h + 1], b);
                }
                j += 32;
            }
            let mut tail = 0.0f64;
            for (k, &v) in z[j..end].iter().enumerate() {
                let at = out.add(j + k);
                let e = if key.of(v) <= tau { *at } else { 0.0 };
                at.write(e);
                tail += e as f64;
            }
            let s = lane_sum(&acc) + tail;
            blocks.push(s);
            total += s;
            start = end;
        }
        total
    }

    /// The 16 lanes summed in f64.
    #[inline(always)]
    unsafe fn widen_sum(v: __m512) -> f64 {
        let [lo_half, hi_half] = widen(v);
        _mm512_reduce_add_pd(_mm512_add_pd(lo_half, hi_half))
    }

    /// AVX-512 twin of `filter::mass_above_and_collect` for `f32`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn mass_above_and_collect(
        w: &[f32],
        lo: f32,
        hi: f32,
        buf: &mut Vec<(f32, u32)>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64) {
        buf.clear();
        // Room for every token plus the 16-pair overhang of the last store.
        buf.reserve(w.len() + 16);
        let out = buf.as_mut_ptr();
        let mut k = 0usize;
        let vlo = _mm512_set1_ps(lo);
        let vhi = _mm512_set1_ps(hi);
        let mut a = 0.0f64;
        for (bi, block) in w.chunks(BLOCK).enumerate() {
            let base = bi * BLOCK;
            let full = block.len() / 16 * 16;
            // The mass above `hi` in f64 lanes: it becomes the draw's block sums, which must
            // be exact to f64 rounding like the sums of the exp pass.
            let mut above = [_mm512_setzero_pd(); 2];
            let mut j = 0;
            while j < full {
                let v = _mm512_loadu_ps(block.as_ptr().add(j));
                let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, vhi);
                add_wide(&mut above, gt, v);
                let inb = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(
                    _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, vlo),
                    v,
                    vhi,
                );
                if inb != 0 {
                    // SAFETY: k <= base + j, and the capacity is w.len() + 16.
                    k += store_lanes(out.add(k), inb, v, (base + j) as u32);
                }
                j += 16;
            }
            let mut s = _mm512_reduce_add_pd(_mm512_add_pd(above[0], above[1]));
            for (l, &v) in block[full..].iter().enumerate() {
                if v > hi {
                    s += v as f64;
                } else if v >= lo {
                    out.add(k).write((v, (base + full + l) as u32));
                    k += 1;
                }
            }
            blocks.push(s);
            a += s;
        }
        // SAFETY: the first k pairs were written above.
        buf.set_len(k);
        let inside = buf.iter().map(|q| q.0 as f64).sum();
        (a, inside)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{
    exp_weights_bf16, exp_weights_f32, gather_allowed_f32, keep_keys_within, key_bracket,
    mass_above_and_collect, masses_above, top_k_candidates, top_k_candidates_bf16,
    top_k_candidates_masked, typical_scan_f32,
};
