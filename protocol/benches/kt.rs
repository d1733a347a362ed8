//! Key-transparency log at 10^6 entries: append, inclusion and consistency proofs (made
//! and verified), and their sizes.
//! Run: `cargo bench -p letterme-protocol --bench kt`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use letterme_protocol::SigningKeypair;
use letterme_protocol::kt::{KeyOp, Log, LogEntry, verify_consistency, verify_inclusion};

const N: u32 = 1_000_000;

fn entry(i: u32) -> LogEntry {
    let mut label = [0u8; 32];
    label[..4].copy_from_slice(&i.to_be_bytes());
    LogEntry {
        op: KeyOp::Register,
        label,
        identity_key: [7; 32],
        encryption_key: [9; 32],
        key_version: 1,
        device_set: None,
        time: 1_700_000_000 + u64::from(i),
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKeypair::generate();
    let mut log = Log::new();
    let started = Instant::now();
    for i in 0..N {
        log.push(entry(i));
    }
    let took = started.elapsed();
    let root_started = Instant::now();
    let head = log.checkpoint("x.test", [7; 32], 1, &key);
    eprintln!(
        "built a log of {N} entries in {:.2} s ({:.0} appends/s); root and checkpoint in {:.1} ms",
        took.as_secs_f64(),
        f64::from(N) / took.as_secs_f64(),
        root_started.elapsed().as_secs_f64() * 1000.0
    );
    let idx = u64::from(N / 3);
    let proof = log.prove_inclusion(idx).expect("in the log");
    let old_size = u64::from(N / 2);
    let mut old = Log::new();
    for i in 0..N / 2 {
        old.push(entry(i));
    }
    let old_cp = old.checkpoint("x.test", [7; 32], 0, &key);
    let cproof = log.prove_consistency(old_size).expect("smaller");
    eprintln!(
        "inclusion proof: {} bytes; consistency proof {} -> {N}: {} bytes",
        proof.len(),
        old_size,
        cproof.len()
    );

    let mut g = c.benchmark_group("kt_1e6");
    g.bench_function("append", |b| {
        let mut l = log.clone();
        let mut i = N;
        b.iter(|| {
            i += 1;
            black_box(l.push(entry(i)))
        });
    });
    g.bench_function("prove_inclusion", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % u64::from(N);
            black_box(log.prove_inclusion(i))
        });
    });
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| verify_inclusion(black_box(&entry(N / 3)), idx, &head, black_box(&proof)));
    });
    g.bench_function("prove_consistency", |b| {
        b.iter(|| black_box(log.prove_consistency(black_box(old_size))));
    });
    g.bench_function("verify_consistency", |b| {
        b.iter(|| verify_consistency(black_box(&old_cp), &head, black_box(&cproof)));
    });
    g.bench_function("checkpoint_verify", |b| {
        b.iter(|| black_box(&head).verify(&key.public()));
    });
    g.finish();

    // The VRF label of an address (made by the server on a lookup it has not cached,
    // checked by the client on every lookup).
    let vrf = letterme_protocol::kt::VrfKey::generate();
    let alice = letterme_protocol::Address::parse("alice@x.test").expect("address");
    let (_, label_proof) = vrf.label(&alice);
    let mut v = c.benchmark_group("kt_vrf");
    v.bench_function("label_prove", |b| {
        b.iter(|| black_box(vrf.label(black_box(&alice))));
    });
    v.bench_function("label_verify", |b| {
        b.iter(|| {
            letterme_protocol::kt::verify_label(&vrf.public(), black_box(&alice), &label_proof)
        });
    });
    v.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
