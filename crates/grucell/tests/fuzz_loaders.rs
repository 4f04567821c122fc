//! Mutation tests for every loader: `.npy`/`.npz`, `.keras` (zip), HDF5 (legacy `.h5` and Keras 3
//! weights layouts, earliest and latest HDF5 formats), safetensors, the model config JSON (through
//! the same config-to-model path `grucell predict` uses) and CSV.
//!
//! Inputs are real fixture files, truncated, bit-flipped, overwritten with random bytes or with
//! "interesting" values (0x00…, 0xff…), shortened, plus hand-made hostile cases (absurd header
//! lengths and offsets, 10^17-element shapes, unknown classes, wrong types). Every call must return
//! `Ok` or `Err`: never panic, and never ask the allocator for an absurd block — a counting global
//! allocator below records the largest single request per test thread and each case is checked
//! against [`MAX_ALLOCATION`].
//!
//! Everything is deterministic (fixed xorshift seed) and bounded: about 2 s in release.
//! `GRUCELL_FUZZ_SCALE=N` multiplies the number of variants for a longer local run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use grucell::forecast::csv::parse_series;
use grucell::forecast::series::fill_gaps;
use grucell::io::h5::H5File;
use grucell::io::keras::load::model_from_file;
use grucell::io::keras::{load_keras_bytes, load_keras_file, KerasFile, KerasWeights};
use grucell::io::npy::{read_npy_bytes, read_npz_bytes};
use grucell::io::safetensors::{load_safetensors, load_safetensors_bytes, save_safetensors};
use grucell::Tensor;
use serde_json::{json, Value};

// ---------------------------------------------------------------- allocation watch

/// Largest single allocation a loader may request on these small inputs (64 MiB; the fixtures
/// are at most a few tens of KB and the loaders' own budgets scale with the input size).
const MAX_ALLOCATION: usize = 64 << 20;

/// The system allocator, recording the largest request made on the current thread.
struct Watch;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Panics on this thread, including those the library catches itself (its HDF5 wrapper
    /// turns a panic inside `hdf5-reader` into an error, but the CLI would still print it).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Installs (once) a panic hook that counts panics per thread and keeps the default report.
fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping touches only a
// thread-local `Cell<usize>`, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// Runs every case under `catch_unwind` with the allocation watch; returns the failures
/// (panics and oversized allocations), one line each.
struct Harness {
    label: &'static str,
    runs: usize,
    failures: Vec<String>,
    start: Instant,
}

impl Harness {
    fn new(label: &'static str) -> Self {
        count_panics();
        Harness {
            label,
            runs: 0,
            failures: Vec::new(),
            start: Instant::now(),
        }
    }

    fn case(&mut self, what: impl Into<String>, f: impl FnOnce()) {
        self.runs += 1;
        LARGEST.with(|l| l.set(0));
        PANICS.with(|p| p.set(0));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        let largest = LARGEST.with(Cell::get);
        let caught = PANICS.with(Cell::get);
        if panicked {
            self.failures.push(format!("{}: panicked", what.into()));
        } else if caught > 0 {
            self.failures.push(format!(
                "{}: panicked inside the library (caught)",
                what.into()
            ));
        } else if largest > MAX_ALLOCATION {
            self.failures.push(format!(
                "{}: allocated {largest} bytes at once",
                what.into()
            ));
        }
    }

    /// Asserts no failure and at least `min_runs` cases; prints the count and time.
    fn finish(self, min_runs: usize) {
        let secs = self.start.elapsed().as_secs_f64();
        eprintln!("{}: {} inputs in {secs:.2} s", self.label, self.runs);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} inputs failed:\n{}",
            self.label,
            self.failures.len(),
            self.runs,
            self.failures.join("\n")
        );
        assert!(
            self.runs >= min_runs,
            "{}: only {} inputs",
            self.label,
            self.runs
        );
    }
}

// ---------------------------------------------------------------- shared helpers

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

fn scale() -> usize {
    std::env::var("GRUCELL_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("grucell-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Truncated prefixes (all short ones, then spread over the file) and `count` variants with
/// bit flips, random bytes, 0x00/0xff runs or a cut-out span.
fn mutations(orig: &[u8], rng: &mut Rng, count: usize) -> Vec<(String, Vec<u8>)> {
    let n = orig.len();
    let mut out = Vec::new();
    for len in (0..n.min(64)).chain((0..24).map(|i| i * n / 24)) {
        out.push((format!("truncate {len}"), orig[..len].to_vec()));
    }
    if n == 0 {
        return out;
    }
    for i in 0..count {
        let mut m = orig.to_vec();
        let what = match i % 4 {
            0 => {
                let k = 1 + rng.below(4);
                for _ in 0..k {
                    let p = rng.below(n);
                    m[p] ^= 1 << rng.below(8);
                }
                format!("{k} bit flips")
            }
            1 => {
                let p = rng.below(n);
                let len = (1 + rng.below(16)).min(n - p);
                for b in &mut m[p..p + len] {
                    *b = rng.next() as u8;
                }
                format!("{len} random bytes at {p}")
            }
            2 => {
                // Overwrite with "interesting" values: 0xff.. or 0 (sizes, addresses, counts).
                let p = rng.below(n);
                let len = [1, 2, 4, 8][rng.below(4)].min(n - p);
                let v = if rng.next() & 1 == 0 { 0xff } else { 0x00 };
                m[p..p + len].fill(v);
                format!("{len} bytes of {v:#x} at {p}")
            }
            _ => {
                let p = rng.below(n);
                let len = rng.below(64).min(n - p);
                m.drain(p..p + len);
                format!("cut {len} bytes at {p}")
            }
        };
        out.push((format!("{what} (#{i})"), m));
    }
    out
}

// ---------------------------------------------------------------- npy, npz, .keras, HDF5

/// Every binary loader, on one input; all that matters is that none panics.
fn run_all_loaders(bytes: &[u8]) {
    let _ = read_npy_bytes(bytes, "m.npy");
    let _ = read_npz_bytes(bytes, "m.npz");
    let _ = load_keras_bytes(bytes.to_vec(), "m.keras");
    let _ = load_safetensors_bytes(bytes, "m.safetensors");
    if let Ok(h) = H5File::from_bytes(bytes.to_vec(), "m.h5") {
        if let Ok(paths) = h.datasets_under("") {
            for p in paths.iter().take(64) {
                let _ = h.read_f64(p);
                let _ = h.attr_names(p);
            }
        }
        for g in ["", "model_weights", "layers/gru/cell/vars", "data"] {
            let _ = h.group_names(g);
            let _ = h.attr_names(g);
            if let Ok(names) = h.attr_names(g) {
                for n in names.iter().take(16) {
                    let _ = h.attr_strings(g, n);
                    let _ = h.attr_f64(g, n);
                }
            }
        }
    }
}

/// Runs every loader over truncated, bit-flipped, overwritten and shortened variants of the
/// fixtures and over random bytes behind each file signature.
#[test]
fn no_loader_panics_on_mutated_or_random_input() {
    let files = [
        ("io/npy/f32_c_2x3.npy", 400),
        ("io/npy/f64_f_2x3x4.npy", 400),
        ("io/npy/bool_4.npy", 200),
        ("io/npz/stored.npz", 600),
        ("io/npz/deflate.npz", 600),
        ("io/keras/seq_gru.keras", 1000),
        ("io/keras/seq_gru_deflate.keras", 400),
        ("io/keras/func_mask.keras", 600),
        ("io/keras/seq_gru.h5", 1000),
        ("io/keras/bidir.h5", 600),
        ("io/keras/tf2_style.h5", 600),
        ("io/keras/seq_gru.weights.h5", 400),
        ("io/h5/misc_earliest.h5", 500),
        ("io/h5/misc_latest.h5", 500),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut h = Harness::new("binary loaders");
    for (file, count) in files {
        let orig = std::fs::read(fixture(file)).unwrap();
        let mut cases = mutations(&orig, &mut rng, count * scale());
        // Random content behind each known signature.
        for magic in [
            &b"\x93NUMPY\x01\x00"[..],
            b"\x93NUMPY\x02\x00",
            b"PK\x03\x04",
            b"\x89HDF\r\n\x1a\n",
        ] {
            let mut v = magic.to_vec();
            v.extend((0..rng.below(2048)).map(|_| rng.next() as u8));
            cases.push((format!("random after {magic:?}"), v));
        }
        for (what, bytes) in cases {
            h.case(format!("{file}: {what}"), || run_all_loaders(&bytes));
        }
    }
    h.finish(7000);
}

/// A legacy `.h5` (or any HDF5 file) cut anywhere at its tail is refused at the superblock,
/// naming the file, the recorded and the actual size — even where the cut part held nothing
/// the reader would look at. Both superblock generations: version 0 (h5py default, Keras
/// files) and version 3 (`libver="latest"`).
#[test]
fn truncated_hdf5_files_are_refused_at_the_superblock() {
    let files = [
        "io/keras/seq_gru.h5",
        "io/keras/bidir.h5",
        "io/keras/tf2_style.h5",
        "io/keras/seq_gru.weights.h5",
        "io/h5/misc_earliest.h5",
        "io/h5/misc_latest.h5",
    ];
    for file in files {
        let orig = std::fs::read(fixture(file)).unwrap();
        let n = orig.len();
        H5File::from_bytes(orig.clone(), file).unwrap();
        for cut in [1, 2, 7, 100, n / 3, n - 200] {
            let bytes = orig[..n - cut].to_vec();
            let e = H5File::from_bytes(bytes, file).unwrap_err().to_string();
            for want in [
                file.to_string(),
                "superblock".into(),
                format!("{n} bytes"),
                format!("has {} bytes", n - cut),
            ] {
                assert!(
                    e.contains(&want),
                    "{file} cut by {cut}: `{e}` lacks `{want}`"
                );
            }
        }
        // The model loader says the same for a legacy .h5 model.
        if file.starts_with("io/keras/") && !file.contains("weights") {
            let e = load_keras_bytes(orig[..n - 1].to_vec(), file)
                .unwrap_err()
                .to_string();
            assert!(e.contains("superblock") && e.contains("truncated"), "{e}");
        }
        // Extra bytes after the recorded end are harmless, as for the HDF5 library.
        let mut longer = orig.clone();
        longer.extend_from_slice(&[0; 16]);
        H5File::from_bytes(longer, file).unwrap();
    }
}

// ---------------------------------------------------------------- safetensors

/// A safetensors file from a header text and a data section.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Safetensors written by grucell: a few tensors, and the weights of a real Keras model.
fn safetensors_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let a: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 1.0).collect();
    let b = [3.5f32];
    let p = dir.join("small.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(
        &p,
        &[
            ("gru/kernel".into(), vec![2, 12], &a[..]),
            ("gru/bias".into(), vec![], &b[..]),
            ("empty".into(), vec![0, 3], &[][..]),
        ],
        Some(meta),
    )
    .unwrap();
    out.push(("small.safetensors".into(), std::fs::read(&p).unwrap()));
    let model =
        grucell::io::keras::load::load_model::<f32>(&fixture("io/keras/bidir.keras")).unwrap();
    let p = dir.join("bidir.safetensors");
    grucell::io::keras::write::save_safetensors_model(&model, &p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert!(load_safetensors(&p).unwrap().len() >= 6);
    out.push(("bidir.safetensors".into(), bytes));
    out
}

#[test]
fn safetensors_loader_survives_mutations() {
    let dir = temp_dir("st");
    let mut rng = Rng(0x5eed_0000_0000_0001);
    let mut h = Harness::new("safetensors");
    for (name, orig) in safetensors_corpus(&dir) {
        let header_len = u64::from_le_bytes(orig[..8].try_into().unwrap()) as usize;
        let mut cases = mutations(&orig, &mut rng, 800 * scale());
        // Mutations aimed at the header: bit flips and digit changes inside the JSON text.
        for i in 0..400 * scale() {
            let mut m = orig.clone();
            let p = 8 + rng.below(header_len);
            if i % 2 == 0 {
                m[p] ^= 1 << rng.below(8);
            } else {
                m[p] = *rng.pick(b"0123456789-,:[]{}\"e.");
            }
            cases.push((format!("header byte {p} (#{i})"), m));
        }
        // Absurd header length fields in front of the real header and data.
        for len in [
            u64::MAX,
            1 << 63,
            100_000_000_000_000_000,
            100_000_001,
            (orig.len() - 7) as u64,
            header_len as u64 + 1,
            header_len as u64 - 1,
            0,
            1,
        ] {
            let mut m = orig.clone();
            m[..8].copy_from_slice(&len.to_le_bytes());
            cases.push((format!("header length {len}"), m));
        }
        for (what, bytes) in cases {
            h.case(format!("{name}: {what}"), || {
                if let Ok((tensors, _)) = load_safetensors_bytes(&bytes, &name) {
                    for (_, t) in &tensors {
                        assert_eq!(t.len(), t.shape().iter().product::<usize>());
                    }
                }
                // As a model file (`grucell predict --model x.safetensors`).
                if let Ok(file) = load_keras_bytes(bytes.clone(), &name) {
                    build_and_run(&file);
                }
            });
        }
    }
    // The path-based loader, on a few variants written to disk.
    let orig = std::fs::read(dir.join("small.safetensors")).unwrap();
    for (i, (what, bytes)) in mutations(&orig, &mut rng, 40).into_iter().enumerate() {
        let p = dir.join(format!("m{i}.safetensors"));
        std::fs::write(&p, &bytes).unwrap();
        h.case(format!("file {what}"), || {
            let _ = load_safetensors(&p);
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    h.finish(2500);
}

/// Hand-made hostile headers: each is refused with a message naming the file and the part.
#[test]
fn safetensors_hostile_headers_are_refused() {
    let data = vec![0u8; 64];
    let e17 = "100000000000000000";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "at least 8"),
        (
            "length u64::MAX",
            st_bytes_len(u64::MAX, b"{}"),
            "header length 18446744073709551615",
        ),
        ("length 2^63", st_bytes_len(1 << 63, b"{}"), "does not fit"),
        (
            "length 10^17",
            st_bytes_len(100_000_000_000_000_000, b"{}"),
            "does not fit",
        ),
        (
            "length over the format limit",
            st_bytes_len(100_000_001, &[b' '; 16]),
            "format limit",
        ),
        ("header not JSON", st_bytes("not json", &data), "header"),
        ("header a list", st_bytes("[1, 2]", &data), "header"),
        (
            "offsets beyond the file",
            st_bytes(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1000000]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "offsets beyond u64",
            st_bytes(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,99999999999999999999]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "negative offset",
            st_bytes(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "end before start",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[0],"data_offsets":[16,8]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "overlapping ranges",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},"b":{"dtype":"F32","shape":[8],"data_offsets":[16,48]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "hole between ranges",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[32,48]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "data shorter than the ranges",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[32],"data_offsets":[0,128]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "10^17 elements",
            st_bytes(
                &format!(r#"{{"a":{{"dtype":"F32","shape":[{e17}],"data_offsets":[0,64]}}}}"#),
                &data,
            ),
            "header",
        ),
        (
            "element count overflows",
            st_bytes(
                r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "shape and bytes disagree",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "dtype I32",
            st_bytes(
                r#"{"a":{"dtype":"I32","shape":[16],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "dtype",
        ),
        (
            "dtype F16",
            st_bytes(
                r#"{"a":{"dtype":"F16","shape":[32],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "dtype",
        ),
        (
            "dtype BF16",
            st_bytes(
                r#"{"a":{"dtype":"BF16","shape":[32],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "dtype",
        ),
        (
            "dtype BOOL",
            st_bytes(
                r#"{"a":{"dtype":"BOOL","shape":[64],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "dtype",
        ),
        (
            "unknown dtype",
            st_bytes(
                r#"{"a":{"dtype":"F33","shape":[16],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "dtype F64 with F32 sizes",
            st_bytes(
                r#"{"a":{"dtype":"F64","shape":[16],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "metadata not strings",
            st_bytes(
                r#"{"__metadata__":{"a":1},"w":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}"#,
                &data,
            ),
            "header",
        ),
        (
            "deeply nested header",
            st_bytes(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)), &data),
            "header",
        ),
    ];
    for (what, bytes, want) in cases {
        let name = format!("{}.safetensors", what.replace(' ', "_"));
        let e = load_safetensors_bytes(&bytes, &name)
            .map(|_| ())
            .expect_err(what)
            .to_string();
        assert!(e.contains(&name), "{what}: `{e}` does not name the file");
        assert!(e.contains(want), "{what}: `{e}` lacks `{want}`");
    }
    // A valid one, for contrast: F64 data is read and rounded to f32.
    let d: Vec<u8> = [1.5f64, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let (t, _) = load_safetensors_bytes(
        &st_bytes(
            r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#,
            &d,
        ),
        "ok.safetensors",
    )
    .unwrap();
    assert_eq!(t[0].1.data(), &[1.5f32, -2.0]);
}

fn st_bytes_len(len: u64, rest: &[u8]) -> Vec<u8> {
    let mut v = len.to_le_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

// ---------------------------------------------------------------- CSV

/// Every way the forecaster reads a CSV: named column with dates, inferred column, no dates, a
/// missing column; an accepted series then goes through gap filling.
fn run_csv(bytes: &[u8]) {
    for (col, date) in [
        (Some("co2_ppm"), Some("date")),
        (None, Some("date")),
        (None, None),
        (Some("value"), None),
    ] {
        if let Ok(s) = parse_series(bytes, "m.csv", col, date) {
            assert_eq!(s.values.len(), s.len());
            if let Some(d) = &s.dates {
                assert_eq!(d.len(), s.len());
            }
            if let Ok((y, first, _)) = fill_gaps(&s.values) {
                assert!(first < s.len() && y.iter().all(|v| v.is_finite()));
            }
        }
    }
}

#[test]
fn csv_loader_survives_mutations() {
    let full = std::fs::read(root().join("data/co2_weekly_mauna_loa.csv")).unwrap();
    // A prefix of about 4 KB, cut at a line end.
    let cut = full[..4096].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let co2 = full[..cut].to_vec();
    let hand: Vec<(&str, Vec<u8>)> = vec![
        ("co2 prefix", co2.clone()),
        (
            "semicolons",
            b"date;value\n2001-01;1,5\n2001-02;2\n".to_vec(),
        ),
        (
            "tabs, CRLF, BOM",
            b"\xef\xbb\xbfdate\tvalue\r\n2001-01\t1\r\n2001-02\t\r\n".to_vec(),
        ),
        (
            "quoted",
            b"\"date\",\"value\"\n\"2001-01\",\"1\"\n\"2001-02\",\"x,y\"\n".to_vec(),
        ),
        (
            "ragged",
            b"date,value,extra\n2001-01\n2001-02,2,3,4,5\n,,\n".to_vec(),
        ),
    ];
    let mut rng = Rng(0xc5f0_0000_0000_0002);
    let mut h = Harness::new("csv");
    for (name, orig) in hand {
        let count = if name == "co2 prefix" { 700 } else { 120 };
        for (what, bytes) in mutations(&orig, &mut rng, count * scale()) {
            h.case(format!("{name}: {what}"), || run_csv(&bytes));
        }
    }
    for i in 0..200 * scale() {
        let len = rng.below(512);
        let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            // Mostly CSV-ish bytes.
            for b in &mut v {
                *b = *rng.pick(b"0123456789.,;\t\n\r\"-eE naN");
            }
        }
        h.case(format!("random {i}"), || run_csv(&v));
    }
    h.finish(1500);
}

/// Hand-made hostile CSVs: each is refused with a message naming the file and the part, or read
/// with the documented missing-value rules.
#[test]
fn csv_hostile_inputs_are_clear() {
    let err = |text: &[u8], col: Option<&str>| {
        parse_series(text, "h.csv", col, None)
            .map(|_| ())
            .expect_err(&String::from_utf8_lossy(text))
            .to_string()
    };
    let e = err(b"", Some("v"));
    assert!(e.contains("h.csv") && e.contains("empty"), "{e}");
    let e = err(b"\n\n\n", Some("v"));
    assert!(e.contains("h.csv") && e.contains("header"), "{e}");
    let e = err(b"v\n", Some("v"));
    assert!(e.contains("no numeric values"), "{e}");
    // Invalid UTF-8 in the header and in a row.
    let e = err(b"v\xff\xfe\n1\n", Some("v"));
    assert!(e.contains("h.csv") && e.contains("header"), "{e}");
    let e = err(b"v\n1\n\xff\xfe\n", Some("v"));
    assert!(e.contains("h.csv") && e.contains("rows"), "{e}");
    // Text, and numbers too large for a float, are errors naming the row and the cell.
    let e = err(b"v\n1\nabc\n", Some("v"));
    assert!(e.contains("row 3") && e.contains("`abc`"), "{e}");
    for huge in ["1e400", "-1e999", "inf", "-Infinity"] {
        let e = err(format!("v\n1\n{huge}\n2\n").as_bytes(), Some("v"));
        assert!(
            e.contains("row 3") && e.contains(huge) && e.contains("finite"),
            "{huge}: {e}"
        );
    }
    // Large finite numbers and NaN markers are read as numbers and missing values.
    let s = parse_series(
        b"v\n1e300\nNaN\nnan\n-1.5e-300\nNA\n",
        "h.csv",
        Some("v"),
        None,
    )
    .unwrap();
    assert_eq!(
        s.values,
        vec![Some(1e300), None, None, Some(-1.5e-300), None]
    );
    // Ragged rows: a short row's missing cell is a missing value.
    let s = parse_series(b"d,v\n1,2\n3\n4,5,6\n", "h.csv", Some("v"), None).unwrap();
    assert_eq!(s.values, vec![Some(2.0), None, Some(5.0)]);
    // A missing column lists the available ones.
    let e = err(b"a,b\n1,2\n", Some("v"));
    assert!(e.contains("`v`") && e.contains("`a`, `b`"), "{e}");
    // A 1 MB field and 10 000 columns stay fast.
    let t = Instant::now();
    let mut big = b"v\n".to_vec();
    big.extend(std::iter::repeat_n(b'9', 1 << 20));
    let _ = parse_series(&big, "h.csv", Some("v"), None);
    let wide: String = (0..10_000).map(|i| format!("c{i},")).collect::<String>() + "\n";
    let _ = parse_series(wide.repeat(20).as_bytes(), "h.csv", None, None);
    assert!(t.elapsed().as_secs() < 20);
}

// ---------------------------------------------------------------- model config JSON

/// Models whose config and weights are mutated: Sequential and Functional, `.keras` and legacy
/// `.h5` (TF-Keras 2 node format included), GRU, RNN(GRUCell), stacked cells, Bidirectional,
/// masking, initial states, regularizers, Dense heads, float64, Conv1D and window pooling,
/// BatchNormalization, the noise layers, Permute and Reshape, the pointwise layers (ReLU, Rescaling,
/// …) and the step layers (ZeroPadding1D, Cropping1D, UpSampling1D), PReLU, Dot, RMSNormalization
/// and stateful Bidirectional and stacked layers.
const MODEL_FIXTURES: &[&str] = &[
    "io/keras/seq_gru.keras",
    "io/keras/bidir.keras",
    "io/keras/func_mask.keras",
    "io/keras/stacked.keras",
    "io/keras/trained.keras",
    "io/keras/seq_gru.h5",
    "io/keras/tf2_style.h5",
    "io/keras/bidir.h5",
    "io/keras/func_mask.h5",
    "models/mask_functional_init_state.keras",
    "models/rnn_stacked_cells_state.keras",
    "models/regularizers_constraints_dropout.keras",
    "models/dense_heads.keras",
    "models/f64_functional_mask_dense.keras",
    "models/stateful_stacked.h5",
    "models/conv_pooling_gru.keras",
    "models/conv1d_groups_channels_first.h5",
    "models/batch_norm.keras",
    "models/noise_permute_reshape.keras",
    "models/normalization.keras",
    "models/normalization.h5",
    "models/multi_head_attention.keras",
    "models/merge_masked_multiply.keras",
    "models/pointwise_layers.keras",
    "models/relu_variants.h5",
    "models/step_layers.keras",
    "models/prelu.h5",
    "models/dot_attention.keras",
    "models/rms_normalization.keras",
    "models/softmax_axes.keras",
    "models/legacy_h5_axes.h5",
    "models/td_prelu.h5",
    "fit/stateful_bidi_stacked.keras",
    "training/sparsemax_layers.keras",
];

/// Builds the model as `grucell predict` does and, when that works, runs what `predict` and
/// `inspect` run on a small input (skipped when the config asks for a large fixed shape).
fn build_and_run(file: &KerasFile) -> Stage {
    let Ok(mut model) = model_from_file::<f32>(file) else {
        return Stage::Refused;
    };
    let _ = model.output_shapes();
    let _ = model.summary();
    let _ = model.param_count();
    let shapes = model.input_shapes();
    if shapes
        .iter()
        .flatten()
        .any(|d| d.is_some_and(|d| d == 0 || d > 64))
    {
        return Stage::Built;
    }
    let inputs: Vec<Tensor<f32>> = shapes
        .iter()
        .map(|s| {
            let dims: Vec<usize> = s
                .iter()
                .enumerate()
                .map(|(i, d)| d.unwrap_or(if i == 0 { 2 } else { 3 }))
                .collect();
            let n = dims.iter().product::<usize>();
            Tensor::new(dims, (0..n).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect()).unwrap()
        })
        .collect();
    model.set_threads(1);
    let ok = model.predict(&inputs).is_ok();
    let _ = model.predict_stateful(&inputs);
    if ok {
        Stage::Predicted
    } else {
        Stage::Built
    }
}

/// How far a mutated model got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Refused,
    Built,
    Predicted,
}

/// All JSON pointers of `v` (escaped as RFC 6901 asks).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(c, format!("{at}/{key}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Values a hostile or broken writer could put anywhere.
fn hostile_value(rng: &mut Rng) -> Value {
    let choices = [
        json!(1e12),
        json!(1_000_000_000u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(0),
        json!(0.5),
        json!(4.0),
        json!(-0.0),
        json!(1e300),
        json!(65537),
        json!(9_007_199_254_740_993u64),
        json!(null),
        json!(true),
        json!(""),
        json!("x"),
        json!("NoSuchLayer"),
        json!("no_such_activation"),
        json!("GRU"),
        json!("Functional"),
        json!("__keras_tensor__"),
        json!("x".repeat(10_000)),
        json!([]),
        json!([null, null, null]),
        json!([1_000_000_000, 1_000_000_000, 1_000_000_000]),
        json!({}),
        json!({"class_name": "NoSuchLayer", "config": {}}),
        json!({"class_name": "GRU", "config": {"units": 1e12}}),
        json!([["no_such_layer", 0, 0]]),
        json!([["gru", 1_000_000_000u64, 7]]),
    ];
    rng.pick(&choices).clone()
}

/// Keys whose values matter most to the config-to-model path.
const TARGET_KEYS: &[&str] = &[
    "units",
    "class_name",
    "activation",
    "recurrent_activation",
    "batch_shape",
    "batch_input_shape",
    "build_input_shape",
    "use_bias",
    "reset_after",
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "merge_mode",
    "layer",
    "backward_layer",
    "cell",
    "cells",
    "layers",
    "inbound_nodes",
    "input_layers",
    "output_layers",
    "keras_history",
    "args",
    "kwargs",
    "mask_value",
    "axis",
    "rate",
    "name",
    "dtype",
    "kernel_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "l2",
    "max_value",
];

/// Applies one random structural mutation to `v`; returns what it did.
fn mutate_json(v: &mut Value, rng: &mut Rng) -> String {
    let mut ptrs = Vec::new();
    pointers(v, String::new(), &mut ptrs);
    let targeted = rng.below(3) != 0;
    let ptr = if targeted {
        let key = rng.pick(TARGET_KEYS);
        let hits: Vec<&String> = ptrs
            .iter()
            .filter(|p| p.rsplit('/').next() == Some(key))
            .collect();
        if hits.is_empty() {
            rng.pick(&ptrs).clone()
        } else {
            (*rng.pick(&hits)).clone()
        }
    } else {
        rng.pick(&ptrs).clone()
    };
    let (parent, last) = match ptr.rfind('/') {
        Some(i) => (ptr[..i].to_string(), ptr[i + 1..].to_string()),
        None => (String::new(), String::new()),
    };
    match rng.below(6) {
        0..=2 => {
            let new = hostile_value(rng);
            let shown = new.to_string();
            if let Some(slot) = v.pointer_mut(&ptr) {
                *slot = new;
            }
            format!("{ptr} = {}", &shown[..shown.len().min(40)])
        }
        3 => {
            // Delete the key or element.
            match v.pointer_mut(&parent) {
                Some(Value::Object(o)) => {
                    o.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
            format!("delete {ptr}")
        }
        4 => {
            // Duplicate an element (duplicate layers, nodes, cells) or swap two of them.
            if let Some(Value::Array(a)) = v.pointer_mut(&parent) {
                if let Ok(i) = last.parse::<usize>() {
                    if i < a.len() {
                        if rng.next() & 1 == 0 {
                            let c = a[i].clone();
                            a.push(c);
                        } else {
                            let j = rng.below(a.len());
                            a.swap(i, j);
                        }
                    }
                }
            }
            format!("duplicate or swap {ptr}")
        }
        _ => {
            // Change the type of a value but keep its content where possible.
            if let Some(slot) = v.pointer_mut(&ptr) {
                *slot = match slot.take() {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::String(s) => s.parse::<f64>().map_or(json!([s]), |f| json!(f)),
                    Value::Bool(b) => json!(if b { 1 } else { 0 }),
                    Value::Array(a) => a.into_iter().next().unwrap_or(Value::Null),
                    Value::Object(o) => Value::Array(o.into_iter().map(|(_, v)| v).collect()),
                    Value::Null => json!(0),
                };
            }
            format!("retype {ptr}")
        }
    }
}

/// Replaces one weight array with an array of the wrong rank or size, an empty one or NaNs,
/// or deletes it.
fn mutate_weights(w: &mut KerasWeights, rng: &mut Rng) -> String {
    let bad = |rng: &mut Rng, t: &Tensor<f64>| -> Tensor<f64> {
        match rng.below(6) {
            0 => Tensor::new(vec![], vec![1.0]).unwrap(),
            1 => Tensor::new(vec![0], vec![]).unwrap(),
            2 => {
                let mut s = t.shape().to_vec();
                s.push(1);
                Tensor::new(s, t.data().to_vec()).unwrap()
            }
            3 => {
                let n = t.len() + 1;
                Tensor::new(vec![n], vec![0.5; n]).unwrap()
            }
            4 => Tensor::new(t.shape().to_vec(), vec![f64::NAN; t.len()]).unwrap(),
            _ => {
                let mut s = t.shape().to_vec();
                s.reverse();
                Tensor::new(s, t.data().to_vec()).unwrap()
            }
        }
    };
    match w {
        KerasWeights::ByPath(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            if keys.is_empty() {
                return "no weights".into();
            }
            let k = rng.pick(&keys).clone();
            if rng.below(5) == 0 {
                map.remove(&k);
                format!("delete weight {k}")
            } else {
                let t = bad(rng, &map[&k]);
                let shape = t.shape().to_vec();
                map.insert(k.clone(), t);
                format!("weight {k} -> {shape:?}")
            }
        }
        KerasWeights::ByLayer { weights, .. } => {
            let layers: Vec<String> = weights
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            if layers.is_empty() {
                return "no weights".into();
            }
            let l = rng.pick(&layers).clone();
            let arrays = weights.get_mut(&l).unwrap();
            let i = rng.below(arrays.len());
            if rng.below(5) == 0 {
                arrays.remove(i);
                format!("delete weight {l}[{i}]")
            } else {
                let t = bad(rng, &arrays[i].1);
                let shape = t.shape().to_vec();
                arrays[i].1 = t;
                format!("weight {l}[{i}] -> {shape:?}")
            }
        }
    }
}

#[test]
fn model_config_mutations_never_panic() {
    let mut rng = Rng(0xc0ff_ee00_0000_0003);
    let mut h = Harness::new("model config");
    let per_file = 150 * scale();
    let mut stages = BTreeMap::new();
    for rel in MODEL_FIXTURES {
        let orig = load_keras_file(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        // The unmodified file builds and runs.
        model_from_file::<f32>(&orig).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for i in 0..per_file {
            let mut f = orig.clone();
            let mut what = Vec::new();
            for _ in 0..1 + rng.below(3) {
                what.push(mutate_json(&mut f.model_config, &mut rng));
            }
            if i % 5 == 0 {
                what.push(mutate_weights(&mut f.weights, &mut rng));
            }
            h.case(format!("{rel} #{i}: {}", what.join("; ")), || {
                *stages.entry(build_and_run(&f)).or_insert(0) += 1;
            });
        }
    }
    eprintln!("model config: {stages:?}");
    // The mutations must reach the model, not just be refused at the top.
    assert!(stages.get(&Stage::Predicted).copied().unwrap_or(0) > per_file * 2);
    assert!(stages.get(&Stage::Refused).copied().unwrap_or(0) > per_file * 2);
    h.finish(2000);
}

/// Byte-level mutations of the config text (as stored in config.json or `/@model_config`).
#[test]
fn model_config_text_mutations_never_panic() {
    let mut rng = Rng(0x7e47_0000_0000_0004);
    let mut h = Harness::new("model config text");
    let mut parsed = 0;
    let mut stages = BTreeMap::new();
    for rel in &MODEL_FIXTURES[..9] {
        let orig = load_keras_file(&fixture(rel)).unwrap();
        let text = serde_json::to_vec(&orig.model_config).unwrap();
        for (what, bytes) in mutations(&text, &mut rng, 600 * scale()) {
            let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            parsed += 1;
            let mut f = orig.clone();
            f.model_config = config;
            h.case(format!("{rel}: {what}"), || {
                *stages.entry(build_and_run(&f)).or_insert(0) += 1;
            });
        }
    }
    eprintln!("model config text: {stages:?}");
    assert!(parsed > 500, "only {parsed} mutated texts parsed");
    h.finish(500);
}

/// Absurd or inconsistent sizes in a config are refused, by name, before anything is allocated
/// for them (the allocation watch would see a 10^12-unit kernel).
#[test]
fn absurd_units_are_refused_before_allocating() {
    let orig = load_keras_file(&fixture("io/keras/seq_gru.keras")).unwrap();
    let gru = orig.model_config["config"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["class_name"] == "GRU")
        .unwrap();
    let mut h = Harness::new("absurd units");
    let cases: Vec<(Value, &str)> = vec![
        (json!(1e12), "units"),
        (json!(1_000_000_000_000u64), "units"),
        (json!(1_000_000_000u64), "units"),
        (json!(u64::MAX), "units"),
        (json!(65_537), "units"),
        (json!(0), "units"),
        (json!(-4), "units"),
        (json!(4.5), "units"),
        (json!("4"), "units"),
        (json!(null), "units"),
        (json!(5), "kernel"), // consistent type, inconsistent with the weights (units 4)
        (json!(3), "kernel"),
    ];
    let mut messages = BTreeMap::new();
    for (units, want) in cases {
        let mut f = orig.clone();
        f.model_config["config"]["layers"][gru]["config"]["units"] = units.clone();
        h.case(format!("units = {units}"), || {
            let e = model_from_file::<f32>(&f)
                .map(|_| ())
                .expect_err("must be refused")
                .to_string();
            assert!(e.contains(want), "units = {units}: `{e}` lacks `{want}`");
            messages.insert(units.to_string(), e);
        });
    }
    // Input width and fixed timesteps that disagree with the weights or are absurd.
    for shape in [
        json!([null, 1_000_000_000_000u64, 3]),
        json!([null, 5, 1_000_000_000_000u64]),
        json!([null, 5, 7]),
        json!([null, 5]),
        json!([null, 5, 3, 2]),
        json!([]),
    ] {
        let mut f = orig.clone();
        f.model_config["config"]["layers"][0]["config"]["batch_shape"] = shape.clone();
        h.case(format!("batch_shape = {shape}"), || {
            if let Ok(m) = model_from_file::<f32>(&f) {
                let x = Tensor::new(vec![2, 5, 3], vec![0.1f32; 30]).unwrap();
                let _ = m.predict(&[x]);
            }
        });
    }
    h.finish(18);
    for (u, m) in &messages {
        eprintln!("units = {u}: {m}");
    }
}

/// Compiled metrics from hostile compile configs: every metric class grucell reads, with
/// absurd or mistyped settings, on models of several output shapes; `compiled_metrics` and one
/// evaluation with them must give errors or values, never a panic or a huge allocation.
#[test]
fn hostile_metric_configs_never_panic() {
    let mut rng = Rng(0x3e7c_0000_0000_0005);
    let mut h = Harness::new("metric configs");
    let mut computed = 0;
    let classes = [
        "AUC",
        "IoU",
        "MeanIoU",
        "BinaryIoU",
        "OneHotIoU",
        "OneHotMeanIoU",
        "F1Score",
        "FBetaScore",
        "R2Score",
        "PearsonCorrelation",
        "ConcordanceCorrelation",
        "Precision",
        "Recall",
        "TopKCategoricalAccuracy",
        "SparseTopKCategoricalAccuracy",
        "BinaryAccuracy",
        "CosineSimilarity",
        "BinaryCrossentropy",
        "SensitivityAtSpecificity",
        "PrecisionAtRecall",
    ];
    let keys = [
        "specificity",
        "recall",
        "class_id",
        "top_k",
        "num_thresholds",
        "multi_label",
        "num_classes",
        "target_class_ids",
        "ignore_class",
        "sparse_y_true",
        "sparse_y_pred",
        "threshold",
        "thresholds",
        "average",
        "beta",
        "k",
        "axis",
        "dtype",
        "class_aggregation",
        "num_regressors",
        "curve",
        "summation_method",
        "from_logits",
        "label_smoothing",
        "label_weights",
    ];
    let extra = [
        json!(1 << 20),
        json!(1 << 30),
        json!(1024),
        json!(1025),
        json!([0, 1, 2]),
        json!([255, 256]),
        json!([-1]),
        json!("macro"),
        json!("micro"),
        json!("float32"),
        json!("int64"),
        json!(f64::MIN_POSITIVE),
        json!(-0.5),
        json!([0.3, 2.0, -1.0]),
        json!([0.0, 0.0]),
        json!({"class_name": "__tensor__", "config": {"value": [2.0], "dtype": "float32"}}),
    ];
    for rel in [
        "fit/metrics_categorical.keras",
        "fit/metrics_sparse_seq.keras",
        "fit/metrics_regression.keras",
        "fit/multi_output_metrics_list.keras",
    ] {
        let file = load_keras_file(&fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut model = model_from_file::<f32>(&file).unwrap();
        model.set_threads(1);
        let inputs: Vec<Tensor<f32>> = model
            .input_shapes()
            .iter()
            .map(|s| {
                let dims: Vec<usize> = s
                    .iter()
                    .enumerate()
                    .map(|(i, d)| d.unwrap_or(if i == 0 { 3 } else { 4 }))
                    .collect();
                let n = dims.iter().product::<usize>();
                Tensor::new(dims, (0..n).map(|i| (i % 7) as f32 * 0.3 - 0.9).collect()).unwrap()
            })
            .collect();
        let outputs = model.predict(&inputs).unwrap();
        let loss = model.compiled_loss().unwrap().unwrap();
        for i in 0..150 * scale() {
            let mut metrics = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let mut cfg = serde_json::Map::new();
                for _ in 0..rng.below(4) {
                    let v = if rng.below(2) == 0 {
                        hostile_value(&mut rng)
                    } else {
                        rng.pick(&extra).clone()
                    };
                    cfg.insert((*rng.pick(&keys)).to_string(), v);
                }
                metrics.push(json!({"class_name": rng.pick(&classes), "config": cfg}));
            }
            let metrics = Value::Array(metrics);
            let config = if model.outputs.len() > 1 {
                json!({"loss": "mse", "metrics": [metrics.clone(), metrics.clone()], "weighted_metrics": [metrics.clone(), []]})
            } else {
                json!({"loss": "mse", "metrics": metrics.clone(), "weighted_metrics": metrics.clone()})
            };
            let mut m = model.clone();
            m.compile_config = Some(config);
            h.case(format!("{rel} #{i}: {metrics}"), || {
                let c = m.compiled_metrics();
                let w = Tensor::<f64>::new(vec![3], vec![1.0, 0.5, 2.0]).unwrap();
                for weights in [None, Some(&w)] {
                    let e = m.evaluate_with_metrics(
                        &inputs,
                        &outputs,
                        &loss,
                        2,
                        weights,
                        &c.metrics,
                        &c.weighted_metrics,
                    );
                    if e.is_ok_and(|e| e.metrics.len() > model.outputs.len()) {
                        computed += 1;
                    }
                }
            });
        }
    }
    eprintln!("metric configs: {computed} evaluations computed metrics");
    // The settings must reach the metrics, not just be refused when read.
    assert!(
        computed > 200,
        "only {computed} evaluations computed metrics"
    );
    h.finish(400);
}
