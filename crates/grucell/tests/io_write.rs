//! Write side of the file formats: `model.weights.h5`, the `.keras` archive, atomic writes and
//! safetensors.
//!
//! The Keras fixtures (tests/fixtures/io_write/, from tools/fixtures/io_write.py) are read raw
//! with `zip` + `hdf5-reader`, rewritten with grucell's writers and compared with the original.
//! To also have Keras load the rewritten files:
//!
//! ```text
//! GRUCELL_IO_WRITE_OUT=/tmp/iow cargo test -p grucell --test io_write
//! python tools/check_saved_keras.py /tmp/iow/seq_fit.keras /tmp/iow/func.keras \
//!     --npz tests/fixtures/io_write/seq_fit.npz --npz tests/fixtures/io_write/func.npz \
//!     --reference tests/fixtures/io_write/seq_fit.keras --reference tests/fixtures/io_write/func.keras --exact
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use grucell::io::atomic::atomic_write;
use grucell::io::keras::save::{
    write_keras_archive, write_weights_h5, write_weights_h5_with_ints, IntWeightEntry, VarsGroup,
    WeightEntry, KERAS_VERSION,
};
use grucell::io::safetensors::{
    load_safetensors, load_safetensors_with_metadata, save_safetensors,
};
use grucell::FormatError;
use hdf5_reader::group::Group;
use hdf5_reader::{Datatype, Hdf5File};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/io_write");

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("grucell_io_write_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dir_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A dataset as read back: dtype tag, shape, values as f64 (exact for f32 and these i64).
#[derive(Debug, PartialEq)]
struct Ds {
    dtype: &'static str,
    shape: Vec<u64>,
    values: Vec<f64>,
    contiguous: bool,
}

/// Everything Keras' loader depends on: `vars` groups with their `name`, and datasets.
#[derive(Debug, Default, PartialEq)]
struct H5Tree {
    names: BTreeMap<String, String>,
    datasets: BTreeMap<String, Ds>,
    groups: Vec<String>,
}

fn walk(g: &Group, prefix: &str, t: &mut H5Tree) {
    let (groups, datasets) = g.members().unwrap();
    for sub in groups {
        let path = if prefix.is_empty() {
            sub.name().to_string()
        } else {
            format!("{prefix}/{}", sub.name())
        };
        if let Ok(a) = sub.attribute("name") {
            t.names.insert(path.clone(), a.read_string().unwrap());
        }
        t.groups.push(path.clone());
        walk(&sub, &path, t);
    }
    for d in datasets {
        let path = format!("{prefix}/{}", d.name());
        let n = d.num_elements().unwrap() as usize;
        let (dtype, values) = match d.dtype() {
            Datatype::FloatingPoint { size: 4, .. } => {
                let mut v = vec![0f32; n];
                d.read_into(&mut v).unwrap();
                ("f32", v.into_iter().map(f64::from).collect())
            }
            Datatype::FixedPoint {
                size: 8,
                signed: true,
                ..
            } => {
                let mut v = vec![0i64; n];
                d.read_into(&mut v).unwrap();
                ("i64", v.into_iter().map(|x| x as f64).collect())
            }
            other => panic!("{path}: unexpected dtype {other:?}"),
        };
        let ds = Ds {
            dtype,
            shape: d.shape().to_vec(),
            values,
            contiguous: d.chunks().is_none(),
        };
        t.datasets.insert(path, ds);
    }
}

fn read_tree(bytes: &[u8]) -> H5Tree {
    let f = Hdf5File::from_bytes(bytes).unwrap();
    let mut t = H5Tree::default();
    walk(&f.root_group().unwrap(), "", &mut t);
    t.groups.sort();
    t
}

fn read_zip(path: &Path) -> Vec<(String, zip::CompressionMethod, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (e.name().unwrap().to_string(), e.compression(), b)
        })
        .collect()
}

fn entry<'a>(z: &'a [(String, zip::CompressionMethod, Vec<u8>)], name: &str) -> &'a [u8] {
    &z.iter().find(|e| e.0 == name).unwrap().2
}

/// Rebuilds the writer's inputs from a Keras-written model.weights.h5.
struct Inputs {
    groups: Vec<VarsGroup>,
    f32s: Vec<(String, usize, Vec<usize>, Vec<f32>)>,
    i64s: Vec<(String, usize, Vec<usize>, Vec<i64>)>,
}

fn inputs_from(tree: &H5Tree) -> Inputs {
    let groups = tree
        .names
        .iter()
        .map(|(p, n)| VarsGroup::new(p.clone(), n.clone()))
        .collect();
    let (mut f32s, mut i64s) = (Vec::new(), Vec::new());
    for (path, d) in &tree.datasets {
        let (group, idx) = path.rsplit_once('/').unwrap();
        let idx: usize = idx.parse().unwrap();
        let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
        match d.dtype {
            "f32" => f32s.push((
                group.to_string(),
                idx,
                shape,
                d.values.iter().map(|&x| x as f32).collect(),
            )),
            _ => i64s.push((
                group.to_string(),
                idx,
                shape,
                d.values.iter().map(|&x| x as i64).collect(),
            )),
        }
    }
    Inputs { groups, f32s, i64s }
}

fn rewrite_fixture(name: &str) {
    let src = Path::new(FIXTURES).join(format!("{name}.keras"));
    let orig = read_zip(&src);
    let config: serde_json::Value = serde_json::from_slice(entry(&orig, "config.json")).unwrap();
    let orig_tree = read_tree(entry(&orig, "model.weights.h5"));
    assert!(!orig_tree.datasets.is_empty() && orig_tree.names.contains_key("vars"));

    let inp = inputs_from(&orig_tree);
    let weights: Vec<WeightEntry> = inp
        .f32s
        .iter()
        .map(|(g, i, s, d)| WeightEntry {
            group: g.clone(),
            index: *i,
            shape: s.clone(),
            data: d,
        })
        .collect();
    let ints: Vec<IntWeightEntry> = inp
        .i64s
        .iter()
        .map(|(g, i, s, d)| IntWeightEntry {
            group: g.clone(),
            index: *i,
            shape: s.clone(),
            data: d,
        })
        .collect();
    let h5 = write_weights_h5_with_ints(&inp.groups, &weights, &ints).unwrap();

    // Kept for inspection only when asked for (GRUCELL_IO_WRITE_OUT); the scratch folder is
    // removed at the end.
    let (out_dir, keep) = match std::env::var_os("GRUCELL_IO_WRITE_OUT") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            (PathBuf::from(d), true)
        }
        None => (scratch(&format!("rewrite_{name}")), false),
    };
    let out = out_dir.join(format!("{name}.keras"));
    write_keras_archive(&out, &config, &h5).unwrap();

    // Same zip layout as Keras: entry order, STORED.
    let new = read_zip(&out);
    let names: Vec<&str> = new.iter().map(|e| e.0.as_str()).collect();
    let orig_names: Vec<&str> = orig.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, orig_names);
    assert_eq!(names, ["metadata.json", "config.json", "model.weights.h5"]);
    for (n, (_, c, _)) in names.iter().zip(&new) {
        assert_eq!(*c, zip::CompressionMethod::Stored, "{n}");
    }
    let back: serde_json::Value = serde_json::from_slice(entry(&new, "config.json")).unwrap();
    assert_eq!(back, config);

    // Same HDF5 content: groups, `name` attributes, dataset paths, dtypes, shapes, values.
    let new_tree = read_tree(entry(&new, "model.weights.h5"));
    assert_eq!(new_tree.names, orig_tree.names);
    assert_eq!(new_tree.groups, orig_tree.groups);
    assert_eq!(new_tree.datasets, orig_tree.datasets);
    assert!(new_tree.datasets.values().all(|d| d.contiguous));
    if !keep {
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}

#[test]
fn rewrite_keras_sequential_with_optimizer_state() {
    rewrite_fixture("seq_fit");
}

#[test]
fn rewrite_keras_functional() {
    rewrite_fixture("func");
}

#[test]
fn fixture_layout_is_what_the_writer_assumes() {
    // The facts the writer's docs state, checked on the Keras-written file.
    let z = read_zip(&Path::new(FIXTURES).join("seq_fit.keras"));
    let t = read_tree(entry(&z, "model.weights.h5"));
    assert_eq!(t.names["vars"], "seqm");
    assert_eq!(t.names["layers/masking/vars"], "masking");
    assert_eq!(t.names["layers/gru/cell/vars"], "gru_cell");
    assert_eq!(
        t.names["layers/rnn_1/cell/cells/gru_cell_1/vars"],
        "gru_cell_2"
    );
    assert_eq!(t.names["optimizer/vars"], "adam");
    let it = &t.datasets["optimizer/vars/0"];
    assert_eq!((it.dtype, it.shape.len(), it.values[0]), ("i64", 0, 1.0));
    assert_eq!(t.datasets["layers/gru/cell/vars/2"].shape, [2, 12]);
    assert_eq!(t.datasets["layers/rnn/cell/vars/2"].shape, [9]);
    assert!(t.names.keys().all(|p| p == "vars" || p.ends_with("/vars")));
}

#[test]
fn weights_h5_round_trip_through_hdf5_reader() {
    let kernel: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let bias = [f32::MIN_POSITIVE, -0.0, 1e30, f32::NAN];
    let lr = [0.001f32];
    let groups = [
        VarsGroup::new("vars", "modèle"),
        VarsGroup::new("layers/masking/vars", "masking"),
        VarsGroup::new("layers/gru/cell/vars", "gru_cell"),
    ];
    let weights = [
        WeightEntry {
            group: "layers/gru/cell/vars".into(),
            index: 1,
            shape: vec![4],
            data: &bias,
        },
        WeightEntry {
            group: "layers/gru/cell/vars".into(),
            index: 0,
            shape: vec![2, 6],
            data: &kernel,
        },
        WeightEntry {
            group: "optimizer/vars".into(),
            index: 1,
            shape: vec![],
            data: &lr,
        },
    ];
    let iters = [7i64];
    let ints = [IntWeightEntry {
        group: "optimizer/vars".into(),
        index: 0,
        shape: vec![],
        data: &iters,
    }];
    let bytes = write_weights_h5_with_ints(&groups, &weights, &ints).unwrap();
    let t = read_tree(&bytes);
    assert_eq!(t.names.len(), 3);
    assert_eq!(t.names["vars"], "modèle");
    assert_eq!(t.names["layers/masking/vars"], "masking");
    assert!(t.groups.contains(&"layers/masking/vars".to_string()));
    // A group holding datasets but not listed in `groups` exists, without `name`.
    assert!(t.groups.contains(&"optimizer/vars".to_string()));
    assert!(!t.names.contains_key("optimizer/vars"));
    let k = &t.datasets["layers/gru/cell/vars/0"];
    assert_eq!((k.dtype, k.shape.as_slice()), ("f32", &[2u64, 6][..]));
    assert_eq!(
        k.values,
        kernel.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()
    );
    let b = &t.datasets["layers/gru/cell/vars/1"];
    assert_eq!(b.values[0], f64::from(f32::MIN_POSITIVE));
    assert!(b.values[1] == 0.0 && b.values[1].is_sign_negative());
    assert!(b.values[3].is_nan());
    let it = &t.datasets["optimizer/vars/0"];
    assert_eq!((it.dtype, it.shape.len(), it.values[0]), ("i64", 0, 7.0));
    assert_eq!(t.datasets["optimizer/vars/1"].values, [f64::from(0.001f32)]);
    assert_eq!(t.datasets.len(), 4);

    // Deterministic and independent of the caller's order.
    let mut rev = weights.to_vec();
    rev.reverse();
    assert_eq!(
        write_weights_h5_with_ints(&groups, &rev, &ints).unwrap(),
        bytes
    );
    // f32-only entry point agrees with the general one.
    assert_eq!(
        write_weights_h5(&groups, &weights[..2]).unwrap(),
        write_weights_h5_with_ints(&groups, &weights[..2], &[]).unwrap()
    );
}

#[test]
fn weights_h5_rejects_bad_input_naming_the_part() {
    let d = [1.0f32; 6];
    let w = |group: &str, index: usize, shape: Vec<usize>| WeightEntry {
        group: group.into(),
        index,
        shape,
        data: &d,
    };
    let ok = w("layers/dense/vars", 0, vec![2, 3]);
    let g = |p: &str| VarsGroup::new(p, "x");
    let err =
        |groups: &[VarsGroup], weights: &[WeightEntry]| match write_weights_h5(groups, weights)
            .unwrap_err()
        {
            FormatError::Malformed { part, message, .. } => format!("{part}: {message}"),
            other => panic!("expected Malformed, got {other}"),
        };
    assert!(write_weights_h5(&[g("vars")], std::slice::from_ref(&ok)).is_ok());
    let e = err(&[], &[w("layers/dense/vars", 0, vec![4, 3])]);
    assert!(
        e.contains("layers/dense/vars/0") && e.contains("12 elements, got 6"),
        "{e}"
    );
    let e = err(&[], &[ok.clone(), ok.clone()]);
    assert!(e.contains("twice"), "{e}");
    let e = err(&[], &[ok.clone(), w("layers/dense/vars", 2, vec![6])]);
    assert!(
        e.contains("layers/dense/vars/1") && e.contains("missing"),
        "{e}"
    );
    let e = err(&[], &[w("layers/dense/vars", 1, vec![6])]);
    assert!(e.contains("variable 0 is missing"), "{e}");
    let e = err(&[], &[w("layers/dense", 0, vec![6])]);
    assert!(e.contains("does not end in `vars`"), "{e}");
    let e = err(&[g("/vars")], &[]);
    assert!(e.contains("empty"), "{e}");
    let e = err(&[g("layers//vars")], &[]);
    assert!(e.contains("empty"), "{e}");
    let e = err(&[g("vars"), g("vars")], &[]);
    assert!(e.contains("listed twice"), "{e}");
    let e = err(&[], &[w("layers/dense/vars", 0, vec![usize::MAX, 2])]);
    assert!(e.contains("overflows"), "{e}");
}

#[test]
fn keras_archive_zip_layout_and_metadata() {
    let d = scratch("zip_layout");
    let path = d.join("m.keras");
    let h5 = write_weights_h5(&[VarsGroup::new("vars", "sequential")], &[]).unwrap();
    let config = serde_json::json!({"class_name": "Sequential", "config": {"name": "sequential"}});
    write_keras_archive(&path, &config, &h5).unwrap();
    let z = read_zip(&path);
    let names: Vec<&str> = z.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["metadata.json", "config.json", "model.weights.h5"]);
    assert!(z.iter().all(|e| e.1 == zip::CompressionMethod::Stored));
    assert_eq!(entry(&z, "model.weights.h5"), h5.as_slice());
    let meta = std::str::from_utf8(entry(&z, "metadata.json")).unwrap();
    assert!(
        meta.starts_with(&format!(
            "{{\"keras_version\": \"{KERAS_VERSION}\", \"date_saved\": \""
        )),
        "{meta}"
    );
    let v: serde_json::Value = serde_json::from_str(meta).unwrap();
    let date = v["date_saved"].as_str().unwrap();
    // YYYY-MM-DD@HH:MM:SS
    assert_eq!(date.len(), 19, "{date}");
    assert_eq!((&date[4..5], &date[10..11], &date[13..14]), ("-", "@", ":"));
    assert!(date[..4].parse::<u32>().unwrap() >= 2024);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(entry(&z, "config.json")).unwrap(),
        config
    );
    // Overwrites an existing archive, leaving only it in the directory.
    write_keras_archive(&path, &serde_json::json!({"x": 1}), &h5).unwrap();
    assert_eq!(dir_entries(&d), ["m.keras"]);
    let z = read_zip(&path);
    assert_eq!(entry(&z, "config.json"), br#"{"x":1}"#);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn atomic_write_failure_leaves_original_and_no_temp() {
    let d = scratch("atomic");
    let path = d.join("model.keras");
    std::fs::write(&path, b"original").unwrap();

    let e = atomic_write(&path, |f| {
        f.write_all(b"half a file")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }));
    assert!(e.to_string().contains("disk on fire") && e.to_string().contains("model.keras"));
    assert_eq!(std::fs::read(&path).unwrap(), b"original");
    assert_eq!(dir_entries(&d), ["model.keras"]);

    // A panic inside the closure does not leave the temporary file either.
    let r = std::panic::catch_unwind(|| {
        let _ = atomic_write(&path, |f| {
            f.write_all(b"x")?;
            panic!("writer panicked");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"original");
    assert_eq!(dir_entries(&d), ["model.keras"]);

    // Success replaces the content; the temporary file is gone.
    atomic_write(&path, |f| f.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(dir_entries(&d), ["model.keras"]);

    // Renaming onto a directory fails after the write: original dir untouched, temp removed.
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/inner"), b"keep").unwrap();
    assert!(atomic_write(&d.join("sub"), |f| f.write_all(b"x")).is_err());
    assert_eq!(dir_entries(&d), ["model.keras", "sub"]);
    assert_eq!(std::fs::read(d.join("sub/inner")).unwrap(), b"keep");

    // A missing directory is an I/O error naming it, and creates nothing.
    let e = write_keras_archive(&d.join("nope/m.keras"), &serde_json::json!({}), b"").unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(!d.join("nope").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn safetensors_round_trip_with_metadata() {
    let d = scratch("st_round_trip");
    let path = d.join("w.safetensors");
    let a: Vec<f32> = (0..12).map(|i| i as f32 / 3.0).collect();
    let b = [f32::MAX, -f32::MIN_POSITIVE, 0.5];
    let s = [42.0f32];
    let tensors: Vec<(String, Vec<usize>, &[f32])> = vec![
        ("layers/gru/cell/kernel".into(), vec![3, 4], &a),
        ("b".into(), vec![3], &b),
        ("scalar".into(), vec![], &s),
    ];
    let meta: HashMap<String, String> = [("format".to_string(), "grucell".to_string())].into();
    save_safetensors(&path, &tensors, Some(meta.clone())).unwrap();
    assert_eq!(dir_entries(&d), ["w.safetensors"]);
    let (back, back_meta) = load_safetensors_with_metadata(&path).unwrap();
    assert_eq!(back_meta, Some(meta));
    assert_eq!(back.len(), 3);
    for (name, shape, data) in &tensors {
        let t = &back.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        assert_eq!(t.data(), *data, "{name}");
    }
    // File order is deterministic and agrees with a second load.
    let names: Vec<String> = back.iter().map(|(n, _)| n.clone()).collect();
    let again: Vec<String> = load_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, again);

    // F64 tensors are accepted and rounded to f32; other dtypes are refused by name.
    let f64s: Vec<u8> = [1.5f64, -2.25, 1e-3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i32s: Vec<u8> = [1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let p64 = d.join("f64.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![3], &f64s).unwrap();
    std::fs::write(&p64, safetensors::serialize([("x", view)], None).unwrap()).unwrap();
    let t = load_safetensors(&p64).unwrap();
    assert_eq!(t[0].1.data(), &[1.5f32, -2.25, 1e-3f64 as f32]);
    let pi = d.join("i32.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2], &i32s).unwrap();
    std::fs::write(&pi, safetensors::serialize([("ints", view)], None).unwrap()).unwrap();
    let e = load_safetensors(&pi).unwrap_err().to_string();
    assert!(
        e.contains("ints") && e.contains("I32") && e.contains("F32 or F64"),
        "{e}"
    );

    // Bad input to the saver: nothing written, previous file kept.
    let e = save_safetensors(&path, &[("k".into(), vec![2, 2], &b[..])], None).unwrap_err();
    assert!(e.to_string().contains("needs 4 elements, got 3"), "{e}");
    let e = save_safetensors(
        &path,
        &[("k".into(), vec![1], &s[..]), ("k".into(), vec![1], &s[..])],
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert_eq!(load_safetensors(&path).unwrap().len(), 3);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn safetensors_corrupt_headers_give_clear_errors() {
    let d = scratch("st_corrupt");
    let good_path = d.join("good.safetensors");
    let x = [1.0f32, 2.0];
    save_safetensors(&good_path, &[("x".into(), vec![2], &x[..])], None).unwrap();
    let good = std::fs::read(&good_path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    let check = |name: &str, bytes: &[u8], want: &[&str]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = load_safetensors(&p).unwrap_err();
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(matches!(e, FormatError::Malformed { .. }), "{name}: {msg}");
        assert!(msg.contains(name), "{name}: {msg}");
        for w in want {
            assert!(msg.contains(w), "{name}: `{msg}` lacks `{w}`");
        }
    };
    check("empty.safetensors", b"", &["0 bytes", "at least 8"]);
    check("short.safetensors", &[1, 2, 3], &["3 bytes"]);
    // Length field larger than the file: refused before allocating.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    check(
        "huge.safetensors",
        &huge,
        &["header length 18446744073709551615", "2 bytes"],
    );
    let mut long = ((good.len() - 8 + 1) as u64).to_le_bytes().to_vec();
    long.extend_from_slice(&good[8..]);
    check("long.safetensors", &long, &["does not fit"]);
    // Header that is not JSON.
    let mut bad_json = good.clone();
    bad_json[8] = b'[';
    check("badjson.safetensors", &bad_json, &["header"]);
    // Data shorter than the header declares.
    check(
        "truncated.safetensors",
        &good[..good.len() - 4],
        &["header"],
    );
    // Offsets not matching the shape.
    let text = std::str::from_utf8(&good[8..8 + header_len])
        .unwrap()
        .replace("[2]", "[3]");
    let mut bad_shape = (text.len() as u64).to_le_bytes().to_vec();
    bad_shape.extend_from_slice(text.as_bytes());
    bad_shape.extend_from_slice(&good[8 + header_len..]);
    check("badshape.safetensors", &bad_shape, &["header"]);
    // Missing file: I/O error with the path.
    let e = load_safetensors(&d.join("missing.safetensors")).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }) && e.to_string().contains("missing"));
    std::fs::remove_dir_all(&d).unwrap();
}
