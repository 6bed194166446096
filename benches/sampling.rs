//! Criterion benches of the Rust pipeline alone (no Python): `cargo bench`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tokensampler::params::RowParams;
use tokensampler::pipeline::{run_batch, BatchRequest, Seeds};

fn logits(b: usize, v: usize) -> Vec<Vec<f32>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..b)
        .map(|_| {
            (0..v)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let v = 128_256;
    let data = logits(8, v);
    let rows: Vec<&[f32]> = data.iter().map(|r| &r[..]).collect();
    for (name, row) in [
        (
            "topk50",
            RowParams {
                top_k: 50,
                ..Default::default()
            },
        ),
        (
            "topp0.9",
            RowParams {
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "greedy",
            RowParams {
                temperature: 0.0,
                ..Default::default()
            },
        ),
    ] {
        let params = [row];
        let req = BatchRequest {
            seeds: Seeds::Shared(1),
            ..BatchRequest::new(&rows, &params)
        };
        c.bench_function(&format!("{name} B=8 V={v}"), |bn| {
            bn.iter(|| run_batch(black_box(&req), None).expect("ok"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
