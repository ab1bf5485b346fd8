//! The short fuzz run of `make test`: `rust_celery_worker::fuzzing::wire`
//! (every parser of wire bytes, as the worker runs them) on mutations of
//! Celery's captured samples. No panic and no slow input may come out.
//! `RCW_FUZZ_RUNS` sets the count, `RCW_FUZZ_SEED` replays a run; the long,
//! coverage-guided run is libFuzzer's (`fuzz/README.md`).

use rust_celery_worker::fuzzing;
use rust_celery_worker::protocol::Envelope;
use std::panic;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Slower than this for one input counts as a hang (inputs are < 64 KiB).
const SLOW: Duration = Duration::from_secs(2);

/// Byte strings that steer JSON, base64 and dates into their edges.
const TOKENS: &[&[u8]] = &[
    b"1e300",
    b"-1e300",
    b"1e-310",
    b"-0",
    b"null",
    b"[]",
    b"{}",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"NaN",
    b"\"__type__\"",
    b"\"__value__\"",
    b"\"datetime\"",
    b"\"bytes\"",
    b"\"timelimit\"",
    b"\"eta\"",
    b"\"expires\"",
    b"\"compression\"",
    b"\"zlib\"",
    b"\"chord\"",
    b"\"chain\"",
    b"\"method\"",
    b"\"arguments\"",
    b"\"rate_limit\"",
    b"\"9999-12-31T23:59:59.999999+14:00\"",
    b"[[[[[[[[[[[[[[[[",
    b"/s",
    b"/h",
    b"=",
    b"\\",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast and reproducible from the printed seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(8) {
        0 if len > 1 => {
            let i = 1 + rng.below(len - 1);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 1 => {
            let i = 1 + rng.below(len - 1);
            input[i] = rng.next() as u8;
        }
        2 => {
            let at = if len > 1 { 1 + rng.below(len - 1) } else { len };
            let tok = TOKENS[rng.below(TOKENS.len())];
            input.splice(at..at, tok.iter().copied());
        }
        3 if len > 2 => {
            let a = 1 + rng.below(len - 1);
            let b = (a + 1 + rng.below(16)).min(len);
            input.drain(a..b);
        }
        4 if len > 2 => {
            let a = 1 + rng.below(len - 1);
            let b = (a + 1 + rng.below(64)).min(len);
            let chunk = input[a..b].to_vec();
            let at = 1 + rng.below(len - 1);
            input.splice(at..at, chunk);
        }
        5 => {
            // Splice in the tail of another seed.
            let other = &seeds[rng.below(seeds.len())];
            if other.len() > 1 && len > 1 {
                let cut = 1 + rng.below(len - 1);
                let from = 1 + rng.below(other.len() - 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
        }
        6 => {
            // Inside a Redis envelope: mutate the decoded body, re-encode it,
            // so the body parsers see more than base64 errors.
            if input.first() == Some(&0)
                && let Ok(mut env) = Envelope::parse(&input[1..])
            {
                let mut body = [&[1u8][..], &env.body].concat();
                mutate(rng, &mut body, seeds);
                env.body = body[1..].to_vec();
                *input = [&[0u8][..], env.to_json().as_bytes()].concat();
            }
        }
        _ => {
            // Another parser for the same bytes.
            if let Some(k) = input.first_mut() {
                *k = rng.next() as u8;
            }
        }
    }
    input.truncate(64 * 1024);
}

/// Celery's captured samples, the seeds.
fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-wire")
}

#[test]
fn wire_parsers_survive_mutated_captures() {
    let seeds = fuzzing::seeds(&samples());
    assert!(
        seeds.len() > 50,
        "expected the captured samples as seeds, got {}",
        seeds.len()
    );
    for s in &seeds {
        fuzzing::wire(s);
    }
    let runs: u64 = std::env::var("RCW_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("RCW_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("wire fuzz: {runs} inputs, RCW_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for _ in 0..runs {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &seeds);
        }
        let started = Instant::now();
        let outcome = panic::catch_unwind(|| fuzzing::wire(&input));
        let spent = started.elapsed();
        if outcome.is_err() || spent > SLOW {
            let what = if outcome.is_err() { "panic" } else { "slow" };
            failures.push(format!(
                "{what} ({spent:?}): {}",
                String::from_utf8_lossy(&input)
            ));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    let _ = panic::take_hook();
    assert!(
        failures.is_empty(),
        "RCW_FUZZ_SEED={seed}:\n{}",
        failures.join("\n")
    );
}

/// Inputs that panicked before `duration_secs`, kept as regression cases.
#[test]
fn found_inputs_stay_fixed() {
    // timelimit beyond what a Duration holds
    let envelope = br#"{"body":"W1tdLHt9LHt9XQ==","content-type":"application/json","headers":{"task":"t","id":"x","timelimit":[1e300,-1e300]},"properties":{"body_encoding":"base64"}}"#;
    fuzzing::wire(&[&[0u8][..], &envelope[..]].concat());
    // a rate whose interval is beyond what a Duration holds
    fuzzing::wire(b"\x051e-310/s");
}

/// `make fuzz` seeds libFuzzer's corpus with the samples this way.
#[test]
#[ignore = "writes the libFuzzer seed corpus (make fuzz)"]
fn write_seed_corpus() {
    let out = PathBuf::from(std::env::var("RCW_FUZZ_CORPUS").expect("RCW_FUZZ_CORPUS"));
    std::fs::create_dir_all(&out).unwrap();
    for (i, s) in fuzzing::seeds(&samples()).iter().enumerate() {
        std::fs::write(out.join(format!("seed-{i:03}")), s).unwrap();
    }
}
