//! Property tests (proptest) of numerical invariants of the RNN layer, and thread-safety checks.

use grucell::layers::bidirectional::{Bidirectional, MergeMode};
use grucell::{Activation, GruCellConfig, Mask, Rnn, Tensor};
use proptest::prelude::*;

fn rnn(units: usize, input: usize, reset_after: bool, seed: u64) -> Rnn<f64> {
    let cfg = GruCellConfig::new(units)
        .reset_after(reset_after)
        .bias_initializer(grucell::Initializer::from_name("random_normal").unwrap())
        .seed(Some(seed));
    Rnn::new(cfg, input).unwrap()
}

fn input(b: usize, t: usize, d: usize, seed: u64) -> Tensor<f64> {
    let mut s = seed | 1;
    let data = (0..b * t * d)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2000) as f64 / 1000.0 - 1.0
        })
        .collect();
    Tensor::new(vec![b, t, d], data).unwrap()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn output_shapes(b in 1usize..5, t in 1usize..7, d in 1usize..5, u in 1usize..6, seqs: bool, state: bool) {
        let r = rnn(u, d, true, 1).return_sequences(seqs).return_state(state);
        let out = r.call(&input(b, t, d, 3)).unwrap();
        if seqs { prop_assert_eq!(out.output.shape(), &[b, t, u]); } else { prop_assert_eq!(out.output.shape(), &[b, u]); }
        prop_assert_eq!(out.states.len(), usize::from(state));
    }

    #[test]
    fn masking_a_step_equals_skipping_it(t in 2usize..8, skip in 0usize..8, reset_after: bool, seed in 0u64..1000) {
        let skip = skip % t;
        let (b, d, u) = (2, 3, 4);
        let r = rnn(u, d, reset_after, seed).return_state(true);
        let x = input(b, t, d, seed + 7);
        let mut m = vec![true; b * t];
        m[skip] = false; // sample 0, step `skip`
        let masked = r.call_with(&x, None, Some(&Mask::new(b, t, m).unwrap())).unwrap();
        // Sample 0 without that step.
        let rows: Vec<f64> = (0..t).filter(|&k| k != skip).flat_map(|k| x.data()[k * d..(k + 1) * d].to_vec()).collect();
        let short = r.call(&Tensor::new(vec![1, t - 1, d], rows).unwrap()).unwrap();
        prop_assert!(close(&masked.states[0].data()[..u], short.states[0].data()));
    }

    #[test]
    fn go_backwards_equals_reversed_input(t in 1usize..8, reset_after: bool, seed in 0u64..1000) {
        let (b, d, u) = (3, 2, 3);
        let fwd = rnn(u, d, reset_after, seed).return_sequences(true);
        let bwd = fwd.clone().go_backwards(true);
        let x = input(b, t, d, seed);
        let mut rev = x.data().to_vec();
        for s in 0..b {
            for k in 0..t {
                rev[(s * t + k) * d..(s * t + k + 1) * d].copy_from_slice(&x.data()[(s * t + t - 1 - k) * d..(s * t + t - k) * d]);
            }
        }
        let a = bwd.call(&x).unwrap();
        let bb = fwd.call(&Tensor::new(vec![b, t, d], rev).unwrap()).unwrap();
        prop_assert!(close(a.output.data(), bb.output.data()));
    }

    #[test]
    fn batch_rows_are_independent(b in 2usize..6, t in 1usize..6, seed in 0u64..1000) {
        let (d, u) = (3, 4);
        let r = rnn(u, d, true, seed).return_sequences(true);
        let x = input(b, t, d, seed);
        let all = r.call(&x).unwrap();
        for s in 0..b {
            let one = r.call(&Tensor::new(vec![1, t, d], x.data()[s * t * d..(s + 1) * t * d].to_vec()).unwrap()).unwrap();
            prop_assert!(close(&all.output.data()[s * t * u..(s + 1) * t * u], one.output.data()));
        }
    }

    #[test]
    fn streaming_equals_whole_sequence(t in 1usize..8, seed in 0u64..1000) {
        let (b, d) = (2, 3);
        let r = Rnn::<f64>::stacked(vec![GruCellConfig::new(4).seed(Some(seed)), GruCellConfig::new(2).reset_after(false).seed(Some(seed + 1))], d).unwrap();
        let x = input(b, t, d, seed);
        let whole = r.call(&x).unwrap();
        let mut s = r.stream(b);
        let mut step = vec![0.0; b * d];
        for k in 0..t {
            for i in 0..b {
                step[i * d..(i + 1) * d].copy_from_slice(&x.data()[(i * t + k) * d..(i * t + k + 1) * d]);
            }
            s.step(&r, &step).unwrap();
        }
        prop_assert!(close(whole.output.data(), s.output()));
    }
}

#[test]
fn models_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Rnn<f32>>();
    check::<Rnn<f64>>();
    check::<grucell::layers::model::Model<f32>>();
    check::<Bidirectional<f32>>();
}

#[test]
fn predicting_from_many_threads_equals_one_by_one() {
    let r = Rnn::<f32>::new(
        GruCellConfig::new(8)
            .activation(Activation::Tanh)
            .seed(Some(5)),
        4,
    )
    .unwrap()
    .return_sequences(true);
    let f = Rnn::<f32>::new(GruCellConfig::new(8).seed(Some(6)), 4)
        .unwrap()
        .return_sequences(true);
    let bwd = Rnn::<f32>::new(GruCellConfig::new(8).seed(Some(7)), 4)
        .unwrap()
        .return_sequences(true)
        .go_backwards(true);
    let bi = Bidirectional::new(f, bwd, Some(MergeMode::Concat)).unwrap();
    let inputs: Vec<Tensor<f32>> = (0..16)
        .map(|i| input(3, 5 + i % 4, 4, i as u64).cast())
        .collect();
    let serial: Vec<_> = inputs
        .iter()
        .map(|x| (r.call(x).unwrap().output, bi.call(x, None, None).unwrap()))
        .collect();
    let parallel: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = inputs
            .iter()
            .map(|x| s.spawn(|| (r.call(x).unwrap().output, bi.call(x, None, None).unwrap())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, parallel);
}

#[test]
fn streams_keep_one_state_each() {
    let r = Rnn::<f32>::new(GruCellConfig::new(3).seed(Some(9)), 2).unwrap();
    let mut a = r.stream(1);
    let mut b = r.stream(1);
    a.step(&r, &[1.0, 2.0]).unwrap();
    let after_a = a.output().to_vec();
    b.step(&r, &[-1.0, 0.5]).unwrap();
    assert_eq!(
        a.output(),
        after_a.as_slice(),
        "stream b must not touch stream a"
    );
    assert_ne!(a.output(), b.output());
}
