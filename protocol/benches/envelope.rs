//! Envelope seal and open for 1 and 10 recipients with a 4 KiB body.
//! Run: `cargo bench -p letterme-protocol --bench envelope`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::{Address, EncryptionKeypair, Payload, SigningKeypair};

fn payload(from: &Address, to: Vec<Address>) -> Payload {
    Payload {
        from: from.clone(),
        to,
        cc: vec![],
        bcc: vec![],
        subject: "benchmark".into(),
        body: "x".repeat(4096),
        headers: vec![],
        date: 1_700_000_000,
        message_id: "<bench@x.test>".into(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let sender = Address::parse("alice@x.test").expect("valid");
    let signer = SigningKeypair::generate();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 10] {
        let keys: Vec<EncryptionKeypair> = (0..n).map(|_| EncryptionKeypair::generate()).collect();
        let rcpts: Vec<(Address, _)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    Address::parse(&format!("r{i}@x.test")).expect("valid"),
                    k.public(),
                )
            })
            .collect();
        let p = payload(&sender, rcpts.iter().map(|(a, _)| a.clone()).collect());
        group.bench_with_input(BenchmarkId::new("seal_4KiB", n), &n, |b, _| {
            b.iter(|| seal(SignerKind::User, &signer, black_box(&p), &rcpts, 1).expect("seal"));
        });
        let env = seal(SignerKind::User, &signer, &p, &rcpts, 1).expect("seal");
        let bytes = env.encode();
        let me = rcpts[n - 1].0.clone();
        let my_key = &keys[n - 1];
        let signer_pub = signer.public();
        group.bench_with_input(BenchmarkId::new("decode_open_4KiB", n), &n, |b, _| {
            b.iter(|| {
                let env = letterme_protocol::Envelope::decode(black_box(&bytes)).expect("decode");
                env.open(&me, &[my_key], &signer_pub, &|_| false)
                    .expect("open")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
