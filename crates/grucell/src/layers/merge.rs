//! Keras merge layers: `Concatenate`, `Add`, `Subtract`, `Multiply`, `Average`, `Maximum`,
//! `Minimum` — how the branches of a Functional model (a GRU over a sequence, another over a
//! second input) are joined.

use crate::error::{ConfigError, Error, ShapeError};
use crate::float::Float;
use crate::layers::rnn::Mask;
use crate::tensor::Tensor;

/// A merge layer as a model holds it: the operation and whose mask rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merge {
    /// The operation.
    pub op: MergeOp,
    /// TF-Keras 2's mask rule (files Keras 2 wrote) instead of Keras 3's; see [`MergeOp::mask`].
    pub keras2_masks: bool,
}

impl Merge {
    /// A merge with Keras 3's mask rule.
    pub fn new(op: MergeOp) -> Self {
        Merge {
            op,
            keras2_masks: false,
        }
    }

    /// The output mask ([`MergeOp::mask`] with this merge's rule).
    pub fn mask<T: Float>(
        &self,
        xs: &[&Tensor<T>],
        masks: &[Option<&Mask>],
    ) -> Result<Option<Mask>, Error> {
        self.op.mask(xs, masks, self.keras2_masks)
    }

    /// Whether this call is Keras 3's masked `Maximum` / `Minimum` (see [`Merge::call`]).
    fn masked_extremum(&self, masks: &[Option<&Mask>]) -> bool {
        !self.keras2_masks
            && matches!(self.op, MergeOp::Maximum | MergeOp::Minimum)
            && masks.iter().any(Option::is_some)
    }

    /// Whether this call is Keras 3's masked `Multiply` (see [`Merge::call`]).
    fn masked_product(&self, masks: &[Option<&Mask>]) -> bool {
        !self.keras2_masks && self.op == MergeOp::Multiply && masks.iter().any(Option::is_some)
    }

    /// The merged tensor of inputs with their masks (`masks[i]` of `xs[i]`, `(batch, time)`).
    ///
    /// Keras 3 merges masked inputs of `Maximum` and `Minimum` step by step
    /// (`_apply_merge_op_and_or_mask`): a masked step of an input takes the running result's
    /// value, a masked step of the running result takes the input's, so a step every input
    /// masks keeps the first input's value. Its `Multiply` counts a masked step of an input as 1
    /// and, when every input has a mask, gives 0 at the steps no input keeps. The other merges,
    /// and TF-Keras 2's, ignore masks ([`MergeOp::call`]).
    ///
    /// ```
    /// use grucell::layers::merge::{Merge, MergeOp};
    /// use grucell::layers::rnn::Mask;
    /// use grucell::Tensor;
    /// // (batch 1, 2 steps, 1 feature); step 1 of the second input is masked.
    /// let a = Tensor::new(vec![1, 2, 1], vec![5.0f32, 5.0])?;
    /// let b = Tensor::new(vec![1, 2, 1], vec![1.0f32, 1.0])?;
    /// let m = Mask::new(1, 2, vec![true, false])?;
    /// let y = Merge::new(MergeOp::Minimum).call(&[&a, &b], &[None, Some(&m)])?;
    /// assert_eq!(y.data(), &[1.0, 5.0]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn call<T: Float>(
        &self,
        xs: &[&Tensor<T>],
        masks: &[Option<&Mask>],
    ) -> Result<Tensor<T>, Error> {
        if self.masked_product(masks) {
            let (b, t, f) = masked_dims(self.op, xs, masks)?;
            let mut out = vec![T::zero(); b * t * f];
            for (e, o) in out.iter_mut().enumerate() {
                let step = e / f.max(1);
                if !product_kept(masks, step) {
                    continue;
                }
                // Keras' left fold, a masked factor being 1.
                *o = (0..xs.len())
                    .map(|j| factor(xs, masks, j, e, step))
                    .reduce(|a, v| a * v)
                    .unwrap_or(T::zero());
            }
            return Ok(Tensor::new(vec![b, t, f], out)?);
        }
        if !self.masked_extremum(masks) {
            return self.op.call(xs);
        }
        let (values, _) = self.masked_sources(xs, masks)?;
        Ok(Tensor::new(xs[0].shape().to_vec(), values)?)
    }

    /// Gradients of every input for the output gradient `dy`, for the inputs and masks of
    /// [`Merge::call`] (a masked `Maximum` / `Minimum` sends each element's gradient to the
    /// input its value came from).
    pub fn backward<T: Float>(
        &self,
        xs: &[&Tensor<T>],
        masks: &[Option<&Mask>],
        dy: &Tensor<T>,
    ) -> Result<Vec<Tensor<T>>, Error> {
        if self.masked_product(masks) {
            let (b, t, f) = masked_dims(self.op, xs, masks)?;
            if dy.shape() != [b, t, f] {
                return Err(ShapeError::mismatch(
                    "gradient of Multiply",
                    dy.shape(),
                    format!("({b}, {t}, {f})"),
                )
                .into());
            }
            let mut grads: Vec<Vec<T>> = xs.iter().map(|x| vec![T::zero(); x.len()]).collect();
            for (e, &g) in dy.data().iter().enumerate() {
                let step = e / f.max(1);
                if !product_kept(masks, step) {
                    continue;
                }
                for (i, gi) in grads.iter_mut().enumerate() {
                    // A factor masked to 1 gets no gradient.
                    if masks[i].is_some_and(|m| !m.data[step]) {
                        continue;
                    }
                    gi[e] = (0..xs.len())
                        .filter(|&j| j != i)
                        .map(|j| factor(xs, masks, j, e, step))
                        .fold(g, |a, v| a * v);
                }
            }
            return xs
                .iter()
                .zip(grads)
                .map(|(x, g)| Ok(Tensor::new(x.shape().to_vec(), g)?))
                .collect();
        }
        if !self.masked_extremum(masks) {
            return self.op.backward(xs, dy);
        }
        if dy.shape() != xs[0].shape() {
            return Err(ShapeError::mismatch(
                format!("gradient of {}", self.op.class_name()),
                dy.shape(),
                format!("{:?}", xs[0].shape()),
            )
            .into());
        }
        let (_, sources) = self.masked_sources(xs, masks)?;
        let mut grads: Vec<Vec<T>> = xs.iter().map(|x| vec![T::zero(); x.len()]).collect();
        for (e, (&src, &g)) in sources.iter().zip(dy.data()).enumerate() {
            grads[src][e] = g;
        }
        xs.iter()
            .zip(grads)
            .map(|(x, g)| Ok(Tensor::new(x.shape().to_vec(), g)?))
            .collect()
    }

    /// Keras 3's masked left fold of `Maximum` / `Minimum`: every element's value and the
    /// input it came from.
    fn masked_sources<T: Float>(
        &self,
        xs: &[&Tensor<T>],
        masks: &[Option<&Mask>],
    ) -> Result<(Vec<T>, Vec<usize>), Error> {
        let (b, t, f) = masked_dims(self.op, xs, masks)?;
        let keeps = |i: usize, step: usize| masks.get(i).copied().flatten().map(|m| m.data[step]);
        let max = self.op == MergeOp::Maximum;
        let mut values = Vec::with_capacity(b * t * f);
        let mut sources = Vec::with_capacity(b * t * f);
        for e in 0..b * t * f {
            let step = e / f.max(1);
            let (mut out, mut src, mut out_keep) = (xs[0].data()[e], 0, keeps(0, step));
            for (j, x) in xs.iter().enumerate().skip(1) {
                let keep = keeps(j, step);
                let (mut v, mut vsrc) = (x.data()[e], j);
                if keep == Some(false) {
                    (v, vsrc) = (out, src);
                }
                if out_keep == Some(false) {
                    (out, src) = (v, vsrc);
                }
                out_keep = match (out_keep, keep) {
                    (Some(a), Some(k)) => Some(a || k),
                    _ => None,
                };
                // TensorFlow's maximum/minimum: the running value wins a tie; NaN propagates.
                let first = if max { out >= v } else { out <= v };
                let picked = pick(out, v, first);
                if !(first || out.is_nan() || v.is_nan()) {
                    src = vsrc;
                }
                out = picked;
            }
            values.push(out);
            sources.push(src);
        }
        Ok((values, sources))
    }
}

/// The `(batch, time, features)` of a merge of masked inputs, after checking that every input
/// has that shape and every mask its `(batch, time)`.
fn masked_dims<T: Float>(
    op: MergeOp,
    xs: &[&Tensor<T>],
    masks: &[Option<&Mask>],
) -> Result<(usize, usize, usize), Error> {
    let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
    let shape = op.output_shape(&shapes)?;
    let &[b, t, f] = shape.as_slice() else {
        return Err(ShapeError::mismatch(
            format!("masked input of {}", op.class_name()),
            &shape,
            "(batch, time, features) for a (batch, time) mask",
        )
        .into());
    };
    if let Some(x) = xs.iter().find(|x| x.shape() != shape.as_slice()) {
        return Err(ShapeError::mismatch(
            format!("masked input of {}", op.class_name()),
            x.shape(),
            format!("{shape:?}, the shape of every input (no broadcasting under a mask)"),
        )
        .into());
    }
    if masks.len() != xs.len() {
        return Err(ShapeError::mismatch(
            format!("masks of {}", op.class_name()),
            &[masks.len()],
            format!("one per input, {}", xs.len()),
        )
        .into());
    }
    for m in masks.iter().flatten() {
        if (m.batch, m.time) != (b, t) {
            return Err(ShapeError::mismatch(
                format!("mask of a {} input", op.class_name()),
                &[m.batch, m.time],
                format!("({b}, {t})"),
            )
            .into());
        }
    }
    Ok((b, t, f))
}

/// Whether Keras 3's masked `Multiply` keeps a `step` (flat `batch · time` index): unless every
/// input has a mask and none keeps it.
fn product_kept(masks: &[Option<&Mask>], step: usize) -> bool {
    !masks.iter().all(|m| m.is_some_and(|m| !m.data[step]))
}

/// Factor `j` of element `e` in Keras 3's masked `Multiply`: the input's value, or 1 where its
/// mask drops the step.
fn factor<T: Float>(
    xs: &[&Tensor<T>],
    masks: &[Option<&Mask>],
    j: usize,
    e: usize,
    step: usize,
) -> T {
    match masks[j] {
        Some(m) if !m.data[step] => T::one(),
        _ => xs[j].data()[e],
    }
}

/// One merge operation (no weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOp {
    /// `Concatenate(axis)` (Keras default `axis = -1`).
    Concatenate {
        /// Axis, negative from the end.
        axis: isize,
    },
    /// `Add`: the element-wise sum.
    Add,
    /// `Subtract`: `inputs[0] − inputs[1]` (exactly two inputs).
    Subtract,
    /// `Multiply`: the element-wise product.
    Multiply,
    /// `Average`: the element-wise mean.
    Average,
    /// `Maximum`: the element-wise maximum.
    Maximum,
    /// `Minimum`: the element-wise minimum.
    Minimum,
}

impl MergeOp {
    /// The merge layer of a Keras class name (`Concatenate` takes its `axis`).
    pub fn from_class(class: &str, axis: isize) -> Option<Self> {
        Some(match class {
            "Concatenate" => MergeOp::Concatenate { axis },
            "Add" => MergeOp::Add,
            "Subtract" => MergeOp::Subtract,
            "Multiply" => MergeOp::Multiply,
            "Average" => MergeOp::Average,
            "Maximum" => MergeOp::Maximum,
            "Minimum" => MergeOp::Minimum,
            _ => return None,
        })
    }

    /// The Keras class name.
    pub fn class_name(self) -> &'static str {
        match self {
            MergeOp::Concatenate { .. } => "Concatenate",
            MergeOp::Add => "Add",
            MergeOp::Subtract => "Subtract",
            MergeOp::Multiply => "Multiply",
            MergeOp::Average => "Average",
            MergeOp::Maximum => "Maximum",
            MergeOp::Minimum => "Minimum",
        }
    }

    /// The concatenation axis as an index into a rank-`rank` shape.
    fn axis_index(axis: isize, rank: usize) -> Result<usize, Error> {
        axis_in(axis, rank).filter(|&a| a >= 1).ok_or_else(|| {
            ConfigError::invalid(
                "Concatenate.axis",
                axis,
                format!("a non-batch axis of the rank-{rank} inputs"),
            )
            .into()
        })
    }

    /// Checks the inputs and returns the output shape.
    pub fn output_shape(self, shapes: &[&[usize]]) -> Result<Vec<usize>, Error> {
        let Some(first) = shapes.first() else {
            return Err(ConfigError::invalid(self.class_name(), "no inputs", "at least 1").into());
        };
        if self == MergeOp::Subtract && shapes.len() != 2 {
            return Err(
                ConfigError::invalid("Subtract inputs", shapes.len(), "exactly 2 tensors").into(),
            );
        }
        match self {
            MergeOp::Concatenate { axis } => concat_shape(
                shapes,
                Self::axis_index(axis, first.len())?,
                "Concatenate input",
            ),
            _ => {
                if let Some(s) = shapes.iter().find(|s| s != &first) {
                    return Err(ShapeError::mismatch(
                        format!("{} input", self.class_name()),
                        s,
                        format!("{first:?} (the shape of the first input)"),
                    )
                    .into());
                }
                Ok(first.to_vec())
            }
        }
    }

    /// The merged tensor.
    ///
    /// ```
    /// use grucell::layers::merge::MergeOp;
    /// use grucell::Tensor;
    ///
    /// let a = Tensor::new(vec![1, 2], vec![1.0f32, 2.0])?;
    /// let b = Tensor::new(vec![1, 1], vec![5.0f32])?;
    /// let c = MergeOp::Concatenate { axis: -1 }.call(&[&a, &b])?;
    /// assert_eq!((c.shape(), c.data()), (&[1usize, 3][..], &[1.0, 2.0, 5.0][..]));
    /// assert_eq!(MergeOp::Maximum.call(&[&a, &a])?.data(), &[1.0, 2.0]);
    /// # Ok::<(), grucell::Error>(())
    /// ```
    pub fn call<T: Float>(self, xs: &[&Tensor<T>]) -> Result<Tensor<T>, Error> {
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
        let shape = self.output_shape(&shapes)?;
        let first = xs[0];
        let data = match self {
            MergeOp::Concatenate { axis } => {
                let parts: Vec<(&[usize], &[T])> =
                    xs.iter().map(|x| (x.shape(), x.data())).collect();
                concat(
                    &parts,
                    Self::axis_index(axis, shape.len())?,
                    "Concatenate input",
                )?
                .1
            }
            _ => {
                let mut out = first.data().to_vec();
                for x in &xs[1..] {
                    for (o, &v) in out.iter_mut().zip(x.data()) {
                        *o = match self {
                            MergeOp::Add | MergeOp::Average => *o + v,
                            MergeOp::Subtract => *o - v,
                            MergeOp::Multiply => *o * v,
                            // TensorFlow's maximum/minimum (NaN propagates).
                            MergeOp::Maximum => pick(*o, v, *o >= v),
                            _ => pick(*o, v, *o <= v),
                        };
                    }
                }
                if self == MergeOp::Average {
                    let n = T::of(xs.len() as f64);
                    out.iter_mut().for_each(|o| *o /= n);
                }
                out
            }
        };
        Ok(Tensor::new(shape, data)?)
    }

    /// Gradients of every input for the output gradient `dy` (TensorFlow's rules: `Maximum`
    /// and `Minimum` send a tie to the earlier input).
    pub fn backward<T: Float>(
        self,
        xs: &[&Tensor<T>],
        dy: &Tensor<T>,
    ) -> Result<Vec<Tensor<T>>, Error> {
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
        let shape = self.output_shape(&shapes)?;
        if dy.shape() != shape.as_slice() {
            return Err(ShapeError::mismatch(
                format!("gradient of {}", self.class_name()),
                dy.shape(),
                format!("{shape:?}"),
            )
            .into());
        }
        let g = dy.data();
        let grads: Vec<Vec<T>> = match self {
            MergeOp::Concatenate { axis } => {
                let a = Self::axis_index(axis, shape.len())?;
                let outer: usize = shape[..a].iter().product();
                let inner: usize = shape[a + 1..].iter().product();
                let mut out: Vec<Vec<T>> = xs.iter().map(|x| Vec::with_capacity(x.len())).collect();
                let mut pos = 0;
                for _ in 0..outer {
                    for (x, o) in xs.iter().zip(out.iter_mut()) {
                        let n = x.shape()[a] * inner;
                        o.extend_from_slice(&g[pos..pos + n]);
                        pos += n;
                    }
                }
                out
            }
            MergeOp::Add => xs.iter().map(|_| g.to_vec()).collect(),
            MergeOp::Average => {
                let n = T::of(xs.len() as f64);
                xs.iter()
                    .map(|_| g.iter().map(|&v| v / n).collect())
                    .collect()
            }
            MergeOp::Subtract => vec![g.to_vec(), g.iter().map(|&v| -v).collect()],
            MergeOp::Multiply => (0..xs.len())
                .map(|i| {
                    g.iter()
                        .enumerate()
                        .map(|(e, &v)| {
                            xs.iter()
                                .enumerate()
                                .filter(|(j, _)| *j != i)
                                .fold(v, |acc, (_, x)| acc * x.data()[e])
                        })
                        .collect()
                })
                .collect(),
            MergeOp::Maximum | MergeOp::Minimum => {
                // Replays the left fold: the running winner keeps a tie.
                let mut out: Vec<Vec<T>> = xs.iter().map(|x| vec![T::zero(); x.len()]).collect();
                for (e, &v) in g.iter().enumerate() {
                    let mut best = 0;
                    for j in 1..xs.len() {
                        let (cur, new) = (xs[best].data()[e], xs[j].data()[e]);
                        let keep = if self == MergeOp::Maximum {
                            cur >= new
                        } else {
                            cur <= new
                        };
                        if !keep {
                            best = j;
                        }
                    }
                    out[best][e] = v;
                }
                out
            }
        };
        xs.iter()
            .zip(grads)
            .map(|(x, g)| Ok(Tensor::new(x.shape().to_vec(), g)?))
            .collect()
    }

    /// The output mask from the inputs' `(batch, time)` masks, as Keras computes it; `None`
    /// when no input has one. Keras 3.15.1: `Concatenate` on the last axis keeps a step if *any*
    /// input keeps it (an input without a mask keeps every step), on the time axis joins the
    /// masks; the other merges have no mask if an input has none, else keep a step if any input
    /// keeps it. TF-Keras 2 (`keras2`): a step is kept if every masked input keeps it.
    pub fn mask<T: Float>(
        self,
        xs: &[&Tensor<T>],
        masks: &[Option<&Mask>],
        keras2: bool,
    ) -> Result<Option<Mask>, Error> {
        if masks.iter().all(Option::is_none) {
            return Ok(None);
        }
        let (b, t) = match xs.first().map(|x| x.shape()) {
            Some(&[b, t, ..]) => (b, t),
            _ => return Ok(None),
        };
        let every_masked = || -> Result<Option<Mask>, Error> {
            let mut keep = vec![true; b * t];
            for m in masks.iter().flatten() {
                keep.iter_mut().zip(&m.data).for_each(|(k, v)| *k &= *v);
            }
            Ok(Some(Mask::new(b, t, keep)?))
        };
        match self {
            MergeOp::Concatenate { axis }
                if keras2 && Self::axis_index(axis, xs[0].rank())? + 1 == xs[0].rank() =>
            {
                every_masked()
            }
            _ if keras2 && !matches!(self, MergeOp::Concatenate { .. }) => every_masked(),
            MergeOp::Concatenate { axis } => {
                let rank = xs[0].rank();
                let a = Self::axis_index(axis, rank)?;
                if rank == 3 && a == 2 {
                    let mut keep = vec![false; b * t];
                    for m in masks {
                        match m {
                            None => keep.iter_mut().for_each(|k| *k = true),
                            Some(m) => keep.iter_mut().zip(&m.data).for_each(|(k, v)| *k |= *v),
                        }
                    }
                    Ok(Some(Mask::new(b, t, keep)?))
                } else if rank == 3 && a == 1 {
                    let total: usize = xs.iter().map(|x| x.shape()[1]).sum();
                    let mut keep = Vec::with_capacity(b * total);
                    for row in 0..b {
                        for (x, m) in xs.iter().zip(masks) {
                            let tx = x.shape()[1];
                            match m {
                                None => keep.extend(std::iter::repeat_n(true, tx)),
                                Some(m) => {
                                    let part =
                                        m.data.get(row * tx..(row + 1) * tx).ok_or_else(|| {
                                            ShapeError::mismatch(
                                                "mask of a Concatenate input",
                                                &[m.batch, m.time],
                                                format!("({b}, {tx})"),
                                            )
                                        })?;
                                    keep.extend_from_slice(part)
                                }
                            }
                        }
                    }
                    Ok(Some(Mask::new(b, total, keep)?))
                } else {
                    Err(ConfigError::unsupported(
                        "Concatenate of masked inputs",
                        format!("axis {axis} of rank-{rank} inputs (only the time or feature axis of sequences)"),
                    )
                    .into())
                }
            }
            _ => {
                if masks.iter().any(Option::is_none) {
                    return Ok(None);
                }
                let mut keep = vec![false; b * t];
                for m in masks.iter().flatten() {
                    keep.iter_mut().zip(&m.data).for_each(|(k, v)| *k |= *v);
                }
                Ok(Some(Mask::new(b, t, keep)?))
            }
        }
    }
}

/// Keras' `axis` (negative from the end) as an index into a rank-`rank` shape, if it is one.
pub(crate) fn axis_in(axis: isize, rank: usize) -> Option<usize> {
    let a = if axis < 0 { rank as isize + axis } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// The shape of symbolic shapes (`None` = unknown size) concatenated along `axis`: the
/// first's, with the axis' sizes added up (`None` if any is unknown).
pub(crate) fn concat_symbolic(args: &[Vec<Option<usize>>], axis: isize) -> Vec<Option<usize>> {
    let mut s = args.first().cloned().unwrap_or_default();
    if let Some(a) = axis_in(axis, s.len()) {
        s[a] = args.iter().map(|x| x.get(a).copied().flatten()).sum();
    }
    s
}

/// The shape of `shapes` concatenated along axis `a`: equal elsewhere (`what` names them in
/// the error).
pub(crate) fn concat_shape(shapes: &[&[usize]], a: usize, what: &str) -> Result<Vec<usize>, Error> {
    let Some(first) = shapes.first() else {
        return Err(ConfigError::invalid(what, "no tensors", "at least 1").into());
    };
    let mut out = first.to_vec();
    if a >= out.len() {
        return Err(ConfigError::invalid(
            what,
            format!("axis {a}"),
            format!("an axis of rank-{} tensors", out.len()),
        )
        .into());
    }
    out[a] = 0;
    for s in shapes {
        let fits = s.len() == first.len()
            && s.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (x, y))| i == a || x == y);
        if !fits {
            return Err(
                ShapeError::mismatch(what, s, format!("{first:?} except along axis {a}")).into(),
            );
        }
        out[a] += s[a];
    }
    Ok(out)
}

/// Row-major tensors (shape, values) concatenated along axis `a`: for every index before the
/// axis, each part's block of `size(a) × (everything after a)` values in turn.
pub(crate) fn concat<E: Copy>(
    parts: &[(&[usize], &[E])],
    a: usize,
    what: &str,
) -> Result<(Vec<usize>, Vec<E>), Error> {
    let shapes: Vec<&[usize]> = parts.iter().map(|(s, _)| *s).collect();
    let shape = concat_shape(&shapes, a, what)?;
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (s, d) in parts {
            let n = s[a] * inner;
            let block = d.get(o * n..(o + 1) * n).ok_or_else(|| {
                ShapeError::mismatch(
                    what,
                    &[d.len()],
                    format!("{} values", s.iter().product::<usize>()),
                )
            })?;
            out.extend_from_slice(block);
        }
    }
    Ok((shape, out))
}

/// `a` where `first` holds, else `b`; NaN in either gives NaN (TensorFlow's maximum/minimum).
fn pick<T: Float>(a: T, b: T, first: bool) -> T {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if first {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f64]) -> Tensor<f64> {
        Tensor::new(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn concatenate_on_time_and_feature_axes_and_back() {
        let a = t(&[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[1, 2, 1], &[5.0, 6.0]);
        let c = MergeOp::Concatenate { axis: -1 }.call(&[&a, &b]).unwrap();
        assert_eq!(c.data(), &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
        let g = MergeOp::Concatenate { axis: 2 }
            .backward(&[&a, &b], &c)
            .unwrap();
        assert_eq!((g[0].data(), g[1].data()), (a.data(), b.data()));
        let d = MergeOp::Concatenate { axis: 1 }.call(&[&a, &a]).unwrap();
        assert_eq!(d.shape(), &[1, 4, 2]);
        assert!(MergeOp::Concatenate { axis: 1 }.call(&[&a, &b]).is_err());
    }

    #[test]
    fn keras3_masked_multiply_counts_masked_factors_as_one() {
        // (1 sample, 3 steps, 1 feature): a keeps steps 0 and 1, b keeps 0 and 2.
        let a = t(&[1, 3, 1], &[2.0, 3.0, 4.0]);
        let b = t(&[1, 3, 1], &[5.0, 6.0, 7.0]);
        let c = t(&[1, 3, 1], &[-1.0, -2.0, -3.0]);
        let ma = Mask::new(1, 3, vec![true, true, false]).unwrap();
        let mb = Mask::new(1, 3, vec![true, false, true]).unwrap();
        let mul = Merge::new(MergeOp::Multiply);
        let y = mul.call(&[&a, &b], &[Some(&ma), Some(&mb)]).unwrap();
        assert_eq!(y.data(), &[10.0, 3.0, 7.0]);
        // A step every input drops is 0 (step 1 here).
        let m_none = Mask::new(1, 3, vec![false, false, false]).unwrap();
        let y = mul.call(&[&a, &b], &[Some(&m_none), Some(&mb)]).unwrap();
        assert_eq!(y.data(), &[5.0, 0.0, 7.0]);
        // An input without a mask: no zeroing, masked factors are 1.
        let y = mul.call(&[&a, &c], &[Some(&m_none), None]).unwrap();
        assert_eq!(y.data(), c.data());
        // Gradients: the product of the other factors; none for a factor masked to 1.
        let dy = t(&[1, 3, 1], &[1.0, 10.0, 100.0]);
        let g = mul
            .backward(&[&a, &b], &[Some(&ma), Some(&mb)], &dy)
            .unwrap();
        assert_eq!(g[0].data(), &[5.0, 10.0, 0.0]);
        assert_eq!(g[1].data(), &[2.0, 0.0, 100.0]);
        let g = mul
            .backward(&[&a, &b], &[Some(&m_none), Some(&mb)], &dy)
            .unwrap();
        assert_eq!(g[0].data(), &[0.0, 0.0, 0.0]);
        assert_eq!(g[1].data(), &[1.0, 0.0, 100.0]);
        // TF-Keras 2's Multiply ignores masks.
        let old = Merge {
            op: MergeOp::Multiply,
            keras2_masks: true,
        };
        let y = old.call(&[&a, &b], &[Some(&ma), Some(&mb)]).unwrap();
        assert_eq!(y.data(), &[10.0, 18.0, 28.0]);
        // Masked inputs must not broadcast.
        let short = t(&[1, 1, 1], &[2.0]);
        assert!(mul.call(&[&a, &short], &[Some(&ma), None]).is_err());
    }

    #[test]
    fn elementwise_merges_and_their_gradients() {
        let a = t(&[1, 3], &[1.0, 5.0, 2.0]);
        let b = t(&[1, 3], &[4.0, 5.0, -1.0]);
        let dy = t(&[1, 3], &[1.0, 2.0, 3.0]);
        let max = MergeOp::Maximum.backward(&[&a, &b], &dy).unwrap();
        // A tie (5 = 5) goes to the first input.
        assert_eq!(
            (max[0].data(), max[1].data()),
            (&[0.0, 2.0, 3.0][..], &[1.0, 0.0, 0.0][..])
        );
        let mul = MergeOp::Multiply.backward(&[&a, &b], &dy).unwrap();
        assert_eq!(mul[0].data(), &[4.0, 10.0, -3.0]);
        assert_eq!(
            MergeOp::Average.call(&[&a, &b]).unwrap().data(),
            &[2.5, 5.0, 0.5]
        );
        assert_eq!(
            MergeOp::Subtract.backward(&[&a, &b], &dy).unwrap()[1].data(),
            &[-1.0, -2.0, -3.0]
        );
        assert!(MergeOp::Subtract.call(&[&a, &b, &a]).is_err());
        assert!(MergeOp::Add
            .call(&[&a, &dy, &t(&[1, 2], &[0.0, 0.0])])
            .is_err());
    }

    #[test]
    fn masks_follow_keras() {
        let x = t(&[1, 3, 1], &[0.0; 3]);
        let m = Mask::new(1, 3, vec![true, false, false]).unwrap();
        let n = Mask::new(1, 3, vec![true, true, false]).unwrap();
        let cat = MergeOp::Concatenate { axis: -1 };
        let mask = |op: MergeOp, ms: &[Option<&Mask>], k2: bool| {
            op.mask(&[&x, &x], ms, k2).unwrap().map(|m| m.data)
        };
        // Keras 3: Concatenate ORs (an unmasked input keeps all); other merges OR, or no mask.
        assert_eq!(
            mask(cat, &[Some(&m), Some(&n)], false).unwrap(),
            [true, true, false]
        );
        assert_eq!(mask(cat, &[Some(&m), None], false).unwrap(), [true; 3]);
        assert_eq!(
            mask(MergeOp::Add, &[Some(&m), Some(&n)], false).unwrap(),
            [true, true, false]
        );
        assert_eq!(mask(MergeOp::Add, &[Some(&m), None], false), None);
        assert_eq!(mask(MergeOp::Add, &[None, None], false), None);
        // TF-Keras 2: every masked input must keep the step.
        assert_eq!(
            mask(cat, &[Some(&m), None], true).unwrap(),
            [true, false, false]
        );
        assert_eq!(
            mask(MergeOp::Add, &[Some(&m), Some(&n)], true).unwrap(),
            [true, false, false]
        );
        let time = MergeOp::Concatenate { axis: 1 }
            .mask(&[&x, &x], &[Some(&m), None], false)
            .unwrap()
            .unwrap();
        assert_eq!(time.data, [true, false, false, true, true, true]);
    }
}
