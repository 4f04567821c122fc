use grucell::io::npy::*;
use grucell::Tensor;
#[test]
fn scratch() {
    let d = std::path::Path::new("/tmp/grucell_scratch"); std::fs::create_dir_all(d).unwrap();
    write_npy(&d.join("s.npy"), &Tensor::<f32>::new(vec![], vec![2.5]).unwrap()).unwrap();
    write_npy(&d.join("e.npy"), &Tensor::<f64>::new(vec![0, 3], vec![]).unwrap()).unwrap();
    let t = Tensor::<f32>::new(vec![2, 3, 4], (0..24).map(|i| i as f32).collect()).unwrap();
    write_npy(&d.join("c.npy"), &t).unwrap();
    let b = Tensor::<f64>::new(vec![5], vec![1.0; 5]).unwrap();
    write_npz(&d.join("z.npz"), &[("a".into(), (&t).into()), ("b".into(), (&b).into())]).unwrap();
    // speed: 10M f32
    let n = 10_000_000;
    let big = Tensor::<f32>::new(vec![n / 100, 100], (0..n).map(|i| i as f32).collect()).unwrap();
    let t0 = std::time::Instant::now();
    write_npy(&d.join("big.npy"), &big).unwrap();
    let t1 = std::time::Instant::now();
    let back = read_npy(&d.join("big.npy")).unwrap();
    let t2 = std::time::Instant::now();
    assert_eq!(back.len(), n);
    eprintln!("write {:?} read {:?}", t1 - t0, t2 - t1);
    std::fs::remove_file(d.join("big.npy")).unwrap();
}
