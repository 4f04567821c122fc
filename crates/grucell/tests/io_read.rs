//! Reading side of the file formats: .npy/.npz, HDF5, .keras and legacy .h5.
//!
//! Fixtures: tests/fixtures/io/ (tools/fixtures/io.py); the expected values come from numpy/h5py
//! (npy_expect.json, keras_expect.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use grucell::io::h5::H5File;
use grucell::io::keras::{load_keras_file, read_weights_file, KerasWeights};
use grucell::io::npy::{
    read_npy, read_npy_bytes, read_npz, read_npz_bytes, write_npy, write_npz, Array, ArrayRef,
};
use grucell::{FormatError, Tensor};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/io"
    ))
    .to_path_buf()
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shape_of(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

fn values_of(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap())
        .collect()
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("grucell-io-read-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dir_listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check_array(label: &str, a: &Array, shape: &[usize], dtype: &str, values: &[f64]) {
    assert_eq!(a.shape(), shape, "{label}: shape");
    assert_eq!(a.dtype(), dtype, "{label}: dtype");
    assert_eq!(a.len(), values.len(), "{label}: element count");
    match a {
        // serde_json's default float parsing may be off by one f64 ulp, so compare float32
        // arrays after rounding the expectation, and float64 arrays to 2 ulp.
        Array::F32(t) => {
            let want: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            assert_eq!(t.data(), want.as_slice(), "{label}: values");
        }
        Array::F64(t) => {
            for (i, (&g, &w)) in t.data().iter().zip(values).enumerate() {
                assert!(
                    (g - w).abs() <= 2.0 * f64::EPSILON * w.abs(),
                    "{label}[{i}]: {g} vs {w}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- npy / npz written by numpy

#[test]
fn numpy_written_npy_files() {
    let expect = json("npy_expect.json");
    let mut checked = 0;
    let mut rejected = 0;
    for (name, e) in expect.as_object().unwrap() {
        let Some(file) = e.get("file").and_then(Value::as_str) else {
            continue;
        };
        if !file.ends_with(".npy") {
            continue;
        }
        let path = fixtures().join(file);
        let got = read_npy(&path);
        if e.get("reject").is_some() {
            let err = got.expect_err(name).to_string();
            assert!(
                err.contains(&path.display().to_string()),
                "{name}: error must name the file: {err}"
            );
            assert!(
                err.contains("dtype") || err.contains("descr"),
                "{name}: error must say dtype: {err}"
            );
            rejected += 1;
        } else {
            let a = got.unwrap_or_else(|err| panic!("{name}: {err}"));
            check_array(
                name,
                &a,
                &shape_of(&e["shape"]),
                e["dtype"].as_str().unwrap(),
                &values_of(&e["values"]),
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 17 && rejected >= 6,
        "checked {checked}, rejected {rejected}"
    );
}

#[test]
fn numpy_specific_cases() {
    // Fortran order is transposed into row-major order: element [i][j] of a 3x4 array.
    let e = json("npy_expect.json");
    let f = read_npy(&fixtures().join("npy/f32_f_3x4.npy")).unwrap();
    assert_eq!(e["f32_f_3x4"]["fortran"], Value::Bool(true));
    let want = values_of(&e["f32_f_3x4"]["values"]);
    assert_eq!(f.to_f64().data()[4], want[4]); // row 1, column 0
                                               // Big endian is byte-swapped: same values as the little-endian copy.
    let le = read_npy(&fixtures().join("npy/f32_c_2x3.npy")).unwrap();
    let be = read_npy(&fixtures().join("npy/f32_be_2x3.npy")).unwrap();
    assert_eq!(le, be);
    // 0-d, empty, ints, bools.
    let s = read_npy(&fixtures().join("npy/f32_scalar.npy")).unwrap();
    assert_eq!(s, Array::F32(Tensor::new(vec![], vec![3.5]).unwrap()));
    let z = read_npy(&fixtures().join("npy/f32_empty_0x3.npy")).unwrap();
    assert_eq!((z.shape(), z.len()), (&[0usize, 3][..], 0));
    let i = read_npy(&fixtures().join("npy/i64_3.npy")).unwrap();
    assert_eq!(
        i,
        Array::F64(Tensor::new(vec![3], vec![-(2f64.powi(40)), 0.0, 2f64.powi(53)]).unwrap())
    );
    let b = read_npy(&fixtures().join("npy/bool_4.npy")).unwrap();
    assert_eq!(b.to_f64().data(), &[1.0, 0.0, 1.0, 1.0]);
    // Rejections name the dtype.
    let err = read_npy(&fixtures().join("npy/f16_2.npy"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("float16"), "{err}");
    let err = read_npy(&fixtures().join("npy/c64_2.npy"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("complex64"), "{err}");
    let err = read_npy(&fixtures().join("npy/obj_2.npy"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("object"), "{err}");
    let err = read_npy(&fixtures().join("npy/rec_2.npy"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("structured"), "{err}");
}

#[test]
fn numpy_written_npz_files() {
    let expect = json("npy_expect.json");
    for fname in ["stored.npz", "deflate.npz"] {
        let e = &expect[fname];
        let got = read_npz(&fixtures().join("npz").join(fname)).unwrap();
        let members = e["members"].as_array().unwrap();
        assert_eq!(got.len(), members.len(), "{fname}");
        for ((key, a), m) in got.iter().zip(members) {
            assert_eq!(key, m["key"].as_str().unwrap(), "{fname}: archive order");
            check_array(
                key,
                a,
                &shape_of(&m["shape"]),
                m["dtype"].as_str().unwrap(),
                &values_of(&m["values"]),
            );
        }
    }
}

// ---------------------------------------------------------------- npy / npz round trips

fn ramp<T: grucell::Float>(shape: &[usize]) -> Tensor<T> {
    let n: usize = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|i| T::of(i as f64 * 0.37 - 1.5)).collect(),
    )
    .unwrap()
}

#[test]
fn npy_round_trip_f32_f64_all_ranks() {
    let d = temp_dir("npy-rt");
    let shapes: [&[usize]; 7] = [&[], &[0], &[0, 3], &[5], &[2, 3], &[2, 3, 4], &[1, 1, 2, 1]];
    for (k, shape) in shapes.iter().enumerate() {
        let p32 = d.join(format!("a{k}_32.npy"));
        let t32 = ramp::<f32>(shape);
        write_npy(&p32, &t32).unwrap();
        assert_eq!(
            read_npy(&p32).unwrap(),
            Array::F32(t32.clone()),
            "f32 {shape:?}"
        );
        let p64 = d.join(format!("a{k}_64.npy"));
        let t64 = ramp::<f64>(shape);
        write_npy(&p64, &t64).unwrap();
        assert_eq!(read_npy(&p64).unwrap(), Array::F64(t64), "f64 {shape:?}");
    }
    // Exactly the written files, no temporaries left behind.
    let listing = dir_listing(&d);
    assert_eq!(listing.len(), 2 * shapes.len(), "{listing:?}");
    assert!(
        listing
            .iter()
            .all(|n| n.ends_with(".npy") && !n.starts_with('.')),
        "{listing:?}"
    );
    // Overwrite in place.
    let p = d.join("a3_32.npy");
    let t = Tensor::<f32>::new(vec![2], vec![9.0, -9.0]).unwrap();
    write_npy(&p, &t).unwrap();
    assert_eq!(read_npy(&p).unwrap(), Array::F32(t));
    assert_eq!(dir_listing(&d).len(), 2 * shapes.len());
    // Special values survive.
    let special = Tensor::<f32>::new(
        vec![4],
        vec![f32::INFINITY, -0.0, f32::MIN_POSITIVE, f32::MAX],
    )
    .unwrap();
    write_npy(&p, &special).unwrap();
    let back = read_npy(&p).unwrap().to_f32();
    assert_eq!(back.data()[0], f32::INFINITY);
    assert!(back.data()[1] == 0.0 && back.data()[1].is_sign_negative());
    assert_eq!(&back.data()[2..], &[f32::MIN_POSITIVE, f32::MAX]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn npz_round_trip_keeps_order_and_types() {
    let d = temp_dir("npz-rt");
    let a = ramp::<f32>(&[3, 6]);
    let b = ramp::<f64>(&[6]);
    let c = ramp::<f32>(&[]);
    let e = ramp::<f64>(&[0, 2]);
    let arrays: Vec<(String, ArrayRef)> = vec![
        ("zeta".into(), (&a).into()),
        ("alpha".into(), (&b).into()),
        ("nested/name".into(), (&c).into()),
        ("empty".into(), (&e).into()),
    ];
    let p = d.join("x.npz");
    write_npz(&p, &arrays).unwrap();
    let back = read_npz(&p).unwrap();
    let keys: Vec<&str> = back.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["zeta", "alpha", "nested/name", "empty"]);
    assert_eq!(back[0].1, Array::F32(a));
    assert_eq!(back[1].1, Array::F64(b));
    assert_eq!(back[2].1, Array::F32(c));
    assert_eq!(back[3].1, Array::F64(e));
    assert_eq!(dir_listing(&d), ["x.npz"]);
    // Bad keys are refused before anything is written.
    let t = ramp::<f32>(&[1]);
    let dup: Vec<(String, ArrayRef)> = vec![("k".into(), (&t).into()), ("k".into(), (&t).into())];
    let err = write_npz(&d.join("dup.npz"), &dup).unwrap_err().to_string();
    assert!(err.contains("duplicate"), "{err}");
    let empty: Vec<(String, ArrayRef)> = vec![(String::new(), (&t).into())];
    assert!(write_npz(&d.join("e.npz"), &empty).is_err());
    assert_eq!(dir_listing(&d), ["x.npz"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn failed_write_leaves_nothing() {
    let d = temp_dir("npy-fail");
    let t = ramp::<f32>(&[2]);
    let err = write_npy(&d.join("missing_dir").join("x.npy"), &t).unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing_dir"), "{err}");
    assert!(dir_listing(&d).is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

fn npy_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    while !(10 + h.len() + 1).is_multiple_of(16) {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn npy_malformed_inputs_are_clear_errors() {
    let ok = npy_with_header(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        &[0; 8],
    );
    assert_eq!(read_npy_bytes(&ok, "ok.npy").unwrap().shape(), &[2]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", b"\x93NUMPZ\x01\x00".to_vec(), "magic"),
        ("version", b"\x93NUMPY\x07\x00\x00\x00".to_vec(), "version"),
        ("truncated header", ok[..20].to_vec(), "truncated"),
        (
            "short data",
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &[0; 8]),
            "needs 12 bytes",
        ),
        (
            "long data",
            npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", &[0; 8]),
            "needs 4 bytes",
        ),
        (
            "overflowing shape",
            npy_with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
                &[],
            ),
            "more than",
        ),
        (
            "huge shape",
            npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }", &[0; 16]),
            "more than",
        ),
        (
            "nesting",
            npy_with_header(&format!("{{'descr': {}'<f4'{}, 'shape': (1,)}}", "(".repeat(40), ")".repeat(40)), &[]),
            "nested",
        ),
        ("no shape", npy_with_header("{'descr': '<f4', 'fortran_order': False}", &[]), "shape"),
        (
            "bad bool",
            npy_with_header("{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }", &[7]),
            "decode",
        ),
    ];
    for (what, bytes, needle) in cases {
        let err = read_npy_bytes(&bytes, "bad.npy")
            .expect_err(what)
            .to_string();
        assert!(err.starts_with("bad.npy: "), "{what}: {err}");
        assert!(err.contains(needle), "{what}: expected {needle:?} in {err}");
    }
    // A header over the limit (version 2 allows 4 GiB headers).
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&(1u32 << 30).to_le_bytes());
    let err = read_npy_bytes(&v2, "big.npy").unwrap_err().to_string();
    assert!(err.contains("at most"), "{err}");
}

#[test]
fn npz_bombs_and_bad_archives_are_refused() {
    // A valid npz whose entry declares a size far beyond the archive: patch the sizes in the
    // local header and central directory.
    let d = temp_dir("npz-bomb");
    let p = d.join("b.npz");
    let t = ramp::<f32>(&[4]);
    write_npz(&p, &[("a".into(), (&t).into())]).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    // local header: uncompressed size at offset 22; central directory entry: find "PK\x01\x02".
    bytes[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
    let cd = (0..n - 4)
        .find(|&i| &bytes[i..i + 4] == b"PK\x01\x02")
        .unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read_npz_bytes(&bytes, "bomb.npz").unwrap_err().to_string();
    assert!(err.starts_with("bomb.npz"), "{err}");
    assert!(err.contains("a.npy"), "{err}");
    let err = read_npz_bytes(b"PK\x03\x04 definitely not a zip", "junk.npz")
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.npz") && err.contains("zip"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------- HDF5 wrapper

#[test]
fn h5_wrapper_reads_legacy_layout() {
    let f = H5File::open(&fixtures().join("keras/seq_gru.h5")).unwrap();
    assert!(f
        .attr_string("", "model_config")
        .unwrap()
        .unwrap()
        .starts_with("{\"class_name\": \"Sequential\""));
    assert_eq!(
        f.attr_string("/", "keras_version").unwrap().as_deref(),
        Some("3.15.1")
    );
    assert_eq!(
        f.attr_strings("model_weights", "layer_names")
            .unwrap()
            .unwrap(),
        ["g", "d"]
    );
    // Keras writes an empty float64 array here.
    assert_eq!(
        f.attr_strings("model_weights/top_level_model_weights", "weight_names")
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(f.attr_strings("model_weights", "nope").unwrap(), None);
    let mut groups = f.group_names("model_weights").unwrap();
    groups.sort();
    assert_eq!(groups, ["d", "g", "top_level_model_weights"]);
    assert!(f.exists("model_weights/g/seqm/g/gru_cell/kernel"));
    assert!(f.is_dataset("model_weights/g/seqm/g/gru_cell/kernel"));
    assert!(f.is_group("/model_weights/g/"));
    assert!(!f.exists("model_weights/zzz"));
    let mut ds = f.dataset_names("model_weights/g/seqm/g/gru_cell").unwrap();
    ds.sort();
    assert_eq!(ds, ["bias", "kernel", "recurrent_kernel"]);
    assert_eq!(
        f.dataset_shape("model_weights/g/seqm/g/gru_cell/kernel")
            .unwrap(),
        [3, 12]
    );
    assert_eq!(
        f.dataset_dtype("model_weights/g/seqm/g/gru_cell/kernel")
            .unwrap(),
        "float32"
    );
    let k = f
        .read_f64("model_weights/g/seqm/g/gru_cell/kernel")
        .unwrap();
    assert_eq!(k.shape(), [3, 12]);
    let k32 = f
        .read_f32("model_weights/g/seqm/g/gru_cell/kernel")
        .unwrap();
    assert_eq!(k32.cast::<f64>(), k);
    // Errors name the file and the dataset / attribute.
    let err = f.read_f64("model_weights/g").unwrap_err().to_string();
    assert!(
        err.contains("seq_gru.h5") && err.contains("model_weights/g") && err.contains("group"),
        "{err}"
    );
    let err = f
        .read_f64("model_weights/g/seqm/g/gru_cell/nope")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_weights/g/seqm/g/gru_cell/nope"),
        "{err}"
    );
    let err = f
        .attr_string("model_weights", "layer_names")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_weights@layer_names") && err.contains("expected one"),
        "{err}"
    );
    let err = H5File::from_bytes(b"nope".to_vec(), "mem.h5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mem.h5"), "{err}");
}

#[test]
fn h5_reads_integer_and_scalar_datasets() {
    let f = H5File::open(&fixtures().join("keras/trained.h5")).unwrap();
    let it = f.read_f64("optimizer_weights/adam/iteration").unwrap();
    assert_eq!(
        f.dataset_dtype("optimizer_weights/adam/iteration").unwrap(),
        "int64"
    );
    assert_eq!((it.shape(), it.data()), (&[][..], &[2.0][..])); // 8 samples, batch 4, 1 epoch
    let all = f.datasets_under("optimizer_weights").unwrap();
    assert_eq!(all.len(), 12);
    assert!(
        all.iter().all(|p| p.starts_with("optimizer_weights/adam/")),
        "{all:?}"
    );
}

#[test]
fn h5_dtypes_layouts_and_string_attributes() {
    let expect = json("h5_expect.json");
    for libver in ["earliest", "latest"] {
        let fname = format!("misc_{libver}.h5");
        let f = H5File::open(&fixtures().join("h5").join(&fname)).unwrap();
        for (p, d) in expect[&fname]["datasets"].as_object().unwrap() {
            let t = f.read_f64(p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.shape(), shape_of(&d["shape"]).as_slice(), "{fname}:{p}");
            let want = values_of(&d["values"]);
            for (i, (&g, &w)) in t.data().iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2.0 * f64::EPSILON * w.abs(),
                    "{fname}:{p}[{i}]: {g} vs {w}"
                );
            }
            assert_eq!(t.len(), want.len(), "{fname}:{p}");
        }
        assert_eq!(
            f.read_f64("data/f16").unwrap().data(),
            &[1.0, -2.5, 65504.0, 2f64.powi(-24)]
        );
        assert_eq!(f.dataset_dtype("data/f16").unwrap(), "float16");
        assert_eq!(
            f.dataset_shape("data/i64_scalar").unwrap(),
            Vec::<usize>::new()
        );
        let err = f.read_f64("data/strings").unwrap_err().to_string();
        assert!(
            err.contains("data/strings") && err.contains("string"),
            "{err}"
        );
        // 40 children: dense link storage with libver latest; listing order is not creation order
        // there, so sort.
        let mut names = f.dataset_names("many").unwrap();
        names.sort();
        assert_eq!(names.len(), 40);
        assert_eq!(names[39], "d39");
        assert_eq!(f.read_f64("many/d07").unwrap().data(), &[7.0, 7.0]);
        let all = f.datasets_under("").unwrap();
        assert_eq!(all.len(), 9 + 40, "{fname}: {all:?}");
        // String attributes of every kind.
        assert_eq!(
            f.attr_string("data", "vlen_str").unwrap().as_deref(),
            Some("héllo")
        );
        assert_eq!(
            f.attr_string("data", "fixed_bytes").unwrap().as_deref(),
            Some("fixed")
        );
        assert_eq!(
            f.attr_strings("data", "fixed_array").unwrap().unwrap(),
            ["x", "yy", "zzz"]
        );
        assert_eq!(
            f.attr_strings("data", "vlen_array").unwrap().unwrap(),
            ["p", "qq"]
        );
        assert_eq!(f.attr_strings("data", "empty_f64").unwrap(), Some(vec![]));
        assert_eq!(f.attr_f64("data", "number").unwrap(), Some(2.5));
        let err = f.attr_strings("data", "int_array").unwrap_err().to_string();
        assert!(
            err.contains("data@int_array") && err.contains("expected strings"),
            "{err}"
        );
        let mut attrs = f.attr_names("data").unwrap();
        attrs.sort();
        assert_eq!(attrs.len(), 7);
    }
}

// ---------------------------------------------------------------- Keras files

fn expect_keras() -> BTreeMap<String, Value> {
    json("keras_expect.json")
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .collect()
}

fn check_tensor(label: &str, t: &Tensor<f64>, d: &Value) {
    assert_eq!(
        t.shape(),
        shape_of(&d["shape"]).as_slice(),
        "{label}: shape"
    );
    let sum: f64 = t.data().iter().sum();
    let want = d["sum"].as_f64().unwrap();
    assert!(
        (sum - want).abs() <= 1e-6 * (1.0 + want.abs()),
        "{label}: sum {sum} vs {want}"
    );
    if let Some(first) = d["first"].as_f64() {
        // float32 weights; see check_array about serde_json's float parsing.
        assert_eq!(t.data()[0] as f32, first as f32, "{label}: first element");
    }
}

#[test]
fn keras_and_legacy_h5_files_match_h5py() {
    let mut n = 0;
    for (fname, e) in expect_keras() {
        let path = fixtures().join("keras").join(&fname);
        let kind = e["kind"].as_str().unwrap();
        let datasets = e["datasets"].as_object().unwrap();
        match kind {
            "keras" => {
                let f = load_keras_file(&path).unwrap_or_else(|err| panic!("{fname}: {err}"));
                assert_eq!(f.model_config["class_name"], e["class_name"], "{fname}");
                assert!(
                    f.model_config.get("compile_config").is_none(),
                    "{fname}: compile_config moved out"
                );
                assert_eq!(
                    f.compile_config.is_some(),
                    e["has_compile_config"].as_bool().unwrap(),
                    "{fname}"
                );
                assert_eq!(
                    f.keras_version.as_deref(),
                    e["keras_version"].as_str(),
                    "{fname}"
                );
                assert_eq!(f.path, path.display().to_string());
                let names: Vec<&str> = f.model_config["config"]["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["config"]["name"].as_str().unwrap())
                    .collect();
                let want: Vec<&str> = e["layer_names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(names, want, "{fname}");
                let KerasWeights::ByPath(w) = &f.weights else {
                    panic!("{fname}: expected ByPath")
                };
                let got: Vec<&String> = w.keys().collect();
                let want: Vec<&String> = datasets.keys().collect();
                assert_eq!(got, want, "{fname}: dataset paths");
                for (p, d) in datasets {
                    check_tensor(&format!("{fname}:{p}"), &w[p], d);
                }
            }
            "legacy_h5" => {
                let f = load_keras_file(&path).unwrap_or_else(|err| panic!("{fname}: {err}"));
                assert_eq!(f.model_config["class_name"], e["class_name"], "{fname}");
                assert_eq!(
                    f.keras_version.as_deref(),
                    e["keras_version"].as_str(),
                    "{fname}"
                );
                assert_eq!(
                    f.compile_config.is_some(),
                    e["has_training_config"].as_bool().unwrap(),
                    "{fname}"
                );
                let KerasWeights::ByLayer {
                    layer_names,
                    weights,
                } = &f.weights
                else {
                    panic!("{fname}: expected ByLayer")
                };
                let want: Vec<&str> = e["layer_names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(layer_names, &want, "{fname}");
                assert_eq!(weights.len(), layer_names.len(), "{fname}");
                let mut total = 0;
                for l in layer_names {
                    let wn: Vec<&str> = e["weight_names"][l]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    let got: Vec<&str> = weights[l].iter().map(|(n, _)| n.as_str()).collect();
                    assert_eq!(got, wn, "{fname}: {l} weight order");
                    for (wname, t) in &weights[l] {
                        let key = format!("model_weights/{l}/{wname}");
                        check_tensor(&format!("{fname}:{key}"), t, &datasets[&key]);
                        total += 1;
                    }
                }
                let model_ds = datasets
                    .keys()
                    .filter(|k| k.starts_with("model_weights/"))
                    .count();
                assert_eq!(total, model_ds, "{fname}: every model weight read");
            }
            "weights_h5" => {
                let KerasWeights::ByPath(w) = read_weights_file(&path).unwrap() else {
                    panic!("{fname}")
                };
                assert_eq!(w.len(), datasets.len());
                for (p, d) in datasets {
                    check_tensor(&format!("{fname}:{p}"), &w[p], d);
                }
            }
            other => panic!("unknown kind {other}"),
        }
        n += 1;
    }
    assert!(n >= 13, "only {n} Keras fixtures");
}

#[test]
fn keras_configs_and_details() {
    let k = fixtures().join("keras");
    // Functional with Masking: op layers in the config, compile_config present.
    let f = load_keras_file(&k.join("func_mask.keras")).unwrap();
    assert_eq!(f.model_config["class_name"], "Functional");
    assert_eq!(
        f.model_config["config"]["layers"][1]["class_name"],
        "NotEqual"
    );
    // Trained: optimizer in compile_config and its variables by path (iteration is an int64).
    let f = load_keras_file(&k.join("trained.keras")).unwrap();
    assert_eq!(
        f.compile_config.as_ref().unwrap()["optimizer"]["class_name"],
        "Adam"
    );
    let KerasWeights::ByPath(w) = &f.weights else {
        panic!()
    };
    assert_eq!(w["optimizer/vars/0"].data(), &[2.0]);
    assert_eq!(w["layers/gru/cell/vars/2"].shape(), [2, 12]);
    assert_eq!(f.weights.num_arrays(), 17);
    // Legacy: training_config becomes compile_config.
    let f = load_keras_file(&k.join("trained.h5")).unwrap();
    assert_eq!(f.compile_config.as_ref().unwrap()["loss"], "mse");
    assert_eq!(f.weights.num_arrays(), 5);
    // TF-Keras 2 style: bytes attributes, ":0" names, nested datasets.
    let f = load_keras_file(&k.join("tf2_style.h5")).unwrap();
    assert_eq!(f.keras_version.as_deref(), Some("2.15.0"));
    let KerasWeights::ByLayer {
        layer_names,
        weights,
    } = &f.weights
    else {
        panic!()
    };
    assert_eq!(layer_names, &["gru", "dense"]);
    assert_eq!(weights["gru"][1].0, "gru/gru_cell/recurrent_kernel:0");
    assert_eq!(weights["gru"][1].1.shape(), [4, 12]);
    // Functional legacy: layers without weights are listed with empty lists.
    let f = load_keras_file(&k.join("func_mask.h5")).unwrap();
    let KerasWeights::ByLayer { weights, .. } = &f.weights else {
        panic!()
    };
    assert!(weights["inp"].is_empty() && weights["mask"].is_empty());
    // Same weights through both formats.
    let a = load_keras_file(&k.join("seq_gru.keras")).unwrap();
    let b = load_keras_file(&k.join("seq_gru_deflate.keras")).unwrap();
    assert_eq!(a.weights, b.weights);
    assert_eq!(a.model_config, b.model_config);
}

#[test]
fn keras_dispatch_is_by_content() {
    let d = temp_dir("dispatch");
    let k = fixtures().join("keras");
    std::fs::copy(k.join("seq_gru.keras"), d.join("looks_legacy.h5")).unwrap();
    std::fs::copy(k.join("seq_gru.h5"), d.join("looks_new.keras")).unwrap();
    assert!(matches!(
        load_keras_file(&d.join("looks_legacy.h5")).unwrap().weights,
        KerasWeights::ByPath(_)
    ));
    assert!(matches!(
        load_keras_file(&d.join("looks_new.keras")).unwrap().weights,
        KerasWeights::ByLayer { .. }
    ));
    std::fs::write(d.join("junk.keras"), b"{\"class_name\": 1}").unwrap();
    let err = load_keras_file(&d.join("junk.keras"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.keras") && err.contains("neither"),
        "{err}"
    );
    let err = load_keras_file(&d.join("absent.keras")).unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }));
    // A weights-only file is not a model file, and says so.
    let err = load_keras_file(&k.join("seq_gru.weights.h5"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_config") && err.contains("read_weights_file"),
        "{err}"
    );
    // An npz is a zip but not a Keras archive.
    let err = load_keras_file(&fixtures().join("npz/stored.npz"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    // read_weights_file also takes a full legacy model or a .keras archive.
    assert!(matches!(
        read_weights_file(&k.join("seq_gru.h5")).unwrap(),
        KerasWeights::ByLayer { .. }
    ));
    assert_eq!(
        read_weights_file(&k.join("seq_gru.keras"))
            .unwrap()
            .num_arrays(),
        5
    );
    let err = read_weights_file(&fixtures().join("npy/f32_c_2x3.npy"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("f32_c_2x3.npy") && err.contains("neither"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Full-model fixtures from the `models` group, when present: every file loads.
#[test]
fn model_fixtures_load_when_present() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models"
    ));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".weights.h5") {
            read_weights_file(&p).unwrap_or_else(|err| panic!("{err}"));
        } else if name.ends_with(".keras") || name.ends_with(".h5") {
            let f = load_keras_file(&p).unwrap_or_else(|err| panic!("{err}"));
            assert!(
                f.weights.num_arrays() > 0 || name.contains("empty"),
                "{name}: no weights"
            );
        } else if name.ends_with(".npz") {
            read_npz(&p).unwrap_or_else(|err| panic!("{err}"));
        }
    }
}

// The mutation tests (truncation, bit flips, random bytes) of every loader: tests/fuzz_loaders.rs.
